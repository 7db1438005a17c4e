"""Recorded inputs served on replay where the workers read them, from any folder."""

import bz2
import hashlib
import os

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from julius_magics.cluster import capture, inputs, resubmit, serve
from julius_magics.errors import DataChangedError
from tests.support import capture_outputs, replay_outputs


def _cluster():
    return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")


def _record(folder):
    """Run a small notebook's work from ``folder`` with capture and input notes on; returns events, inputs, blobs."""
    os.chdir(folder)
    os.makedirs("raw")
    for i in range(3):
        pd.DataFrame({"g": list("abc") * 5, "x": np.arange(15.0) + i}).to_csv(f"raw/part{i}.csv", index=False)
    np.save("raw/w.npy", np.linspace(0, 1, 7))
    np.savetxt("raw/m.txt", np.eye(3))   # NumPy's text readers and bz2 open through an ``open`` of their own
    with bz2.open("raw/notes.bz2", "wt") as f:
        f.write("recorded")
    inputs.start_reads()
    with _cluster() as cluster, Client(cluster) as client:
        client.register_plugin(inputs.InputsWorkerPlugin(recording=True))
        capture.start_capture(client)
        frame = dd.read_csv("raw/*.csv", blocksize=200)
        sums = frame.groupby("g").x.sum().compute()
        weighted = dask.delayed(lambda p: float(np.load(p).sum()))("raw/w.npy").compute()
        weighted += dask.delayed(lambda p: float(np.loadtxt(p).sum()))("raw/m.txt").compute()
        weighted += dask.delayed(lambda p: len(bz2.open(p, "rt").read()))("raw/notes.bz2").compute()
        events = capture.drain_capture(client, final=True)
        reports = [inputs.drain_reads(), *client.run(inputs.drain_reads).values()]
    inputs.stop_reads()
    files = {}
    for report in reports:
        for entry in report["inputs"]:
            files.setdefault(entry["abspath"], entry)
    blobs = {}
    for entry in files.values():
        with open(entry["abspath"], "rb") as f:
            blobs[entry["sha256"]] = f.read()
    return events, list(files.values()), blobs, sums, weighted


def test_replay_from_another_folder_with_the_files_gone(tmp_path):
    here = os.getcwd()
    try:
        recorded = tmp_path / "project"
        recorded.mkdir()
        events, files, blobs, sums, weighted = _record(recorded)
        assert sorted(os.path.relpath(f["abspath"], recorded) for f in files) == [
            "raw/m.txt", "raw/notes.bz2", "raw/part0.csv", "raw/part1.csv", "raw/part2.csv", "raw/w.npy"]
        assert {f["path"] for f in files} >= {"raw/w.npy"}   # the relative path, as the task wrote it
        for name in os.listdir(recorded / "raw"):
            os.unlink(recorded / "raw" / name)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        os.chdir(elsewhere)
        graphs = [e for e in events if e["kind"] == "graph"]
        with _cluster() as cluster, Client(cluster) as client:
            served = serve.serve_inputs(client, files, blobs.__getitem__)
            assert {s["status"] for s in served} == {"missing: served from recording"}
            for event in graphs:
                assert resubmit.replay_graph(client, event) == event["fingerprints"]
        assert not os.listdir(elsewhere)   # nothing written where the replay ran
    finally:
        os.chdir(here)
        serve.install_redirect([])


def test_hash_only_recording_refuses_a_changed_file_by_name(tmp_path):
    data = tmp_path / "in.txt"
    data.write_text("recorded")
    entry = {"path": str(data), "abspath": str(data), "cwd": str(tmp_path), "size": data.stat().st_size,
             "sha256": hashlib.sha256(b"recorded").hexdigest()}
    data.write_text("changed!")
    with _cluster() as cluster, Client(cluster) as client:
        with pytest.raises(DataChangedError, match=r"in\.txt is changed in the kernel .*--data hash"):
            serve.serve_inputs(client, [entry], lambda sha: b"", embedded=False)
        # embedded: served, and every worker reads the recorded bytes at the recorded path
        served = serve.serve_inputs(client, [entry], {entry["sha256"]: b"recorded"}.__getitem__)
        assert served[0]["status"] == "changed: served from recording"
        assert set(client.run(lambda p=str(data): open(p).read()).values()) == {"recorded"}
    serve.install_redirect([])


