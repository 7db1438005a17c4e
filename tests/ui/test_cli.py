"""The ``julius`` command line, run as a separate process on real recordings."""

import json
import socket
import subprocess
import sys

import pytest

from julius_magics.recording.store import Store


@pytest.fixture(scope="module")
def store(recordings):
    return recordings


def test_cli_show_diff_env_export_import_and_replay_in_a_new_process(tutorial, clock, store, tmp_path):
    def julius(*args, check=True):
        proc = subprocess.run([sys.executable, "-m", "julius_magics.cli", "--store", store.url, *args],
                              capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(proc.stderr + proc.stdout)
        return proc

    listing = json.loads(julius("list", "--json").stdout)
    assert "tutorial" in {r["name"] for r in listing}
    shown = julius("show", "tutorial").stdout
    assert "classifiertrain" in shown and "embedded" in shown and "environment: Python" in shown
    pins = julius("env", "tutorial").stdout
    assert "dask==2026.8.0" in pins.splitlines()
    replayed = julius("replay", "tutorial", "-n", "2")
    assert "VERIFIED" in replayed.stdout and replayed.returncode == 0
    julius("export", "tutorial", str(tmp_path / "t.jrec"))
    other = tmp_path / "imported"
    assert subprocess.run([sys.executable, "-m", "julius_magics.cli", "--store", str(other), "import",
                           str(tmp_path / "t.jrec")], capture_output=True, text=True).returncode == 0
    assert Store(other).info("tutorial").steps == tutorial["info"].steps
    diff = julius("diff", "tutorial", "clock", check=False).stdout
    assert "tutorial vs clock: differences" in diff and "rules ml:" in diff
    missing = julius("show", "nope", check=False)
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    with socket.socket() as closed:   # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
    unreachable = julius("replay", "tutorial", "--address", dead, check=False)
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr
    assert unreachable.stderr.strip().splitlines() == [
        f"julius replay: cannot connect to the Dask scheduler at {dead}: Timed out trying to connect to {dead} after 10 s"]
    clock = julius("replay", "clock", check=False)
    assert clock.returncode == 1 and "NOT VERIFIED" in clock.stdout
    as_json = julius("replay", "clock", "--json", check=False)
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert as_json.returncode == 1 and [e["event"] for e in events][-1] == "report"
    assert {e["event"] for e in events[:-1]} == {"progress"} and events[-1]["report"]["verified"] is False


def _julius(store, *args):
    return subprocess.run([sys.executable, "-m", "julius_magics.cli", "--store", str(store), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_import_as_a_new_name_and_force(tmp_path):
    from tests.recording.store_contract import content, write_sample

    source = Store(tmp_path / "source")
    write_sample(source, "alpha")
    source.export("alpha", tmp_path / "alpha.jrec")
    target = tmp_path / "target"
    assert _julius(target, "import", str(tmp_path / "alpha.jrec")).returncode == 0
    again = _julius(target, "import", str(tmp_path / "alpha.jrec"))
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "julius import: Recording 'alpha' already exists" in again.stderr and "--as" in again.stderr
    renamed = _julius(target, "import", str(tmp_path / "alpha.jrec"), "--as", "beta")
    assert renamed.returncode == 0 and "imported beta" in renamed.stdout
    assert _julius(target, "import", str(tmp_path / "alpha.jrec"), "--force").returncode == 0
    assert content(Store(target).open("beta")) == content(Store(target).open("alpha")) == content(source.open("alpha"))
    bad = _julius(target, "import", str(tmp_path / "alpha.jrec"), "--as", "../x")
    assert bad.returncode == 2 and "Invalid recording name '../x'" in bad.stderr


def test_cli_import_help_names_its_options():
    text = subprocess.run([sys.executable, "-m", "julius_magics.cli", "import", "--help"],
                          capture_output=True, text=True).stdout
    assert "--as NEW" in text and "--force" in text


def test_warnings_of_julius_are_one_line_and_those_of_other_code_keep_their_own_form(capsys):
    import warnings

    from julius_magics import cli

    with warnings.catch_warnings(record=True) as passed_on, cli.one_line_warnings("julius replay"):
        warnings.warn_explicit("skipped recording 'x': bad", UserWarning, cli.__file__, 1)
        warnings.warn_explicit("Sending large graph of size 12 MiB", UserWarning, "/somewhere/dask/base.py", 7)
    assert capsys.readouterr().err.splitlines() == ["julius replay: skipped recording 'x': bad"]
    assert [(str(w.message), w.filename) for w in passed_on] == [("Sending large graph of size 12 MiB",
                                                                   "/somewhere/dask/base.py")]   # shown as Python does
