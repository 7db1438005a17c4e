"""Input files snapshotted where they were read: one pass each, once per host, never holding up a cell's end."""

import hashlib
import os
import tempfile
import time

import pytest
from distributed import Client, LocalCluster

from julius_magics import recording
from julius_magics.cluster import inputs
from julius_magics.cluster.session import Session
from julius_magics.errors import IntegrityError
from julius_magics.recording.files import open_files
from julius_magics.recording.store import Store

SIZE = 3 * (1 << 20) + 77


def read_whole(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_then_overwrite(path):
    with open(path, "rb") as f:
        read = hashlib.sha256(f.read()).hexdigest()
    with open(path, "wb") as f:   # the session overwrites what it read
        f.write(b"written by the session")
    return read


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = {name: os.urandom(SIZE + i) for i, name in enumerate(("shared.bin", "kernel.bin", "rewritten.bin"))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path, files


def cluster(n=2):
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")


def inputs_of(rec):
    return [f for s in rec.steps if s.kind == "inputs" for f in s.data["files"]]


def blobs_on_disk(store):
    return set(os.listdir(os.path.join(store.url, "_blobs")))


def test_each_file_is_read_once_where_it_was_read_and_a_file_two_workers_read_is_stored_once(project, tmp_path):
    folder, files = project
    store = Store(tmp_path / "store")
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    recorder = recording.start(Session(), "once", store=store)
    with cluster() as c, Client(c) as client:
        workers = sorted(client.scheduler_info()["workers"])
        for worker in workers:   # both workers of this host read it
            assert client.submit(read_whole, "shared.bin", workers=[worker], pure=False).result() == sha["shared.bin"]
        assert client.submit(read_then_overwrite, "rewritten.bin", pure=False).result() == sha["rewritten.bin"]
        assert read_whole("kernel.bin") == sha["kernel.bin"]
        recorder.add_cell("...")
    info = recording.stop()
    assert info.status == "complete"
    rec = store.open("once")
    listed = inputs_of(rec)
    # the journal lists each reader; the bytes are stored once, as they were read
    assert sorted(f["reader"] for f in listed if f["path"] == "shared.bin") == workers
    assert {f["path"]: f["sha256"] for f in listed} == sha
    assert all(f["embedded"] for f in listed)
    assert set(sha.values()) <= set(rec.blobs) and blobs_on_disk(store) == set(rec.blobs)   # nothing else written
    assert rec.blob(sha["rewritten.bin"]) == files["rewritten.bin"]   # the version read, not the one written
    stats = recorder.snapshots
    assert sum(s["passes"] for s in stats.values()) == 3   # one pass per file version, on this host
    assert sum(s["bytes"] for s in stats.values()) == sum(len(d) for d in files.values())
    assert sum(s["shared"] for s in stats.values()) == 1   # the second worker took the first one's snapshot
    assert stats["kernel"]["passes"] == 1
    assert os.listdir(os.path.join(store.url, "_tmp")) == []   # no temporary copy or probe left
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), f"julius-claims-{recorder.watch.token}"))


def test_a_cell_end_does_not_wait_for_a_snapshot_and_the_last_drain_does(project, tmp_path):
    folder, files = project
    store = Store(tmp_path / "store")
    recorder = recording.start(Session(), "later", store=store)
    with cluster(1) as c, Client(c) as client:
        with inputs.claiming("shared.bin"):   # another reader of this host snapshots it: the worker's waits
            client.submit(read_whole, "shared.bin", pure=False).result()
            recorder.add_cell("first")   # the cell's end: the snapshot is not done, and is not waited for
            assert recorder.captured["files"] == 0
            assert [s.kind for s in store.open("later").steps if s.kind in ("inputs", "cell")] == ["cell"]
        recorder.add_cell("second")   # meanwhile it may be done, or not: a later drain has it
    recording.stop()   # (the cluster's close already waited for it)
    rec = store.open("later")
    [entry] = inputs_of(rec)
    assert entry["path"] == "shared.bin" and rec.blob(entry["sha256"]) == files["shared.bin"]
    kinds = [s.kind for s in rec.steps if s.kind in ("inputs", "cell")]
    assert kinds.index("inputs") > kinds.index("cell")


def test_recording_stop_waits_for_every_snapshot(project, tmp_path):
    folder, files = project
    store = Store(tmp_path / "store")
    recorder = recording.start(Session(), "stopped", store=store)
    with inputs.claiming("kernel.bin"):
        read_whole("kernel.bin")
        recorder.add_cell("read")
        assert recorder.captured["files"] == 0   # still waiting for the claim
    recording.stop()
    [entry] = inputs_of(store.open("stopped"))
    assert (entry["path"], entry["reader"], entry["sha256"]) == (
        "kernel.bin", "kernel", hashlib.sha256(files["kernel.bin"]).hexdigest())


