"""ClusterWatch: a notebook's own clusters, one after another, with their events and files."""

import os

import dask
import numpy as np
from distributed import Client, LocalCluster

from julius_magics.cluster.watch import ClusterWatch
from julius_magics.fingerprint import fingerprint


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
