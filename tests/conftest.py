"""Shared fixtures: a real LocalCluster session and a real IPython shell."""

import os

import pytest

os.environ.setdefault("JULIUS_NO_PROGRESS", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_home(tmp_path_factory):
    """Keys and the default store live in a temporary home, never the user's ~/.julius."""
    home = tmp_path_factory.mktemp("home")
    old = {k: os.environ.get(k) for k in ("HOME", "JULIUS_STORE", "JULIUS_KEY_FILE")}
    os.environ["HOME"] = str(home)
    os.environ["JULIUS_STORE"] = str(home / "store")
    os.environ.pop("JULIUS_KEY_FILE", None)
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def session():
    """The process-wide session on a fresh 2-worker LocalCluster, stopped after the module."""
    from julius_magics.cluster.session import Session, set_session

    s = set_session(Session())
    s.start(n_workers=2)
    yield s
    s.stop()
    set_session(Session())


@pytest.fixture(scope="module")
def ip():
    """A real IPython shell with the extension loaded."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "julius_magics")
    yield shell