def test_a_file_changed_before_its_snapshot_makes_the_recording_partial(project, tmp_path, capfd):
    folder, files = project
    store = Store(tmp_path / "store")
    recorder = recording.start(Session(), "changed", store=store)
    with cluster(1) as c, Client(c) as client:
        with inputs.claiming("shared.bin"):
            client.submit(read_whole, "shared.bin", pure=False).result()
            recorder.add_cell("read")
            with open("shared.bin", "r+b") as f:   # changed after the worker read it, before its snapshot
                f.write(b"changed")
    info = recording.stop()
    err = capfd.readouterr().err
    assert "julius: warning: input file shared.bin changed after it was read, before it was hashed" in err
    assert info.status == "partial"
    rec = store.open("changed")
    # dropped twice: as the worker read it, and as the kernel opened it to update ("r+b")
    assert inputs_of(rec) == [] and [s.data["files"] for s in rec.steps if s.kind == "dropped"] == [
        [str(folder / "shared.bin")]] * 2
    assert hashlib.sha256(files["shared.bin"]).hexdigest() not in blobs_on_disk(store)


def test_with_data_hash_files_are_hashed_once_and_no_bytes_stored(project, tmp_path):
    folder, files = project
    store = Store(tmp_path / "store")
    recorder = recording.start(Session(), "hashed", store=store, data="hash")
    with cluster(1) as c, Client(c) as client:
        client.submit(read_whole, "shared.bin", pure=False).result()
        recorder.add_cell("read")
    recording.stop()
    rec = store.open("hashed")
    [entry] = inputs_of(rec)
    assert entry["sha256"] == hashlib.sha256(files["shared.bin"]).hexdigest() and not entry["embedded"]
    assert entry["sha256"] not in rec.blobs and entry["sha256"] not in blobs_on_disk(store)
    assert sum(s["passes"] for s in recorder.snapshots.values()) == 1


