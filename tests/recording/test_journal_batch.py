"""``RecordingWriter.batch``: steps made durable together, and readers of what a crash inside one leaves."""

import os
import signal
import subprocess
import sys
import threading
import warnings

import pytest

from julius_magics.errors import IntegrityError, RecordingError
from julius_magics.recording import integrity
from julius_magics.recording.journal import entry_file, flush_to_disk
from julius_magics.recording.store import Store

pytestmark = pytest.mark.usefixtures("isolated_key")  # never the user's ~/.julius


def _graph(i):
    return {"keys": [f"inc-{i}"], "fingerprints": {f"inc-{i}": f"fp{i}"}, "ntasks": 1}, {"specs": bytes([i % 256]) * 300}


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    return Store(tmp_path / "store" if request.param == "local" else f"memory://batch-{os.getpid()}-{id(tmp_path)}")


def test_steps_inside_a_batch_are_all_readable_after_it(store):
    writer = store.create("batched")
    writer.add_step("cell", {"source": "before"})
    with writer.batch():
        for i in range(1, 51):
            assert writer.add_step("graph", *_graph(i)) == i + 1
        with writer.batch():   # nested: one flush, at the outer end
            writer.add_step("cell", {"source": "nested"})
        writer.update_meta(workers=2)   # the manifest signs 52 steps: they are flushed first
    writer.add_step("cell", {"source": "after"})
    writer.sync()   # the manifest update_meta sealed is written by the flush thread
    incomplete = store.open("batched")
    assert [s.kind for s in incomplete.steps] == ["cell"] + ["graph"] * 50 + ["cell", "cell"]
    assert (incomplete.info.status, incomplete.manifest["steps"]) == ("incomplete", 52)
    writer.close()
    rec = store.open("batched")
    assert (rec.info.status, len(rec.steps), rec.meta["workers"]) == ("complete", 53, 2)
    for step in rec.steps[1:51]:
        data, parts = _graph(step.seq - 1)
        assert step.data == data and rec.part(step, "specs") == parts["specs"]
    assert [s.data["source"] for s in rec.steps if s.kind == "cell"] == ["before", "nested", "after"]


def test_a_step_that_is_not_json_leaves_nothing_inside_a_batch(store):
    writer = store.create("bad")
    with writer.batch():
        writer.add_step("graph", *_graph(1))
        with pytest.raises(ValueError, match=r"^Recording 'bad', step 2 \(graph\): not plain JSON data: dictionary "
                                             "keys must be strings$"):
            writer.add_step("graph", {"fingerprints": {1: "fp"}}, {"specs": b"never written"})
        writer.add_step("graph", *_graph(3))
    writer.close()
    rec = store.open("bad")
    assert [s.data for s in rec.steps] == [_graph(1)[0], _graph(3)[0]]
    assert sorted(rec.manifest["parts"]) == sorted(integrity.sha256_hex(_graph(i)[1]["specs"]) for i in (1, 3))


def test_flush_to_disk_flushes_files_written_without_fsync(tmp_path):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"f{i}"))
        with open(paths[-1], "wb") as f:
            f.write(b"x" * i)
    flush_to_disk(paths)   # one syncfs on Linux; an error would raise
    assert [os.path.getsize(p) for p in paths] == [0, 1, 2]


@pytest.fixture
def held_flush(monkeypatch):
    """The flush to stable storage held until ``release.set()`` (a slow disk; or, with ``fail``, a failing one)."""
    from julius_magics.recording import journal

    release, state, real_flush = threading.Event(), {"fail": None, "flushed": []}, journal.flush_to_disk

    def flush(paths):
        release.wait(30)
        if state["fail"]:
            raise state["fail"]
        real_flush(paths)
        state["flushed"].extend(paths)

    monkeypatch.setattr(journal, "flush_to_disk", flush)
    return release, state


def test_a_batch_ends_without_waiting_for_its_flush_and_the_manifest_waits_for_it(tmp_path, held_flush):
    """A cell's end waited for Linux's ``syncfs`` to write whatever the notebook had written (0.6 s for 2 GB)."""
    release, state = held_flush
    store = Store(tmp_path / "store")
    writer = store.create("held")
    with writer.batch():
        writer.add_step("graph", *_graph(1))
        writer.update_meta(workers=3)
    writer.add_step("cell", {"source": "after"})   # outside a batch: written and fsynced at once
    assert state["flushed"] == []   # the batch ended, its flush still held
    held = store.open("held")   # every step visible; the manifest still the one of create
    assert [s.kind for s in held.steps] == ["graph", "cell"] and "workers" not in held.meta
    release.set()
    writer.sync()
    assert sorted(state["flushed"]) == sorted([store.files.path("held", entry_file(1)), store.files.path(
        "held", "parts", integrity.sha256_hex(_graph(1)[1]["specs"]))])
    assert store.open("held").meta["workers"] == 3
    writer.close()
    assert (store.open("held").info.status, len(store.open("held").steps)) == ("complete", 2)


def test_a_flush_that_failed_fails_the_close_and_the_recording_stays_incomplete(tmp_path, held_flush):
    release, state = held_flush
    state["fail"] = OSError(5, "Input/output error")
    release.set()
    store = Store(tmp_path / "store")
    writer = store.create("lost")
    with writer.batch():
        writer.add_step("graph", *_graph(1))
    with pytest.raises(RecordingError, match=r"^Recording 'lost': its steps could not be put on stable storage "
                                             r"\(\[Errno 5\] Input/output error\); it stays incomplete\.$"):
        writer.close()
    assert store.list()[0].status == "incomplete"


