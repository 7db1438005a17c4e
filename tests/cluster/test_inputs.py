"""Input files seen where they are read: the audit hook, fsspec and pyarrow doors, real readers."""

import hashlib
import os
import time

import numpy as np
import pandas as pd
import pytest

from julius_magics.cluster import inputs
from julius_magics.cluster.inputs import drain_reads, file_sha256, start_reads, stop_reads


@pytest.fixture
def noting(tmp_path, monkeypatch):
    """Reads noted for one test, from inside ``tmp_path`` (relative paths resolve there)."""
    monkeypatch.chdir(tmp_path)
    drain_reads()
    assert start_reads(skip=[str(tmp_path / "store")])
    yield tmp_path
    stop_reads()
    drain_reads()
    inputs.end_claims()


def by_path(report):
    return {os.path.relpath(e["abspath"]): e for e in report["inputs"]}


def test_pandas_numpy_open_and_parquet_are_seen(noting):
    pd.DataFrame({"a": [1, 2, 3]}).to_csv("a.csv", index=False)   # written here: an output, not an input
    os.makedirs("raw")
    pd.DataFrame({"b": [1.5, 2.5]}).to_csv("raw/b.csv", index=False)
    np.save("raw/x.npy", np.arange(5))
    pd.DataFrame({"c": [1, 2]}).to_parquet("raw/c.parquet")
    with open("raw/plain.txt", "w") as f:
        f.write("hello")
    drain_reads()
    stop_reads()
    # files that existed before: start afresh, as a recording started now would
    start_reads()
    assert pd.read_csv("raw/b.csv").b.sum() == 4.0
    assert np.load("raw/x.npy").sum() == 10
    assert pd.read_parquet("raw/c.parquet").c.sum() == 3
    with open("raw/plain.txt") as f:
        assert f.read() == "hello"
    report = drain_reads()
    got = by_path(report)
    assert set(got) == {"raw/b.csv", "raw/x.npy", "raw/c.parquet", "raw/plain.txt"}
    entry = got["raw/b.csv"]
    assert entry["path"] == "raw/b.csv" and entry["cwd"] == str(noting)
    assert entry["abspath"] == str(noting / "raw" / "b.csv")
    assert entry["size"] == os.path.getsize("raw/b.csv")
    assert entry["sha256"] == file_sha256("raw/b.csv")
    assert report["problems"] == []


def test_outputs_are_not_inputs_and_reads_before_writes_are_kept(noting):
    with open("made.txt", "w") as f:          # created by the session
        f.write("out")
    with open("made.txt") as f:                # read back: still an output
        f.read()
    report = drain_reads()
    assert report["inputs"] == []
    assert [(o["path"], o["existed"]) for o in report["outputs"]] == [("made.txt", False)]
    stop_reads()
    with open("kept.txt", "w") as f:
        f.write("before")
    start_reads()
    with open("kept.txt") as f:
        assert f.read() == "before"
    with open("kept.txt", "w") as f:           # overwritten after being read
        f.write("after!")
    report = drain_reads()
    import hashlib

    assert [(i["path"], i["sha256"]) for i in report["inputs"]] == [("kept.txt", hashlib.sha256(b"before").hexdigest())]
    assert [(o["path"], o["existed"]) for o in report["outputs"]] == [("kept.txt", True)]


def test_a_file_opened_to_update_is_an_input_as_it_was_and_an_output(noting):
    """``open(path, "r+")`` and HDF5's ``"a"`` read a file and write it: what it held before is an input."""
    import h5py

    with open("log.txt", "w") as f:
        f.write("one\n")
    with h5py.File("notes.h5", "w") as f:
        f["first"] = [1.0]
    before = {p: file_sha256(p) for p in ("log.txt", "notes.h5")}
    stop_reads()
    start_reads()
    with open("log.txt", "r+") as f:
        f.seek(0, os.SEEK_END)
        f.write("two\n")
    with h5py.File("notes.h5", "a") as f:
        f["second"] = [2.0]
    with h5py.File("new.h5", "a") as f:   # made by the update: an output only
        f["x"] = [0.0]
    report = drain_reads()
    assert {p: e["sha256"] for p, e in by_path(report).items()} == before
    assert sorted((o["path"], o["existed"]) for o in report["outputs"]) == [
        ("log.txt", True), ("new.h5", False), ("notes.h5", True)]
    assert report["problems"] == []


