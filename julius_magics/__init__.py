"""julius_magics: reproducible distributed experiments in Jupyter.

``%load_ext julius_magics`` registers the magics.  The Python API:

>>> from julius_magics import ref, remote, DDataFrame, Not, compute, getdata, jobdeps  # doctest: +SKIP
"""

__version__ = "0.1.0"

__all__ = ["ref", "remote", "DDataFrame", "Not", "NodeRef", "rng", "stable_hash", "compute", "getdata",
           "jobdeps", "get_session", "RecordingBrowser", "load_ipython_extension", "unload_ipython_extension"]


def get_session():
    """The process-wide session that the magics and the module-level functions use."""
    from .cluster.session import get_session as _get

    return _get()


def compute(refs, key_rules=None):
    """Expand ``refs`` into a graph, run it on the active cluster and return the values."""
    return get_session().compute(refs, key_rules=key_rules)


def getdata(node):
    """The already computed value of ``node`` (a target or key job of an earlier ``compute``)."""
    return get_session().getdata(node)


def jobdeps(refs, key_rules=None):
    """The key jobs and the graph of ``refs``, without running anything."""
    return get_session().jobdeps(refs, key_rules=key_rules)


_LAZY = {**dict.fromkeys(("DDataFrame", "NodeRef", "Not", "ref", "remote", "rng", "stable_hash"), "rules"),
         **dict.fromkeys(("_jupyter_labextension_paths", "_jupyter_server_extension_points"), "server"),   # Jupyter's hooks
         "RecordingBrowser": "widget"}


def __getattr__(name):
    # imported when first used: each worker of a recorded cluster imports this package to unpickle
    # julius's plugins, and the rules alone took it 13 ms (NumPy's random module)
    if name not in _LAZY:
        raise AttributeError(f"module 'julius_magics' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def load_ipython_extension(ipython):
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):
    from .magics import unload_ipython_extension as unload

    unload(ipython)