KILLED_IN_A_BATCH = """
import sys, time
from julius_magics.recording.store import Store
w = Store(sys.argv[1]).create("killed")
w.add_step("cell", {"source": "before the batch"})
with w.batch():
    i = 0
    while True:
        i += 1
        w.add_step("graph", {"fingerprints": {}, "i": i, "text": "x" * (i % 300)},
                   {"specs": bytes([i % 256]) * (i % 3000 + 1)})
        print(i, flush=True)
        if i == int(sys.argv[2]):
            time.sleep(60)   # inside the batch, nothing flushed: killed here
"""


@pytest.mark.parametrize("stop_at", [40, 0], ids=["killed-while-waiting", "killed-while-writing"])
def test_a_writer_killed_inside_a_batch_leaves_an_incomplete_recording_with_a_prefix(tmp_path, stop_at):
    """A real process, SIGKILLed inside a batch: every step whose add_step returned is there, whole."""
    url = str(tmp_path / "s")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_IN_A_BATCH, url, str(stop_at)], stdout=subprocess.PIPE,
                            text=True)
    acknowledged = 0
    while acknowledged < (stop_at or 200):
        acknowledged = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    store = Store(url)
    [info] = store.list()
    assert info.status == "incomplete"
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a killed process tears nothing: no warning either
        rec = store.open("killed")
    graphs = rec.steps[1:]
    assert rec.steps[0].data == {"source": "before the batch"}
    assert len(graphs) >= acknowledged if stop_at == 0 else len(graphs) == acknowledged
    assert [s.data["i"] for s in graphs] == list(range(1, len(graphs) + 1))
    for step in graphs:
        i = step.data["i"]
        assert step.data["text"] == "x" * (i % 300) and rec.part(step, "specs") == bytes([i % 256]) * (i % 3000 + 1)


def _abandoned(store, steps=6, meta_after=None):
    """An incomplete recording of ``steps`` graph steps whose writer died (it never closes)."""
    writer = store.create("torn")
    with writer.batch():
        for i in range(1, steps + 1):
            writer.add_step("graph", *_graph(i))
            if i == meta_after:
                writer.update_meta(workers=1)   # the manifest now signs the steps up to here
    writer.sync()
    return writer


def _entry_path(store, seq):
    return store.files.path("torn", entry_file(seq))


@pytest.mark.parametrize("torn", [b"", b"\0" * 700, "half"], ids=["empty", "zeros", "cut-in-half"])
def test_a_torn_last_entry_is_ignored_with_one_line(tmp_path, torn):
    """As a power loss inside a batch leaves it: the journal is read up to the entry before."""
    store = Store(tmp_path / "store")
    _abandoned(store)
    path = _entry_path(store, 6)
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[:len(raw) // 2] if torn == "half" else torn)
    with pytest.warns(UserWarning) as caught:
        rec = store.open("torn")
    assert [str(w.message) for w in caught] == [
        "Recording 'torn': journal entry 6 is torn (as a writer stopped while writing it leaves it): read as "
        "incomplete with 5 steps, without it and any after it."]
    assert [s.data for s in rec.steps] == [_graph(i)[0] for i in range(1, 6)]
    assert rec.info.status == "incomplete" and "journal/000006.json" not in rec.file_names


def test_entries_after_a_torn_or_missing_one_are_never_taken(tmp_path):
    store = Store(tmp_path / "store")
    _abandoned(store, steps=8)
    with open(_entry_path(store, 4), "wb") as f:
        f.write(b"{\"blobs\":{},\"da")
    with pytest.warns(UserWarning, match="journal entry 4 is torn .* read as incomplete with 3 steps"):
        assert len(store.open("torn").steps) == 3
    os.unlink(_entry_path(store, 4))
    with pytest.warns(UserWarning, match="journal entry 4 is missing .* read as incomplete with 3 steps"):
        assert len(store.open("torn").steps) == 3


def test_a_torn_part_of_the_last_entry_ends_the_journal_before_it(tmp_path):
    store = Store(tmp_path / "store")
    _abandoned(store)
    sha = integrity.sha256_hex(_graph(6)[1]["specs"])
    with open(store.files.path("torn", "parts", sha), "wb") as f:
        f.write(b"\0" * 10)
    with pytest.warns(UserWarning, match=f"journal entry 6 names part {sha[:12]}…, which is missing or torn .* 5 steps"):
        assert len(store.open("torn").steps) == 5
    os.unlink(store.files.path("torn", "parts", sha))
    with pytest.warns(UserWarning, match="journal entry 6 names part .* 5 steps"):
        assert len(store.open("torn").steps) == 5


@pytest.mark.parametrize("case", ["signed by the manifest", "complete", "tampered, not torn"])
def test_a_torn_entry_is_refused_where_nothing_can_tear(tmp_path, case):
    """Entries a manifest signs (flushed before it), a closed recording's, and a whole entry changed: refused."""
    store = Store(tmp_path / "store")
    writer = _abandoned(store, meta_after=6 if case == "signed by the manifest" else None)
    if case == "complete":
        writer.close()
    path = _entry_path(store, 6)
    raw = open(path, "rb").read()
    changed = raw.replace(b'"fp6"', b'"fp7"') if case == "tampered, not torn" else raw[:100]
    with open(path, "wb") as f:
        f.write(changed)
    message = {"signed by the manifest": "journal entry 6 was changed \\(SHA-256 differs from the manifest\\)",
               "complete": "journal entry 6 was changed \\(SHA-256 differs from the manifest\\)",
               "tampered, not torn": "journal entry 6 was changed: its SHA-256 does not match"}[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(IntegrityError, match=f"^Recording 'torn': {message}"):
            store.open("torn")
