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


# --- recordings shared by the recorder, replay, summary and CLI tests -------------------------
SMALL = dict(train_blocksize="1.5 MB", test_blocksize="1 MB", options={"n_estimators": 10, "min_samples_leaf": 5})


@pytest.fixture(scope="session")
def fraud_data(tmp_path_factory):
    """Small tutorial data files (4 MB train, 2 MB test)."""
    from julius_magics.datasets import make_fraud_data

    return make_fraud_data(tmp_path_factory.mktemp("data"), train_mb=4, test_mb=2)


@pytest.fixture(scope="session")
def recordings(tmp_path_factory):
    """A store in a temporary folder, shared by the tests that record and replay."""
    from julius_magics.recording.store import Store

    return Store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def tutorial(fraud_data, recordings):
    """The tutorial pipeline recorded on 4 workers as ``tutorial``: ``{"result", "info"}``."""
    from julius_magics import recording
    from julius_magics.cluster.session import Session, set_session
    from julius_magics.tutorial import run_pipeline

    session = set_session(Session())
    recording.start(session, "tutorial", store=recordings, note="4 workers")
    session.start(n_workers=4)
    result = run_pipeline(session, *fraud_data, **SMALL)
    info = recording.stop()
    session.stop()
    return {"result": result, "info": info}


@pytest.fixture(scope="session")
def clock(recordings):
    """``clock``: a recording whose ``c.now`` node reads the clock, so it never replays verified."""
    import julius_magics as jm
    from julius_magics import recording
    from julius_magics.cluster.session import Session, set_session

    session = set_session(Session())
    recording.start(session, "clock", store=recordings)
    session.start(n_workers=1)
    session.remote_eval("import time")
    session.add_rules("c", "def now():\n    return ApplyFn(time.time_ns)()\ndef fixed():\n    return ApplyFn(int, 7)()")
    session.compute([jm.ref.c.now(label="clock"), jm.ref.c.fixed()])
    info = recording.stop()
    session.stop()
    return info
