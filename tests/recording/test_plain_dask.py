"""Dask notebooks recorded unchanged: their own clusters, files read anywhere, scatter, persist; replayed verified."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from julius_magics import recording
from julius_magics.cluster.session import Session
from julius_magics.recording.store import Store
from tests.support import graphs_sent

NOTEBOOK = '''
import dask, dask.array as da, dask.dataframe as dd, numpy as np
from distributed import Client, LocalCluster, wait

cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
frame = dd.read_csv("raw/*.csv", blocksize=300)
by_group = frame.groupby("g").x.sum().compute()
weights = dask.delayed(lambda p: float(np.load(p).sum()))("data/w.npy").compute()
[table] = client.scatter([np.arange(12.0).reshape(3, 4)])
scaled = client.gather(client.map(lambda t, i: float((t * i).sum()), [table] * 4, range(4)))
chunks = da.ones((40, 10), chunks=(4, 10)).map_blocks(lambda b: b * 2).persist()
wait(chunks)
total = float((chunks + 1).sum().compute())
client.close()
cluster.close()
'''


def _project(folder):
    os.makedirs(folder / "raw")
    os.makedirs(folder / "data")
    for i in range(3):
        pd.DataFrame({"g": list("abc") * 6, "x": np.arange(18.0) * (i + 1)}).to_csv(folder / "raw" / f"p{i}.csv",
                                                                                       index=False)
    np.save(folder / "data" / "w.npy", np.linspace(0, 1, 11))


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def test_notebook_with_its_own_cluster_recorded_unchanged_and_replayed_from_elsewhere(tmp_path, store, monkeypatch,
                                                                                      capsys):
    project = tmp_path / "project"
    _project(project)
    monkeypatch.chdir(project)
    recorder = recording.start(Session(), "notebook", store=store)
    namespace = {}
    exec(compile(NOTEBOOK, "<notebook>", "exec"), namespace)
    recorder.add_cell(NOTEBOOK)
    info = recording.stop()
    printed = capsys.readouterr().out
    assert info.status == "complete"
    assert namespace["weights"] == pytest.approx(5.5) and namespace["total"] == 1200.0
    rec = store.open("notebook")
    kinds = [s.kind for s in rec.steps]
    assert kinds[0] == "adopted_cluster" and "environment" in kinds and "scatter" in kinds
    assert graphs_sent(rec) == 5
    files = [f for s in rec.steps if s.kind == "inputs" for f in s.data["files"]]
    assert {(f["path"], f["cwd"]) for f in files if f["reader"] != "kernel"} >= {("data/w.npy", str(project))}
    assert {os.path.relpath(f["abspath"], project) for f in files} == {"raw/p0.csv", "raw/p1.csv", "raw/p2.csv",
                                                                        "data/w.npy"}
    assert all(f["embedded"] for f in files)
    assert "partial" not in rec.meta
    assert "Captured: 1 cluster(s)" in printed and "warning" not in printed
    assert ", 4 input file(s), " in printed   # raw/p0.csv, read by the kernel and a worker, is one
    spec = rec.steps[0].data["spec"]
    assert (spec["n_workers"], spec["threads_per_worker"], spec["processes"]) == (2, 1, True)

    shutil.rmtree(project / "raw")
    shutil.rmtree(project / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for workers in (1, 3):
        report = recording.replay("notebook", store=store, n_workers=workers)
        assert report.verified, report.summary()
        assert report.results == 17   # 1 + 1 + 4 mapped + 10 persisted chunks + 1
        assert {d["status"] for d in report.data} == {"missing: served from recording"}
    assert os.listdir(elsewhere) == []


def test_recording_with_nothing_captured_says_so(tmp_path, store, capsys):
    recorder = recording.start(Session(), "empty", store=store)
    recorder.add_cell("x = 1")
    recording.stop()
    out = capsys.readouterr().out
    assert "Captured: 0 cluster(s), 0 graph(s), 0 result(s)" in out
    assert "julius: warning: nothing reached a Dask cluster" in out


def test_a_compute_on_the_local_scheduler_makes_the_recording_partial_and_list_and_show_say_no_cluster(store, capsys):
    from julius_magics.recording import recordings_table
    from julius_magics.recording.summary import details, format_details
    from tests.support import record_notebook

    namespace, info = record_notebook(store, "local", "import dask\nlocal = dask.delayed(sum)([1, 2]).compute()")
    assert namespace["local"] == 3
    assert info.status == "partial" and info.workers is None
    assert "local compute dask.compute without a Client: it ran on Dask's local scheduler" in capsys.readouterr().out
    [step] = [s for s in store.open("local").steps if s.kind == "unreproducible"]
    assert step.data["what"] == "local compute"
    shown = format_details(details("local", store)).splitlines()[0]
    assert shown.startswith("local: partial, ") and ", no cluster, created " in shown
    row = recordings_table(store).set_index("name").loc["local"]
    assert row["status"] == "partial" and row["workers"] is pd.NA and row["signed by"] == "you"
    assert " <NA> " in recordings_table(store).to_string(index=False)   # not NaN, nor 2.0 for a count


def test_a_scheduler_refusing_the_plugin_makes_the_recording_partial_never_verified(tmp_path, store, capfd):
    from distributed import Client, LocalCluster

    async def refuse(*args, **kwargs):
        raise PermissionError("scheduler plugins are not allowed on this deployment")

    recording.start(Session(), "locked", store=store)
    with LocalCluster(n_workers=1, processes=True, dashboard_address=":0") as cluster:
        cluster.scheduler.handlers["register_scheduler_plugin"] = refuse
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2], pure=False).result() == 3
    recording.stop()
    out, err = capfd.readouterr()
    assert len([line for line in err.splitlines() if line.startswith("julius: warning:")]) == 1
    assert "the recording is partial" in out
    rec = store.open("locked")
    assert rec.meta["partial"] and "refused julius's capture plugin" in rec.meta["partial_reasons"][0]
    report = recording.replay("locked", store=store)
    assert not report.verified and "partial" in report.summary()


def test_the_end_of_the_cell_that_made_a_cluster_does_not_wait_for_the_environments(tmp_path, store, monkeypatch):
    """The environments are taken in the background; their step comes at a later drain, with every worker's."""
    import threading
    import time

    from julius_magics.recording import environment, recorder as recorder_module

    let_go = str(tmp_path / "let-go")   # a file, not an Event: the workers' copy of the function is a pickle

    def held_environment():   # the kernel's, and the workers' (a slow environment, as on a big install)
        deadline = time.monotonic() + 60
        while not os.path.exists(let_go) and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"python": {"version": "3.11"}, "pid": os.getpid()}

    monkeypatch.setattr(environment, "capture_environment", held_environment)
    monkeypatch.setattr(recorder_module, "capture_environment", held_environment)
    cell = ("from distributed import Client, LocalCluster\n"
            "cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=':0')\n"
            "client = Client(cluster)")
    namespace = {}
    recorder = recording.start(Session(), "held", store=store)
    try:
        exec(cell, namespace)
        cell_end = threading.Thread(target=recorder.add_cell, args=(cell,))
        cell_end.start()
        cell_end.join(30)
        assert not cell_end.is_alive(), "the cell's end waited for the environments"
        recorder.writer.sync()
        kinds = [s.kind for s in store.open("held").steps]
        assert "adopted_cluster" in kinds and "environment" not in kinds
    finally:
        open(let_go, "w").close()
    assert namespace["client"].submit(sum, [1, 2]).result() == 3
    recording.stop()
    namespace["client"].close()
    namespace["cluster"].close()
    steps = store.open("held").steps
    [cluster] = [s for s in steps if s.kind == "adopted_cluster"]
    [environment] = [s.data for s in steps if s.kind == "environment"]
    assert sorted(environment["workers"]) == sorted(cluster.data["spec"]["workers"]) and len(environment["workers"]) == 2
    assert environment["kernel"] in store.open("held").blobs
    assert store.open("held").meta.get("partial") is not True