def test_outputs_go_to_the_sandbox_and_are_compared(tmp_path):
    def write(client):
        frame = dd.from_pandas(pd.DataFrame({"x": range(20)}), npartitions=2)
        frame.to_csv("out/part-*.csv", index=False)
        dask.delayed(lambda: open("note.txt", "w").write("done"))().compute()
        dask.delayed(lambda: np.savetxt("table.txt", np.eye(2)))().compute()   # NumPy's own ``open``

    here = os.getcwd()
    project = tmp_path / "project"
    project.mkdir()
    os.chdir(project)
    try:
        graphs, outputs = capture_outputs(write, kernel_too=True)
        assert sorted(o["path"] for o in outputs) == sorted([str(project / "out" / "part-0.csv"),
                                                             str(project / "out" / "part-1.csv"), "note.txt", "table.txt"])
        before = {p: (project / p).read_bytes() for p in ("out/part-0.csv", "out/part-1.csv", "note.txt", "table.txt")}
        for p in before:
            (project / p).write_text("the user's own edit")
        sandbox = tmp_path / "sandbox"
        compared = replay_outputs(graphs, outputs, sandbox, kernel_too=True)
        assert all(c["same"] for c in compared), compared
        assert all(c["sandbox"].startswith(str(sandbox)) for c in compared)
        assert (project / "note.txt").read_text() == "done"   # while replaying, the replay's own output
        serve.stop_serving()   # the replay is over: the user's own files
        assert {p: (project / p).read_text() for p in before} == {p: "the user's own edit" for p in before}
    finally:
        os.chdir(here)
        serve.install_output_sandbox([], None)


def test_workers_sharing_the_kernels_cache_are_served_from_its_streamed_copy(tmp_path):
    data = os.urandom(3000)   # new bytes: no copy of them in the cache yet
    path = tmp_path / "gone.bin"
    entry = {"path": str(path), "abspath": str(path), "cwd": str(tmp_path), "size": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}
    copied = []

    def copy_blob(sha, target):   # as Recording.blob_to_file: the file appears whole, verified
        copied.append(sha)
        with open(f"{target}.tmp", "wb") as f:
            f.write(data)
        os.replace(f"{target}.tmp", target)

    def never(sha):
        raise AssertionError("the blob's bytes were read whole: every process here sees the kernel's copy")

    try:
        with _cluster() as cluster, Client(cluster) as client:
            served = serve.serve_inputs(client, [entry], never, copy_blob=copy_blob)
            assert served[0]["status"] == "missing: served from recording"
            assert sorted(served[0]["where"]) == sorted(["kernel", *client.run(lambda: 0)])
            assert copied == [entry["sha256"]]
            read = client.run(lambda p=str(path): hashlib.sha256(open(p, "rb").read()).hexdigest())
            assert set(read.values()) == {entry["sha256"]}
    finally:
        serve.install_redirect([])


def test_a_relative_path_read_in_two_folders_means_the_file_its_own_kind_of_reader_read(tmp_path):
    # the kernel read sub/x.txt as "x.txt" after a chdir; a worker read x.txt as "x.txt" from the parent
    (tmp_path / "sub").mkdir()
    entries = []
    for folder, text, reader in ((tmp_path / "sub", "sub-level\n", "kernel"), (tmp_path, "top\n", "tcp://10.0.0.7:4001")):
        (folder / "x.txt").write_text(text)
        entries.append({"path": "x.txt", "abspath": str(folder / "x.txt"), "cwd": str(folder), "size": len(text),
                        "sha256": hashlib.sha256(text.encode()).hexdigest(), "reader": reader})
    try:
        for worker, meant in ((False, "sub-level\n"), (True, "top\n")):
            serve.install_redirect(entries, worker=worker)
            with open("x.txt") as f:   # from this test's own folder, where there is no x.txt
                assert f.read() == meant
    finally:
        serve.install_redirect([])
