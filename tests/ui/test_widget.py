"""RecordingBrowser: real recordings in a temporary store, real replays, and a real kernel (nbclient)."""

import html
import os
import shutil
import sys
import textwrap

import nbformat
import pytest
from nbclient import NotebookClient

import julius_magics as jm
from julius_magics import RecordingBrowser, compute, recording, ref
from julius_magics.cluster.session import Session, set_session
from julius_magics.errors import IntegrityError

MK = "def mk(i):\n    return list(range(i))"


def _record(session, store, name, rule, note=None, remote=MK):
    recording.start(session, name, store=store, note=note)
    session.remote_eval(remote)
    session.add_rules("t", rule)
    compute(ref.t.src(5))
    return recording.stop()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A store with ``w1``, ``w2`` (another rule) and ``w3-clock`` (a result that differs on every run).

    All three are recorded on one 1-worker cluster (each journal starts with its cluster step).
    The store lists by creation time, to the second, then by name: the names sort in creation order.
    """
    store = tmp_path_factory.mktemp("widget-store")
    s = set_session(Session())
    recording.start(s, "w1", store=store, note="<b>first</b> & plain")
    s.start(n_workers=1)
    s.remote_eval(MK)
    s.add_rules("t", "def src(i):\n    return ApplyFn(mk, i)()")
    compute(ref.t.src(5))
    recording.stop()
    _record(s, store, "w2", "def src(i):\n    return ApplyFn(mk, i + 1)()")
    _record(s, store, "w3-clock", "def src(i):\n    return ApplyFn(stamp, i)()",
            remote="def stamp(i):\n    import time\n    return time.time_ns() + i")
    s.stop()
    set_session(Session())
    yield store


@pytest.fixture
def store_copy(recorded, tmp_path):
    """A private copy of the recorded store, for tests that change it."""
    copy = tmp_path / "store"
    shutil.copytree(recorded, copy)
    return copy


@pytest.fixture
def kernel_session_untouched():
    """A widget replay runs in a thread with a session of its own: the kernel's stays as it was."""
    before = jm.get_session()
    yield before
    assert jm.get_session() is before


def test_lists_recordings_with_escaped_notes(recorded):
    browser = RecordingBrowser(store=recorded)
    assert [r["name"] for r in browser.recordings] == ["w1", "w2", "w3-clock"]
    first = browser.recordings[0]
    assert (first["steps"], first["workers"], first["status"]) == (5, 1, "complete")
    assert browser.error.value == ""
    assert browser.status.value == "3 recording(s)"
    assert [value for _, value in browser.picker.options] == ["w1", "w2", "w3-clock"]
    # names and notes are text: the note's markup is escaped, never rendered
    assert html.escape("<b>first</b> & plain") in browser.table.value
    assert "<b>first</b>" not in browser.table.value
    for column in ("name", "created", "steps", "size", "workers", "status", "note"):
        assert f">{column}</th>" in browser.table.value


def test_details_show_steps_environment_and_results(recorded):
    browser = RecordingBrowser(store=recorded)
    assert browser.selected == "w1"          # the first recording is selected at once
    details = browser.select("w2")
    assert browser.selected == "w2" and browser.picker.value == "w2"
    # w2 was started mid-session: its journal begins with the code and rules sent before it
    assert [s["kind"] for s in details["steps"]] == ["cluster", "environment", "remote_eval", "rules",
                                                     "remote_eval", "rules", "dispatch"]
    assert [r["describe"] for r in details["results"]] == ["list of 6"]
    assert "list of 6" in browser.details.value
    assert [r["describe"] for r in browser.select("w1")["results"]] == ["list of 5"]
    text = browser.details.value
    assert "t: src" in text and "start cluster, 1 workers" in text
    assert f"Python {sys.version.split()[0]}" in text
    assert "list of 5" in text and "Results (1)" in text


def test_select_unknown_name_shows_error(recorded):
    browser = RecordingBrowser(store=recorded)
    assert browser.select("nope") is None
    assert "no recording &#x27;nope&#x27;" in browser.error.value
    assert isinstance(browser.last_error, ValueError)
    assert browser.selected == "w1"


def test_diff_shows_the_differing_rule(recorded):
    browser = RecordingBrowser(store=recorded)
    d = browser.diff("w1", "w2")
    assert d["same"] is False and list(d["rules"]) == ["t"]
    assert "\n     return ApplyFn(mk, i)()\n" in d["rules"]["t"]   # in both: w2 defined it, then again
    assert "\n+    return ApplyFn(mk, i + 1)()" in d["rules"]["t"]
    assert "rules t:" in browser.output.value
    assert "result t.src: list of 5 \u2192 list of 6" in browser.output.value   # as julius diff prints it
    # the Diff button compares the selection with the "diff with" pick
    browser.select("w2")
    browser.other.value = "w2"
    browser.diff_button.click()
    assert browser.diff_data["same"] is True and "no differences" in browser.output.value


def test_delete_asks_for_confirmation_then_deletes(store_copy):
    browser = RecordingBrowser(store=store_copy)
    browser.select("w2")
    browser.delete_button.click()
    assert browser.pending_delete == "w2"
    assert browser.confirm_box.layout.display == "flex"
    assert "Delete recording <b>w2</b>?" in browser.confirm_label.value
    assert (store_copy / "w2").is_dir()                 # nothing deleted yet
    browser.cancel_button.click()
    assert browser.pending_delete is None and browser.confirm_box.layout.display == "none"
    assert browser.delete("w2") is False and (store_copy / "w2").is_dir()
    browser.confirm_button.click()
    assert not (store_copy / "w2").exists()
    assert [r["name"] for r in browser.recordings] == ["w1", "w3-clock"]
    assert browser.pending_delete is None and browser.status.value == "deleted w2; 2 recording(s) left"
    assert browser.delete("w2", confirm=True) is False   # already gone: said in the widget
    assert "No recording &#x27;w2&#x27;" in browser.error.value