def test_a_database_is_snapshotted_as_it_was_connected_before_a_statement_changes_it(noting):
    import sqlite3

    with sqlite3.connect("shop.db") as db:
        db.execute("create table sales (amount real, receipt blob)")   # 20 MB: a snapshot takes a while
        db.executemany("insert into sales values (?, randomblob(100000))", [(float(i),) for i in range(200)])
    db.close()
    before = file_sha256("shop.db")
    stop_reads()
    start_reads()
    db = sqlite3.connect("shop.db")
    db.execute("insert into sales values (1.5, null)")   # changed at once: the snapshot must have come first
    db.commit()
    db.close()
    report = drain_reads()
    assert file_sha256("shop.db") != before
    assert [(e["path"], e["sha256"]) for e in report["inputs"]] == [("shop.db", before)]
    assert report["problems"] == []


def test_python_install_skipped_folders_and_vanished_files(noting):
    import json  # noqa: F401

    with open(os.path.join(os.path.dirname(pd.__file__), "__init__.py")) as f:   # site-packages
        f.read(10)
    os.makedirs("store")
    stop_reads()
    for name in ("store/blob", "gone.txt"):
        with open(name, "w") as f:
            f.write("x")
    start_reads(skip=[str(noting / "store")], token="vanishing")
    with inputs.claiming("gone.txt"):   # as if another process of this host snapshotted it: this one waits
        for name in ("store/blob", "gone.txt"):
            with open(name) as f:
                f.read()
        os.unlink("gone.txt")
    report = drain_reads()
    assert report["inputs"] == []
    assert [(p["path"], p["problem"]) for p in report["problems"]] == [("gone.txt", "vanished after it was read")]


def test_nothing_noted_when_off(tmp_path):
    stop_reads()
    drain_reads()
    path = tmp_path / "f.txt"
    path.write_text("x")
    path.read_text()
    assert drain_reads()["inputs"] == []


def test_a_file_version_is_hashed_once(noting, monkeypatch):
    stop_reads()
    with open("big.bin", "wb") as f:
        f.write(os.urandom(1000))
    start_reads()
    calls = []
    real = inputs.hashlib.file_digest
    monkeypatch.setattr(inputs.hashlib, "file_digest", lambda *a: calls.append(1) or real(*a))
    for _ in range(3):
        with open("big.bin", "rb") as f:
            f.read()
        drain_reads()
    assert len(calls) == 1


def test_julius_own_temporary_folders_are_not_inputs(noting):
    """Wheels built for ``--with-local-packages`` (``julius-wheels-*``) and copies of inputs are julius's reads."""
    import tempfile

    stop_reads()
    with tempfile.TemporaryDirectory(prefix="julius-wheels-") as wheels, \
            tempfile.TemporaryDirectory(prefix="project-") as project:
        for folder in (wheels, project):
            with open(os.path.join(folder, "pkg-1.0-py3-none-any.whl"), "wb") as f:
                f.write(b"PK wheel")
        start_reads()
        for folder in (wheels, project):
            with open(os.path.join(folder, "pkg-1.0-py3-none-any.whl"), "rb") as f:
                f.read()
        report = drain_reads()
    assert [os.path.dirname(e["abspath"]) for e in report["inputs"]] == [project]


