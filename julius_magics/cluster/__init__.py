"""The Dask session: start/connect, remote eval, dispatch of key jobs, worker plugins."""

from .session import Session, get_session, set_session

__all__ = ["Session", "get_session", "set_session"]
