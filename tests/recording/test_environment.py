"""Environment capture: complete, comparable, and never carrying secrets."""

import json
import os
import platform

import pytest
from distributed import Client, LocalCluster

CANARY_TOKEN = "canary-7f3e9b2c41d8"
CANARY_PASSWORD = "hunter2-canary-pw"
# Workers inherit the environment of the process that starts them.
os.environ["JULIUS_CANARY_TOKEN"] = CANARY_TOKEN
os.environ["MY_PASSWORD"] = CANARY_PASSWORD
os.environ["DASK_JULIUS_API_KEY"] = "dask-secret-key-value"

import dask  # noqa: E402

from julius_magics.recording.environment import (  # noqa: E402
    capture_environment, cluster_environments, env_diff, format_env_diff, requirements,
)


def assert_no_secret(env):
    text = json.dumps(env)
    for secret in (CANARY_TOKEN, CANARY_PASSWORD, "dask-secret-key-value", "s3cr3t-url-pw"):
        assert secret not in text
    assert "JULIUS_CANARY_TOKEN" not in text and "MY_PASSWORD" not in text


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def test_kernel_environment_is_complete_and_clean(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with dask.config.set({"julius-test": {"password": "plain", "store": "s3://me:s3cr3t-url-pw@host/bucket", "n": 3}}):
        env = capture_environment()
    assert env["python"]["version"] == platform.python_version()
    assert env["os"]["system"] == platform.system()
    assert env["cpu"]["count"] == os.cpu_count() and env["cpu"]["model"]
    assert env["memory"]["total"] > 2**20
    assert env["packages"]["dask"] == dask.__version__
    assert env["packages"]["distributed"] == "2026.8.0"
    assert env["env_vars"]["OMP_NUM_THREADS"] == "1"
    assert env["dask_config"]["julius-test"]["password"] == "<redacted>"
    assert env["dask_config"]["julius-test"]["n"] == 3
    assert env["dask_config"]["julius-test"]["store"] == "s3://me:<redacted>@host/bucket"
    assert "PATH" not in env["env_vars"]
    assert_no_secret(env)
    assert json.loads(json.dumps(env)) == env  # JSON-able


def test_worker_environments_are_clean(client):
    envs = cluster_environments(client)
    assert sorted(envs) == sorted(client.scheduler_info()["workers"])
    for env in envs.values():
        assert env["packages"]["distributed"] == "2026.8.0"
        assert env["python"]["version"] == platform.python_version()
        assert_no_secret(env)


def test_env_diff_and_format():
    recorded = capture_environment()
    same = env_diff(recorded, json.loads(json.dumps(recorded)))
    assert same["same"] is True and format_env_diff(same) == "same environment"
    current = json.loads(json.dumps(recorded))
    current["python"]["version"] = "3.99.0"
    current["packages"]["numpy"] = "0.0.1"
    current["packages"]["newpkg"] = "1.0"
    del current["packages"]["dask"]
    current["dask_config"].setdefault("distributed", {})["julius-extra"] = 5
    current["cpu"]["count"] = 512
    diff = env_diff(recorded, current)
    assert diff["same"] is False
    assert diff["python"] == {"version": [recorded["python"]["version"], "3.99.0"]}
    assert diff["packages"] == {
        "added": {"newpkg": "1.0"},
        "removed": {"dask": recorded["packages"]["dask"]},
        "changed": {"numpy": [recorded["packages"]["numpy"], "0.0.1"]},
    }
    assert diff["dask_config"]["added"] == {"distributed.julius-extra": 5}
    assert diff["machine"]["count"] == [recorded["cpu"]["count"], 512]
    text = format_env_diff(diff).splitlines()
    assert f"python version: {recorded['python']['version']} -> 3.99.0" in text
    assert "package added: newpkg 1.0" in text
    assert f"package changed: numpy {recorded['packages']['numpy']} -> 0.0.1" in text
    assert f"package removed: dask {recorded['packages']['dask']}" in text
    machine_only = json.loads(json.dumps(recorded))
    machine_only["memory"]["total"] = 1
    assert env_diff(recorded, machine_only)["same"] is True


def test_requirements():
    env = capture_environment()
    lines = requirements(env).splitlines()
    assert lines[0] == f"# python {platform.python_version()}"
    assert f"dask=={dask.__version__}" in lines
    assert "distributed==2026.8.0" in lines
    names = [line.split("==")[0] for line in lines[1:]]
    assert names == sorted(env["packages"]) and len(lines) == len(env["packages"]) + 1
