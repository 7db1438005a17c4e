"""A real deployment: ``dask scheduler`` + two ``dask worker`` processes, each in its own mount namespace.

Each worker sees input files on a private tmpfs that the kernel cannot see (as
workers on other hosts do).  The notebook's ``Client(address)`` is adopted, the
files are recorded where the workers read them and their bytes come back through
Dask; the deployment is torn down; a fresh one whose workers have no files
replays the graphs with the files served from the recording: same fingerprints.
"""

import os
import shutil
import signal
import subprocess
import sys

import dask
import pandas as pd
import pytest
from distributed import Client

from julius_magics.cluster import resubmit, serve
from julius_magics.cluster.watch import ClusterWatch
from tests.recording.store_contract import free_port, wait_for_port


def _unshare_works():
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _unshare_works(), reason="needs root and `unshare --mount` (private tmpfs per worker)")

WRITE_FILES = """
import os, sys
import pandas as pd
folder = sys.argv[1]
os.makedirs(os.path.join(folder, "data"), exist_ok=True)
for i in range(2):
    pd.DataFrame({"x": range(i, i + 10)}).to_csv(os.path.join(folder, "data", f"part{i}.csv"), index=False)
"""


class Deployment:
    """A scheduler and workers started as separate processes (own sessions), stopped by process group."""

    def __init__(self, private, with_files):
        self.port = free_port()
        self.procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                        "--port", str(self.port), "--dashboard-address", ":0"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
        wait_for_port(self.port)
        for _ in range(2):
            setup = f"mkdir -p {private} && mount -t tmpfs none {private}"
            if with_files:
                setup += f" && {sys.executable} -c '{WRITE_FILES}' {private}"
            worker = (f"{setup} && exec {sys.executable} -m distributed.cli.dask_worker tcp://127.0.0.1:{self.port} "
                      f"--nworkers 1 --nthreads 1 --no-dashboard")
            self.procs.append(subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", worker],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                               start_new_session=True))
        self.address = f"tcp://127.0.0.1:{self.port}"

    def wait(self, client):
        client.wait_for_workers(2, timeout=60)

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _read_sum(path):
    return int(pd.read_csv(path).x.sum())


def test_worker_only_files_recorded_and_served_on_a_fresh_deployment(tmp_path):
    private = tmp_path / "private"
    private.mkdir()
    paths = [str(private / "data" / f"part{i}.csv") for i in range(2)]
    watch = ClusterWatch()
    first = Deployment(private, with_files=True)
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

    second = Deployment(private, with_files=False)
    try:
        with Client(second.address) as client:
            second.wait(client)
            served = serve.serve_inputs(client, files, blobs.__getitem__)
            assert {s["status"] for s in served} == {"missing: served from recording"}
            assert resubmit.replay_graph(client, graphs[0]) == graphs[0]["fingerprints"]
    finally:
        second.stop()
        serve.install_redirect([])
