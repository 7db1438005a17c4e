"""Adoption of the notebook's own clients (client preload), cluster specs, worker-side input files."""

import os

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster

from julius_magics.cluster import adopt, capture, inputs
from julius_magics.cluster.adopt import (
    ThreadpoolLimits, adopt_existing, describe_cluster, disable_adoption, enable_adoption,
)
from julius_magics.fingerprint import fingerprint


@pytest.fixture
def adopted():
    """Adoption on for one test; the list fills with what the preload adopted."""
    seen = []
    enable_adoption(seen.append)
    yield seen
    disable_adoption()


def test_notebook_cluster_and_client_are_adopted(adopted):
    assert adopt.PRELOAD in dask.config.get("distributed.client.preload")
    # what a notebook does: no julius call, no plugin passed
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        assert [(a.client, a.captured) for a in adopted] == [(client, True)]
        total = client.submit(sum, [1, 2, 3]).result()
        events = capture.drain_capture(client, final=True)
        [graph] = [e for e in events if e["kind"] == "graph"]
        assert list(graph["fingerprints"].values()) == [fingerprint(total)]
        spec = describe_cluster(client)
        assert (spec["n_workers"], spec["threads_per_worker"], spec["processes"], spec["nanny"]) == (2, 1, True, True)
        assert spec["cluster"] == "LocalCluster" and spec["address"] == cluster.scheduler_address
        assert spec["memory_limit"] > 0
        for worker in spec["workers"].values():
            assert worker["pid"] != os.getpid() and worker["cwd"] == os.getcwd()
            assert worker["threadpools"]["blas"] == 1   # the nanny sets one BLAS thread
        # a second client to the same scheduler, by address, is adopted too
        with Client(cluster.scheduler_address, set_as_default=False) as second:
            assert adopted[-1].client is second and adopted[-1].captured
            assert second.submit(lambda: 7, pure=False).result() == 7
            events = capture.drain_capture(second, final=True)
            assert [e["client"] for e in events if e["kind"] == "graph"] == [second.id]
    disable_adoption()
    assert adopt.PRELOAD not in (dask.config.get("distributed.client.preload") or [])


QUIET_CLIENT = """
from distributed import Client
from julius_magics.cluster.adopt import enable_adoption

enable_adoption(lambda adopted: print("adopted", adopted.captured))
with Client(n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
    print(client.submit(sum, [1, 2]).result())
"""


def test_adopting_a_client_prints_nothing_on_stderr():
    # a process of its own: Dask's logging writes to the stderr it found at import, which pytest replaces
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", QUIET_CLIENT], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["adopted", "True", "3"], run.stderr
    assert "julius_magics" not in run.stderr   # distributed.preloading's INFO lines about its preload


def test_threads_cluster_spec_and_threadpool_limits():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        spec = describe_cluster(client)
        assert spec["processes"] is False and spec["threads_per_worker"] == 2
        kernel_blas = spec["kernel"]["threadpools"]["blas"]
        assert list(spec["workers"].values())[0]["threadpools"]["blas"] == kernel_blas
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.register_plugin(ThreadpoolLimits(blas=2))
        counts = client.run(adopt.threadpool_counts)
        assert [c["blas"] for c in counts.values()] == [2]


def test_clients_made_before_are_adopted(tmp_path):
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        seen = []
        [adopted] = [a for a in adopt_existing(seen.append) if a.client is client]
        assert adopted.captured and seen[-1] is adopted
        assert client.submit(lambda: 3, pure=False).result() == 3
        assert [e["kind"] for e in capture.drain_capture(client, final=True)] == ["graph"]
        capture.stop_capture(client)


def test_scheduler_refusing_plugins_warns_in_one_line(adopted, capfd):
    async def refuse(*args, **kwargs):
        raise PermissionError("scheduler plugins are not allowed on this deployment")

    with LocalCluster(n_workers=1, processes=True, dashboard_address=":0") as cluster:
        cluster.scheduler.handlers["register_scheduler_plugin"] = refuse   # as a locked-down scheduler does
        with Client(cluster):
            pass
    [refused] = adopted
    assert not refused.captured and "refused julius's capture plugin" in refused.reason
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("julius: warning:")]
    assert len(err) == 1 and "partial" in err[0]


def test_workers_report_what_they_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("data")
    np.save("data/x.npy", np.arange(6.0))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.register_plugin(inputs.InputsWorkerPlugin(recording=True))
        # a relative path inside delayed: read where the task runs
        total = dask.delayed(lambda p: float(np.load(p).sum()))("data/x.npy").compute()
        assert total == 15.0
        reports = client.run(inputs.drain_reads)
        seen = [(w, e) for w, r in reports.items() for e in r["inputs"]]
        assert len(seen) == 1
        worker, entry = seen[0]
        assert (entry["path"], entry["cwd"]) == ("data/x.npy", str(tmp_path))
        assert entry["sha256"] == inputs.file_sha256("data/x.npy") and entry["pid"] != os.getpid()
        data = client.submit(inputs.read_file_chunk, entry["abspath"], 0, None, entry["sha256"], workers=[worker],
                             pure=False).result()
        with open("data/x.npy", "rb") as f:
            assert data == f.read()
        client.register_plugin(inputs.InputsWorkerPlugin(recording=False))
        dask.delayed(lambda p: float(np.load(p).sum()))("data/x.npy").compute()
        assert all(r["inputs"] == [] for r in client.run(inputs.drain_reads).values())
