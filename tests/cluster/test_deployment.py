"""A real deployment: ``dask scheduler`` + two ``dask worker`` processes, each in its own mount namespace.

Each worker sees input files on a private tmpfs that the kernel cannot see (as
workers on other hosts do).  The notebook's ``Client(address)`` is adopted, the
files are recorded where the workers read them and their bytes come back through
Dask; the deployment is torn down; a fresh one whose workers have no files
replays the graphs with the files served from the recording: same fingerprints.
"""

import os

import dask
import pandas as pd
import pytest
from distributed import Client

from julius_magics.cluster import resubmit, serve
from julius_magics.cluster.watch import ClusterWatch
from tests.support import UNSHARE_REASON, WRITE_CSV_PARTS, Deployment, unshare_works

pytestmark = pytest.mark.skipif(not unshare_works(), reason=UNSHARE_REASON)


def _read_sum(path):
    return int(pd.read_csv(path).x.sum())


def test_worker_only_files_recorded_and_served_on_a_fresh_deployment(tmp_path):
    private = tmp_path / "private"
    private.mkdir()
    paths = [str(private / "data" / f"part{i}.csv") for i in range(2)]
    watch = ClusterWatch()
    first = Deployment(private, WRITE_CSV_PARTS)
    try:
        watch.start()
        with Client(first.address) as client:   # the notebook's own client: adopted by the preload
            first.wait(client)
            assert not os.path.exists(paths[0])   # the kernel cannot see the workers' files
            total = dask.delayed(sum)([dask.delayed(_read_sum)(p) for p in paths]).compute()
            assert total == 45 + 55
            items = watch.drain()
            watch.stop()
            items += watch.drain(final=True)
            files = [e for i in items if i["kind"] == "files" for e in i["inputs"]]
            blobs = {e["sha256"]: watch.file_bytes(e) for e in files}
    finally:
        watch.stop()
        first.stop()
    assert sorted(e["abspath"] for e in files) == paths
    assert all(e["reader"].startswith("tcp://") for e in files)
    graphs = [i for i in items if i["kind"] == "graph"]
    assert len(graphs) == 1 and graphs[0]["fingerprints"]
    [cluster] = [i for i in items if i["kind"] == "cluster"]
    assert cluster["spec"]["n_workers"] == 2 and cluster["spec"]["cluster"] is None

    second = Deployment(private)
    try:
        with Client(second.address) as client:
            second.wait(client)
            served = serve.serve_inputs(client, files, blobs.__getitem__)
            assert {s["status"] for s in served} == {"missing: served from recording"}
            assert resubmit.replay_graph(client, graphs[0]) == graphs[0]["fingerprints"]
    finally:
        second.stop()
        serve.install_redirect([])
