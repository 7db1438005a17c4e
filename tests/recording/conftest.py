"""Fixtures of the recording layer's tests."""

import pytest


@pytest.fixture
def isolated_key(tmp_path, monkeypatch):
    """Point HOME and the key file at a temporary folder: tests never touch ~/.julius."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("JULIUS_KEY_FILE", str(home / "my.key"))
    monkeypatch.delenv("JULIUS_STORE", raising=False)
    return home / "my.key"


@pytest.fixture
def fresh_session():
    """A julius session of the test's own: code an earlier test sent to its workers would be recorded
    (a recording starts with the session's history) and replayed with this test's recording."""
    from julius_magics.cluster.session import Session, get_session, set_session

    previous = get_session()
    session = set_session(Session())
    yield session
    session.stop()
    set_session(previous)
