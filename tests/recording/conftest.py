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
