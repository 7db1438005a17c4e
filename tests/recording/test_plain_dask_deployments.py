"""Plain Dask notebooks on other deployments, recorded unchanged and replayed by the ``julius`` command line.

- ``Client("tcp://...")`` to a ``LocalCluster`` that another process started;
- a real multi-process deployment (``dask scheduler`` + two ``dask worker``\\ s, each
  in its own mount namespace with files the kernel cannot see), recorded through
  ``%cluster connect`` and replayed on a fresh deployment whose workers have no files
  (``--address``) and on a LocalCluster;
- ``s3://`` inputs on an S3-protocol server (moto): recorded by ETag, a changed
  object is named, and with ``--data embed-remote`` its recorded bytes are served.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
from distributed import Client

from julius_magics.recording import steps
from julius_magics.recording.store import Store
from tests.cluster.test_inputs_s3 import BUCKET, s3  # noqa: F401  (the moto server fixture)
from tests.recording.store_contract import free_port, wait_for_port
from tests.recording.test_plain_dask import NOTEBOOK, _project
from tests.support import (UNSHARE_REASON, WRITE_CSV_PARTS, Deployment, julius, record_cells, replayed_verified, run,
                           unshare_works)

pytestmark = pytest.mark.usefixtures("fresh_session")

# test_plain_dask's notebook, its client connected to a scheduler that another process runs
CONNECTED = (NOTEBOOK.replace('cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, '
                              'dashboard_address=":0")\nclient = Client(cluster)', 'client = Client("{address}")')
             .replace("cluster.close()\n", ""))
assert "LocalCluster(" not in CONNECTED and "{address}" in CONNECTED

CLUSTER_PROCESS = """
import sys, time
from distributed import LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       scheduler_port=int(sys.argv[1]), dashboard_address=":0")
time.sleep(3600)
"""


@pytest.fixture
def cluster_process(tmp_path):
    """A LocalCluster of 2 workers started by another process (in ``tmp_path/project``): its address."""
    port = free_port()
    project = tmp_path / "project"
    _project(project)
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER_PROCESS, str(port)], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, timeout=60)
        address = f"tcp://127.0.0.1:{port}"
        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _inputs(rec):
    return [f for s in rec.steps for f in steps.input_files(s)]


def test_client_to_a_cluster_of_another_process_recorded_unchanged_and_replayed_from_elsewhere(
        cluster_process, ip, tmp_path, monkeypatch):
    project, store = tmp_path / "project", tmp_path / "store"
    monkeypatch.chdir(project)
    record_cells(ip, "connected", store, [CONNECTED.format(address=cluster_process)])
    assert ip.user_ns["weights"] == pytest.approx(5.5) and ip.user_ns["total"] == 1200.0
    assert ip.user_ns["by_group"].to_dict() == {"a": 270.0, "b": 306.0, "c": 342.0}

    rec = Store(store).open("connected")
    assert rec.info.status == "complete" and "partial" not in rec.meta
    [cluster] = [s for s in rec.steps if s.kind == "adopted_cluster"]
    assert cluster.data["spec"]["address"] == cluster_process and cluster.data["spec"]["n_workers"] == 2
    files = _inputs(rec)
    assert {os.path.relpath(f["abspath"], project) for f in files} == {"raw/p0.csv", "raw/p1.csv", "raw/p2.csv",
                                                                        "data/w.npy"}
    assert {(f["path"], f["cwd"]) for f in files if f["reader"].startswith("tcp://")} >= {("data/w.npy", str(project))}
    assert all(f["embedded"] for f in files)

    shutil.rmtree(project / "raw")
    shutil.rmtree(project / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for workers in ("1", "3"):
        assert replayed_verified(store, "connected", "-n", workers, cwd=elsewhere) == 17
    assert list(elsewhere.iterdir()) == []


DEPLOYED = """
import dask
import pandas as pd

def read_sum(path):
    return int(pd.read_csv(path).x.sum())

total = dask.delayed(sum)([dask.delayed(read_sum)(f"{folder}/data/part{{i}}.csv") for i in range(2)]).compute()
"""
REMOTE_READ = """%%remote_eval
with open("{folder}/data/part1.csv") as f:
    header = f.readline().strip()