def test_a_big_file_recorded_again_is_read_again_only_when_it_changed(project, tmp_path):
    folder, files = project
    store = Store(tmp_path / "store")

    def record(name, data="embed"):
        recorder = recording.start(Session(), name, store=store, data=data)
        with cluster(1) as c, Client(c) as client:
            client.submit(read_whole, "shared.bin", pure=False).result()
            recorder.add_cell("read")
        recording.stop()
        [entry] = inputs_of(store.open(name))
        stats = recorder.snapshots.values()
        return entry["sha256"], sum(s["passes"] for s in stats), sum(s["known"] for s in stats)

    sha = hashlib.sha256(files["shared.bin"]).hexdigest()
    time.sleep(inputs.RACY_NS / 1e9)   # a file written in the last seconds is never taken as known
    assert record("first") == (sha, 1, 0)
    assert record("again") == (sha, 0, 1)   # hashed and stored by the first: not read at all
    assert record("hashed", data="hash") == (sha, 0, 1)
    st = os.stat("shared.bin")
    changed = files["shared.bin"][:-7] + b"changed"   # same size, and its time set back: its ctime still moves
    with open("shared.bin", "r+b") as f:
        f.write(changed)
    os.utime("shared.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert record("changed") == (hashlib.sha256(changed).hexdigest(), 1, 0)
    os.remove("shared.bin")
    report = recording.replay("again", store=store, n_workers=1)   # served from the first recording's blob
    assert report.verified and report.results == 1


def test_a_blob_written_in_one_pass_is_committed_only_whole_and_unchanged(tmp_path):
    files = open_files(str(tmp_path / "store"))
    folder = files.path("_blobs")
    data = os.urandom(SIZE)
    (tmp_path / "f.bin").write_bytes(data)
    with open(tmp_path / "f.bin", "rb") as f:
        assert files.write_hashed(folder, f) == (hashlib.sha256(data).hexdigest(), SIZE)
    with open(tmp_path / "f.bin", "rb") as f:   # there already: the copy is dropped
        assert files.write_hashed(folder, f) == (hashlib.sha256(data).hexdigest(), SIZE)

    def refused():
        raise IntegrityError("the source changed")

    (tmp_path / "g.bin").write_bytes(data[::-1])
    with open(tmp_path / "g.bin", "rb") as f, pytest.raises(IntegrityError):
        files.write_hashed(folder, f, commit=refused)
    assert os.listdir(folder) == [hashlib.sha256(data).hexdigest()]
    assert os.listdir(files.path("_tmp")) == []


def test_a_final_drain_waiting_for_a_snapshot_leaves_the_worker_answering(project, tmp_path):
    # the drain hashes (and may wait for another process's claim) in a thread, not in the worker's
    # event loop: its heartbeats and its peers are answered meanwhile
    import threading

    folder, files = project
    store = Store(tmp_path / "store")
    recording.start(Session(), "answering", store=store)
    with cluster(1) as c, Client(c) as client:
        with inputs.claiming("shared.bin"):   # another reader of this host snapshots it: the worker's waits
            client.submit(read_whole, "shared.bin", pure=False).result()
            stopping = threading.Thread(target=recording.stop)   # the final drain: waits for every snapshot
            stopping.start()
            time.sleep(1.0)
            answers = []
            ping = threading.Thread(target=lambda: answers.append(client.run(os.getpid)), daemon=True)
            ping.start()
            ping.join(20)
            assert stopping.is_alive() and len(answers) == 1   # still draining, and answering
        stopping.join(60)
    [entry] = inputs_of(store.open("answering"))
    assert store.open("answering").blob(entry["sha256"]) == files["shared.bin"]


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def known_hash(path):
    """The SHA-256 this process holds for the current version of ``path`` (hashing nothing), or None."""
    st = os.stat(path)
    return inputs._S.hashes.get((os.path.abspath(path), st.st_size, st.st_mtime_ns))


def test_an_output_is_hashed_once_its_task_ends_and_the_drain_reports_the_version_written_last(project, tmp_path):
    """The drain at a cell's end hashed every output the cell's tasks wrote (0.41 s for 545 MB of Parquet)."""
    store = Store(tmp_path / "store")
    first, second = os.urandom(SIZE), os.urandom(SIZE)   # the same size: only the times tell them apart
    recorder = recording.start(Session(), "outputs", store=store)
    with cluster(1) as c, Client(c) as client:
        client.submit(write_bytes, "out.bin", first, pure=False).result()
        deadline = time.monotonic() + 30
        while list(client.run(known_hash, "out.bin").values()) != [hashlib.sha256(first).hexdigest()]:
            assert time.monotonic() < deadline, "the finished task's output was not hashed in the background"
            time.sleep(0.05)
        client.submit(write_bytes, "out.bin", second, pure=False).result()   # rewritten before any drain
        recorder.add_cell("written twice")
    recording.stop()
    rec = store.open("outputs")
    [entry] = [f for s in rec.steps if s.kind == "outputs" for f in s.data["files"]]
    assert (entry["path"], entry["size"], entry["sha256"]) == ("out.bin", SIZE, hashlib.sha256(second).hexdigest())


HOLDER = """
import sys
from julius_magics.cluster import inputs
inputs.start_reads(token=sys.argv[1])
print("holding", flush=True)
sys.stdin.readline()   # "stop": the recording's last drain
inputs.stop_reads()
inputs.end_claims()
print("let go", flush=True)
sys.stdin.readline()
"""


def test_the_claims_folders_of_dead_recordings_go_at_the_next_start_and_a_live_one_stays(tmp_path):
    """A killed kernel never reaches its last drain, so its claims folder stayed in the temporary folder
    (each process of a recording now holds its host's folder; a folder nobody holds is removed)."""
    import subprocess
    import sys
    import uuid

    def folder(token):
        return os.path.join(tempfile.gettempdir(), f"julius-claims-{token}")

    def holder(token):
        process = subprocess.Popen([sys.executable, "-c", HOLDER, token], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline() == "holding\n"
        return process

    live, killed, empty, stale = (uuid.uuid4().hex for _ in range(4))
    live_one, killed_one = holder(live), holder(killed)
    try:
        killed_one.kill()
        killed_one.wait(10)
        os.makedirs(folder(empty))   # left by a julius that held no folder, or being made now
        os.makedirs(folder(stale))   # left by such a julius, with its claims, an hour ago
        open(os.path.join(folder(stale), "0" * 40 + ".lock"), "w").close()
        os.utime(folder(stale), (time.time() - 7200, time.time() - 7200))
        assert all(os.path.isdir(folder(t)) for t in (live, killed, empty, stale))
        recording.start(Session(), "sweeping", store=Store(tmp_path / "store"))
        try:
            assert not any(os.path.exists(folder(t)) for t in (killed, empty, stale))
            assert os.path.isdir(folder(live))
        finally:
            recording.stop()
        live_one.stdin.write("stop\n")
        live_one.stdin.flush()
        assert live_one.stdout.readline() == "let go\n"
        assert not os.path.exists(folder(live))   # its last holder let go of it
    finally:
        live_one.kill()
        live_one.wait(10)
