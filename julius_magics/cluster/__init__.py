"""The Dask session: start/connect, remote eval, dispatch of key jobs, worker plugins."""

__all__ = ["Session", "get_session", "set_session"]


def __getattr__(name):
    # imported when first used: a worker that unpickles one of this package's plugins imports
    # that plugin's module, not the session (18 ms a worker)
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import session

    return getattr(session, name)