def test_replay_of_tampered_recording_shows_the_error(store_copy):
    journal = store_copy / "w2" / "journal" / "000001.json"
    raw = bytearray(journal.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    journal.write_bytes(bytes(raw))
    browser = RecordingBrowser(store=store_copy)
    thread = browser.replay("w2", wait=True)
    assert not thread.is_alive()
    assert isinstance(browser.last_error, IntegrityError)
    assert browser.report is None and browser.replaying is None
    assert "Error while replaying &#x27;w2&#x27;" in browser.error.value
    assert html.escape(str(browser.last_error)) in browser.error.value
    assert browser.status.value == "replay of w2 failed" and browser.progress.bar_style == "danger"
    assert browser.replay_button.disabled is False
    # its details cannot be read either, and say so in the same place
    browser.select("w2")
    assert isinstance(browser.last_error, IntegrityError)


def test_replay_verifies_and_shows_progress(recorded, tmp_path, session, kernel_session_untouched):
    store = tmp_path / "store"
    shutil.copytree(recorded, store)
    browser = RecordingBrowser(store=store)
    thread = browser.replay("w1")                 # returns at once: the replay runs in a thread
    assert thread.is_alive() and browser.replaying == "w1"
    assert browser.replay_button.disabled is True
    assert browser.replay("w1") is None           # one replay at a time
    assert "still running" in browser.error.value
    thread.join()
    assert browser.report.verified is True and browser.last_error is None
    assert (browser.progress.value, browser.progress.max) == (5, 5)
    assert browser.status.value == "w1: VERIFIED" and browser.progress.bar_style == "success"
    assert "Replay of w1: verified" in browser.output.value
    assert browser.recordings[0]["status"] == "verified"
    assert "a replay matched it on" in browser.details.value and "1 results, 5 steps" in browser.details.value
    assert browser.replay_button.disabled is False
    assert session.active and jm.get_session() is session   # the kernel's cluster kept running
    assert not browser.report.session.active                 # the replay's own was stopped


def test_replay_mismatch_lists_the_result(recorded, tmp_path, kernel_session_untouched):
    store = tmp_path / "store"
    shutil.copytree(recorded, store)
    browser = RecordingBrowser(store=store, n_workers=1)
    browser.select("w3-clock")
    browser.replay_button.click()
    browser._thread.join()
    report = browser.report
    assert report.verified is False and [m["label"] for m in report.mismatches] == ["t.src"]
    assert "not verified" in browser.output.value
    assert "<td style" in browser.output.value and "t.src" in browser.output.value
    assert html.escape(report.mismatches[0]["cause"]) in browser.output.value
    assert browser.status.value == "w3-clock: NOT VERIFIED" and browser.progress.bar_style == "warning"
    assert browser.error.value == ""


def test_notebook_drives_a_replay(tmp_path):
    """A real kernel: record, build the browser, replay through its Python API."""
    store = tmp_path / "nb-store"
    cells = [
        f"""
        import julius_magics as jm
        from julius_magics import recording, ref, compute, RecordingBrowser
        STORE = {str(store)!r}
        s = jm.get_session()
        recording.start(s, "nb1", store=STORE)
        s.start(n_workers=1)
        s.remote_eval("def mk(i):\\n    return list(range(i))")
        s.add_rules("t", "def src(i):\\n    return ApplyFn(mk, i)()")
        compute(ref.t.src(5))
        recording.stop(); s.stop()
        """,
        """
        browser = RecordingBrowser(store=STORE)
        browser
        """,
        """
        thread = browser.replay("nb1")
        print("returned while replaying:", thread.is_alive())
        """,
        """
        thread.join()
        print("verified:", browser.report.verified)
        print("progress:", browser.progress.value, "/", browser.progress.max)
        print("error:", repr(browser.error.value))
        import os; print("home:", os.environ["HOME"])
        jm.get_session().stop()
        """,
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells])
    # the kernel inherits os.environ: HOME and JULIUS_STORE point at the test's temporary home
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    def text(i):
        return "".join(o.get("text", "") for o in nb.cells[i].outputs if o["output_type"] == "stream")

    view = nb.cells[1].outputs[0]["data"]["application/vnd.jupyter.widget-view+json"]
    assert text(2) == "returned while replaying: True\n"
    assert text(3) == f"verified: True\nprogress: 5 / 5\nerror: ''\nhome: {os.environ['HOME']}\n"
    assert (store / "nb1" / "verified.json").is_file()
    # what the front-end got: the last updates sent from the replay thread reached it (nbclient
    # drops the messages of the moments between two cells, so the early ones may be missing here)
    models = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert models[view["model_id"]]["model_name"] == "VBoxModel"
    bars = [m["state"] for m in models.values() if m["model_name"] == "IntProgressModel"]
    assert [(b["value"], b["bar_style"]) for b in bars] == [(5, "success")]
    html_values = [m["state"]["value"] for m in models.values() if m["model_name"] == "HTMLModel"]
    assert any("Replay of nb1: verified" in v for v in html_values)
