"""Input files read by workers that cannot see the store are embedded a chunk at a time, fetched through Dask.

Each recording here takes its store's probe away, so no reader sees the store (as
workers on another host): their bytes come through Dask, never whole in the kernel.
"""

import glob
import hashlib
import os
import tempfile
import tracemalloc

import pytest
from distributed import Client, LocalCluster

from julius_magics import recording
from julius_magics.cluster.session import Session
from julius_magics.recording.store import Store

CHUNK = 1 << 20
SIZE = 12 * CHUNK + 4321   # thirteen chunks, the last one short


def read_on_a_worker(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = os.urandom(SIZE)
    (tmp_path / "big.bin").write_bytes(data)
    return tmp_path, data


def cluster():
    return LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")


def unseen(recorder):
    """The store as readers on another host see it: not at all (its probe is gone)."""
    recorder.sink.close()
    recorder.watch.chunk_size = CHUNK
    return recorder


def inputs_of(rec):
    return [f for s in rec.steps if s.kind == "inputs" for f in s.data["files"]]


def test_a_file_larger_than_a_chunk_read_on_a_worker_is_embedded_in_chunks(project, tmp_path):
    folder, data = project
    store = Store(tmp_path / "store")
    recorder = unseen(recording.start(Session(), "big", store=store))
    with cluster() as c, Client(c) as client:
        assert client.submit(read_on_a_worker, "big.bin", pure=False).result() == hashlib.sha256(data).hexdigest()
        import tqdm.notebook  # noqa: F401  (imported in a kernel already: its code is not the snapshot's memory)

        tracemalloc.start()
        recorder.add_cell("client.submit(read_on_a_worker, 'big.bin').result()")   # its snapshot starts
        info = recording.stop()   # waits for it, then streams the bytes from the worker
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert info.status == "complete"
    assert peak < SIZE / 2   # a few chunks at a time, never the whole file
    rec = store.open("big")
    [entry] = inputs_of(rec)
    assert (entry["path"], entry["size"], entry["embedded"]) == ("big.bin", SIZE, True)
    assert entry["reader"] != "kernel"
    assert rec.blob(entry["sha256"]) == data
    [stats] = [s for reader, s in recorder.snapshots.items() if reader != "kernel"]
    assert (stats["passes"], stats["bytes"]) == (1, SIZE)   # hashed once where read, then streamed


def test_a_file_read_by_a_cluster_closed_before_the_snapshot_is_copied_in_chunks(project, tmp_path):
    folder, data = project
    store = Store(tmp_path / "store")
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "julius-snapshot-*")))
    recorder = unseen(recording.start(Session(), "closed", store=store))
    with cluster() as c, Client(c) as client:
        client.submit(read_on_a_worker, "big.bin", pure=False).result()
    info = recording.stop()   # the cluster is gone: its bytes were copied while it closed
    assert info.status == "complete"
    rec = store.open("closed")
    [entry] = inputs_of(rec)
    assert entry["reader"] != "kernel" and rec.blob(entry["sha256"]) == data
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "julius-snapshot-*"))) == before   # copies let go


def test_a_file_changed_while_it_is_snapshotted_makes_the_recording_partial(project, tmp_path, capfd):
    folder, data = project
    store = Store(tmp_path / "store")
    recorder = unseen(recording.start(Session(), "changing", store=store))
    streamed = recorder.watch.file_chunks

    def changed_after_the_first_chunk(entry):
        chunks = streamed(entry)
        yield next(chunks)
        with open(folder / "big.bin", "r+b") as f:   # the notebook's own process rewrites the tail
            f.seek(SIZE - 10)
            f.write(b"0123456789")
        yield from chunks

    recorder.watch.file_chunks = changed_after_the_first_chunk
    with cluster() as c, Client(c) as client:
        client.submit(read_on_a_worker, "big.bin", pure=False).result()
        recorder.add_cell("client.submit(read_on_a_worker, 'big.bin').result()")   # its snapshot starts
        info = recording.stop()   # waits for it, then streams the bytes from the worker
    out, err = capfd.readouterr()
    assert "julius: warning: input file big.bin changed after it was read, before it was stored" in err
    assert info.status == "partial"
    rec = store.open("changing")
    assert rec.meta["partial"] and "big.bin changed after it was read" in rec.meta["partial_reasons"][0]
    # dropped twice: as the worker read it, and as the kernel opened it to update ("r+b")
    assert [s.data["files"] for s in rec.steps if s.kind == "dropped"] == [[str(folder / "big.bin")]] * 2
    assert inputs_of(rec) == [] and rec.blobs.keys().isdisjoint({hashlib.sha256(data).hexdigest()})
    assert not os.path.exists(os.path.join(store.url, "_blobs", hashlib.sha256(data).hexdigest()))