def test_parquet_read_on_a_worker_is_seen_though_the_worker_imports_pyarrow_after_the_hooks(tmp_path, monkeypatch):
    import sys

    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"c": range(10)}).to_parquet("t.parquet")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.register_plugin(inputs.InputsWorkerPlugin(recording=True))
        # the hooks did not import pyarrow.dataset (seconds): it is wrapped when the worker imports it
        assert client.run(lambda: "pyarrow.dataset" in sys.modules) == {w: False for w in client.run(lambda: 0)}
        assert dd.read_parquet("t.parquet").c.sum().compute() == 45
        [report] = client.run(inputs.drain_reads).values()
        client.register_plugin(inputs.InputsWorkerPlugin(recording=False))
    assert [(e["path"], e["size"]) for e in report["inputs"]] == [(str(tmp_path / "t.parquet"),
                                                                   os.path.getsize(tmp_path / "t.parquet"))]


def test_pyarrow_readers_and_writers_are_seen_though_arrow_opens_files_itself(noting):
    """Arrow's C++ filesystem fires no audit event: each reader of a local path is seen, and each writer."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.dataset as pads
    import pyarrow.feather as feather
    import pyarrow.json as pajson
    import pyarrow.orc as orc
    import pyarrow.parquet as pq
    from fsspec.implementations.local import LocalFileSystem

    table = pa.table({"year": [2020, 2021], "v": [1.0, 2.0]})
    pacsv.write_csv(table, "t.csv")
    (noting / "t.jsonl").write_text('{"v": 1}\n{"v": 2}\n')
    feather.write_feather(table, "t.feather")
    orc.write_table(table, "t.orc")
    pq.write_table(table, "t.parquet")
    pq.write_to_dataset(table, "hive", partition_cols=["year"])
    stop_reads()
    start_reads()   # they existed before the recording: inputs
    assert pacsv.read_csv("t.csv").num_rows == 2
    assert pajson.read_json("t.jsonl").column("v").to_pylist() == [1, 2]
    assert feather.read_feather("t.feather").v.sum() == 3.0
    assert orc.ORCFile("t.orc").read().num_rows == 2
    assert pq.read_table("t.parquet", filesystem=LocalFileSystem()).num_rows == 2   # fsspec's, swapped for Arrow's
    assert pads.dataset("hive", partitioning="hive").to_table().num_rows == 2       # a folder: the files it found
    pq.write_table(table, "w.parquet")
    pads.write_dataset(table, "ds", format="parquet", partitioning=["year"])
    with open("other.csv", "wb") as f:   # a file object: Python's own open saw it, Arrow's doors leave it
        pacsv.write_csv(table, f)
    report = drain_reads()
    hive = sorted(os.path.relpath(e["abspath"]) for e in report["inputs"] if "hive" in e["abspath"])
    assert set(by_path(report)) == {"t.csv", "t.jsonl", "t.feather", "t.orc", "t.parquet", *hive}
    assert [os.path.dirname(h) for h in hive] == ["hive/year=2020", "hive/year=2021"]
    assert by_path(report)["t.csv"]["path"] == "t.csv" and by_path(report)["t.csv"]["sha256"] == file_sha256("t.csv")
    written = sorted(os.path.relpath(e["abspath"]) for e in report["outputs"])
    assert written == ["ds/2020/part-0.parquet", "ds/2021/part-0.parquet", "other.csv", "w.parquet"]
    assert report["problems"] == []


def test_a_file_is_snapshotted_from_its_read_on_not_from_the_next_drain(noting):
    """Its snapshot runs beside the cells, so the cell's end and the cluster's close do not wait for the disk."""
    data = os.urandom(1 << 20)
    (noting / "early.bin").write_bytes(data)
    stop_reads()
    start_reads()   # it existed before the recording: an input
    with open("early.bin", "rb") as f:
        assert f.read() == data
    deadline = time.monotonic() + 10
    while inputs._S.stats["passes"] == 0 and time.monotonic() < deadline:   # no drain meanwhile
        time.sleep(0.01)
    with open("early.bin", "r+b") as f:   # changed after its snapshot: what was read is recorded
        f.write(b"changed")
    report = drain_reads()
    assert [(e["path"], e["sha256"]) for e in report["inputs"]] == [("early.bin", hashlib.sha256(data).hexdigest())]
    assert report["problems"] == []
