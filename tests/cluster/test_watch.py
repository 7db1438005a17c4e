"""ClusterWatch: a notebook's own clusters, one after another, with their events and files."""

import os
import sys

import dask
import distributed
import numpy as np
from distributed import Client, LocalCluster

from julius_magics.cluster.watch import ClusterWatch
from julius_magics.fingerprint import fingerprint
from julius_magics.recording.environment import capture_environment
from julius_magics.recording.journal import BLOBS
from julius_magics.recording.store import Store


def test_two_clusters_in_turn_with_their_graphs_and_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save("w.npy", np.arange(4.0))
    (tmp_path / "store").mkdir()
    watch = ClusterWatch(skip=[tmp_path / "store"])
    watch.start()
    try:
        items = []
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            value = dask.delayed(lambda p: float(np.load(p).sum()))("w.npy").compute()
            [scattered] = client.scatter([np.ones(3)])
            doubled = client.submit(lambda a: a * 2, scattered).result()
            items += watch.drain()
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            with open("w.npy", "rb") as f:   # read in the kernel
                f.read(1)
            assert client.submit(sum, [1, 2], pure=False).result() == 3
            items += watch.drain()
            watch.stop()
            items += watch.drain(final=True)
    finally:
        watch.stop()
    clusters = [i for i in items if i["kind"] == "cluster"]
    assert [(c["spec"]["n_workers"], c["spec"]["threads_per_worker"], c["spec"]["processes"]) for c in clusters] == [
        (2, 1, True), (1, 2, False)]
    graphs = [i for i in items if i["kind"] == "graph"]
    fps = {k: fp for g in graphs for k, fp in g["fingerprints"].items()}
    assert fingerprint(value) in fps.values() and fingerprint(3) in fps.values()
    assert fingerprint(doubled) in fps.values()
    [scatter] = [i for i in items if i["kind"] == "scatter"]
    assert len(scatter["values"]) == 1
    files = [e for i in items if i["kind"] == "files" for e in i["inputs"]]
    readers = sorted("kernel" if e["reader"] == "kernel" else "worker" for e in files)
    assert readers == ["kernel", "worker"]
    assert {e["path"] for e in files} == {"w.npy"}
    worker_entry = next(e for e in files if e["reader"] != "kernel")
    assert worker_entry["cwd"] == str(tmp_path)
    assert not [i for i in items if i["kind"] == "dropped"]
    assert os.listdir(tmp_path / "store") == []


def heavy_modules():
    return sorted(m for m in ("jsonschema", "julius_magics.recording.environment", "fsspec", "traitlets",
                              "julius_magics.rules", "julius_magics.server") if m in sys.modules)


def test_a_cluster_closed_at_once_keeps_its_shape_and_environments_and_its_workers_import_only_what_they_use(tmp_path):
    """The workers' environments are taken in the background from the adoption on (``Client()`` does not wait
    for them), so a notebook that closes its cluster before any drain must still leave them, through the close.
    The workers unpickle parts of the recording layer (the sink, the environment): importing it must not
    build the recording's validators there (jsonschema's import and the schemas took each worker 0.1 s).
    Nor may capture import what the notebook's tasks do not: fsspec (its hook waits for fsspec's import, and
    the sink the workers store input files with writes without it: 8 - 20 ms of each worker's adoption) and
    traitlets (the server's config, 5 ms), nor the rules that ``julius_magics`` offers (NumPy's random module,
    13 ms)."""
    store = Store(str(tmp_path / "store"))
    watch = ClusterWatch(skip=[tmp_path], worker_environment=capture_environment,
                         sink=store.files.blob_sink(store.files.path(BLOBS)))
    watch.start()
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            imported = client.run(heavy_modules)
        watch.stop()
        items = watch.drain(final=True)
    finally:
        watch.stop()
    [item] = [i for i in items if i["kind"] == "cluster"]
    assert item["spec"]["n_workers"] == 2 and sorted(item["environments"]) == sorted(item["spec"]["workers"])
    for env in item["environments"].values():
        assert env["packages"]["distributed"] == distributed.__version__
    assert list(imported.values()) == [["julius_magics.recording.environment"]] * 2


def test_a_cluster_with_the_workers_it_was_adopted_with_is_described_as_it_was_adopted(tmp_path):
    """The spec taken at the adoption (in the background) is the cluster step's while the cluster keeps its
    workers: the first drain does not ask every worker again (that took the end of the cell that made the
    cluster 20 - 35 ms). Workers that joined later are ``worker_joined`` events, with their environments
    (a cluster whose workers joined after its client connected is described anew: ``test_deployment``)."""
    watch = ClusterWatch(skip=[tmp_path], worker_environment=capture_environment)
    watch.start()
    try:
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            [adopted] = watch.clients.values()
            client.sync(adopted.set_up)
            items = watch.drain()
            cluster.scale(2)
            client.wait_for_workers(2)
            watch.stop()
            items += watch.drain(final=True)
    finally:
        watch.stop()
    [item] = [i for i in items if i["kind"] == "cluster"]
    assert item["spec"] is adopted.extra["spec"] and item["spec"]["n_workers"] == 1
    [joined] = [i for i in items if i["kind"] == "worker_joined"]
    assert joined["workers"] == 2 and joined["worker"] not in item["spec"]["workers"]
    assert joined["environment"]["packages"]["distributed"] == distributed.__version__