print(f"header={{header}}")
"""


@pytest.mark.skipif(not unshare_works(), reason=UNSHARE_REASON)
def test_a_deployment_with_worker_only_files_recorded_and_replayed_on_a_fresh_one_and_on_a_local_cluster(
        ip, tmp_path, monkeypatch, capsys):
    private, store = tmp_path / "private", tmp_path / "store"
    private.mkdir()
    monkeypatch.chdir(tmp_path)
    with Deployment(private, WRITE_CSV_PARTS) as first:
        with Client(first.address) as client:   # before recording: the workers are up when %cluster connect counts
            first.wait(client)
        assert os.listdir(private) == []   # the kernel cannot see the workers' files
        record_cells(ip, "deployed", store, [f"%cluster connect {first.address}", REMOTE_READ.format(folder=private),
                                             DEPLOYED.format(folder=private)])
        run(ip, "%cluster stop")
    assert ip.user_ns["total"] == 45 + 55
    assert capsys.readouterr().out.count("header=x") == 2   # each worker read its own file

    rec = Store(store).open("deployed")
    assert rec.info.status == "complete" and "partial" not in rec.meta
    kinds = [s.kind for s in rec.steps]
    assert "remote_eval" in kinds and kinds.count("graph") == 1
    files = _inputs(rec)
    assert {f["abspath"] for f in files} == {f"{private}/data/part0.csv", f"{private}/data/part1.csv"}
    assert all(f["reader"].startswith("tcp://") and f["embedded"] for f in files)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with Deployment(private) as fresh:   # its workers have no files
        with Client(fresh.address) as client:
            fresh.wait(client)
        results = replayed_verified(store, "deployed", "--address", fresh.address, cwd=elsewhere)
    assert results == 1
    assert replayed_verified(store, "deployed", cwd=elsewhere) == 1   # on a LocalCluster of the recorded shape


S3_NOTEBOOK = """
import dask.dataframe as dd
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
total = float(dd.read_csv("{url}").x.sum().compute())
client.close()
cluster.close()
"""


def test_s3_inputs_recorded_by_etag_a_changed_object_named_and_embedded_bytes_served(
        s3, ip, tmp_path, monkeypatch):  # noqa: F811
    client, _ = s3
    endpoint = client.meta.endpoint_url
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)   # how s3fs finds the server, in the kernel, its workers and `julius`
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    url = f"s3://{BUCKET}/e2e/a.csv"
    body = pd.DataFrame({"x": [1.0, 2.0, 3.5]}).to_csv(index=False).encode()
    client.put_object(Bucket=BUCKET, Key="e2e/a.csv", Body=body)
    cell = S3_NOTEBOOK.format(url=url)
    record_cells(ip, "s3-hash", store, [cell])
    record_cells(ip, "s3-embedded", store, [cell], options="--data embed-remote")
    assert ip.user_ns["total"] == 6.5

    recorded = {}
    for name in ("s3-hash", "s3-embedded"):
        rec = Store(store).open(name)
        assert rec.info.status == "complete" and "partial" not in rec.meta
        recorded[name] = [f for s in rec.steps if s.kind == "remote_inputs" for f in s.data["files"]]
        assert {f["url"] for f in recorded[name]} == {url}
        assert all(f["etag"] and f["size"] == len(body) for f in recorded[name])
    assert not any(f.get("blob") for f in recorded["s3-hash"])
    assert {f["blob"] for f in recorded["s3-embedded"]} == {hashlib.sha256(body).hexdigest()}

    client.put_object(Bucket=BUCKET, Key="e2e/a.csv", Body=b"x\n100\n")   # the object changes
    refused = julius(store, "replay", "s3-hash", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout + refused.stderr
    [line] = refused.stderr.splitlines()   # no progress bar where nobody watches: the error, one line
    assert line.startswith(f"julius replay: remote input {url} is changed") and "--data embed-remote" in line
    assert replayed_verified(store, "s3-embedded", cwd=tmp_path) == 1
