"""Environment capture: complete, comparable, and never carrying secrets."""

import json
import os
import platform
import random
import re
import shutil
import string

import pytest
from distributed import Client, LocalCluster

CANARY_TOKEN = "canary-7f3e9b2c41d8"
CANARY_PASSWORD = "hunter2-canary-pw"
CANARY_ENV = {"JULIUS_CANARY_TOKEN": CANARY_TOKEN, "MY_PASSWORD": CANARY_PASSWORD,
              "DASK_JULIUS_API_KEY": "dask-secret-key-value"}

import dask  # noqa: E402

from julius_magics.recording.environment import (  # noqa: E402
    capture_environment, cluster_environments, env_diff, format_env_diff,
)


@pytest.fixture(autouse=True, scope="module")
def _canary_environment():
    """Secrets in this process's environment while the module runs (workers inherit it), and only then:
    set at import time, they would reach every process the rest of the run starts."""
    old = {k: os.environ.get(k) for k in CANARY_ENV}
    os.environ.update(CANARY_ENV)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v

# The canaries of issue 9 (finding 6): each leaked into a stored environment blob once.
ISSUE_CANARIES = {
    "token as a URL's user name": ("https://{c}@git.example.com/repo.git", "ghp-canary-user-token"),
    "URL password holding @": ("s3://me:{c}@minio.example:9000/bucket", "p@ss@canary"),
    "short DSN query password": ("postgresql://db.example/x?user=me&password={c}&sslmode=require", "cn9x"),
    "libpq keyword password": ("host=db port=5432 password={c} dbname=x", "kw7q"),
}
NANNY_SECRET, NANNY_PLAIN = "nanny-only-canary-41", "plain-canary-value-77"
SEED = int(os.environ.get("JULIUS_TEST_SEED") or random.randrange(2**32))
RNG = random.Random(SEED)
SECRET_WORDS = ["token", "secret", "password", "passwd", "key", "credential", "auth", "session"]
PARAMS = ["password", "passwd", "pwd", "token", "secret", "api_key", "access_key", "auth", "session", "sig"]


def _random_canary():
    core = "".join(RNG.choice(string.ascii_letters + string.digits + "@!$*-+.") for _ in range(RNG.randint(1, 20)))
    return "~" + core + "^"   # distinctive, so "not in the blob" means it


def _random_case(word):
    return RNG.choice([word, word.upper(), word.capitalize()])


def _random_secret_key():
    word = _random_case(RNG.choice(SECRET_WORDS))
    style = RNG.randrange(3)
    if style == 0:
        return f"{RNG.choice(['my', 'db', 'api', 'x'])}{RNG.choice(['-', '_', '.'])}{word}"
    if style == 1:
        return RNG.choice(["api", "db", "aws"]) + RNG.choice([word.capitalize(), word.upper()])   # camelCase
    return word


def _random_placement(c):
    templates = [
        lambda: f"https://{c}@host{RNG.randrange(99)}.example/path",
        lambda: f"{RNG.choice(['postgresql', 'redis', 'https', 'tcp'])}://user{RNG.randrange(9)}:{c}@h.example:5{RNG.randrange(999)}/d",
        lambda: f"https://h.example/db?x=1&{_random_case(RNG.choice(PARAMS))}={c}&y=2",
        lambda: f"{RNG.choice(PARAMS)}={c} host=h.example",
        lambda: json.dumps({RNG.choice(PARAMS): c}),
        lambda: f"Authorization: Bearer {c}abcdefgh",
    ]
    return RNG.choice(templates)()


def _random_tree(canaries, depth=0):
    """A config tree that hides each canary at a random depth, under a random secret-looking key or pattern."""
    tree = {"n": RNG.randrange(100), "url": "https://docs.example/page@v1"}
    for c in canaries:
        node = tree
        for _ in range(RNG.randint(0, 4)):
            node = node.setdefault(f"level{RNG.randrange(3)}", {})
        if RNG.random() < 0.4:
            node[_random_secret_key()] = c if RNG.random() < 0.7 else [c]
        else:
            node[f"plain{RNG.randrange(10**6)}"] = _random_placement(c)
    return tree


RANDOM_CANARIES = [_random_canary() for _ in range(40)]
SECRET_CONFIG = {
    "julius-canaries": {
        **{f"case{i}": template.format(c=c) for i, (label, (template, c)) in
           enumerate(ISSUE_CANARIES.items())},
        "deep": [{"list": [{"auth": "deep-auth-canary"}]}],
        "apiKey": 123456789,
        "random": _random_tree(RANDOM_CANARIES),
    },
    "distributed.nanny.environ": {"WORKER_ONLY_SECRET": NANNY_SECRET, "PLAIN_NAME": NANNY_PLAIN},
}
ALL_CANARIES = [c for _, c in ISSUE_CANARIES.values()] + ["deep-auth-canary", "123456789", NANNY_SECRET,
                                                          NANNY_PLAIN] + RANDOM_CANARIES


def assert_no_canary(env):
    text = json.dumps(env)
    leaked = [c for c in ALL_CANARIES if c in text]
    assert not leaked, f"secrets leaked (JULIUS_TEST_SEED={SEED}): {leaked}"


def assert_no_secret(env):
    text = json.dumps(env)
    for secret in (CANARY_TOKEN, CANARY_PASSWORD, "dask-secret-key-value", "s3cr3t-url-pw"):
        assert secret not in text
    assert "JULIUS_CANARY_TOKEN" not in text and "MY_PASSWORD" not in text


@pytest.fixture(scope="module")
def client():
    # the nanny.environ canaries reach the workers' processes and their config
    with dask.config.set(SECRET_CONFIG), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def test_secrets_are_scrubbed_at_every_depth_in_kernel_and_worker_blobs(client):
    with dask.config.set(SECRET_CONFIG):
        kernel = capture_environment()
    workers = cluster_environments(client)
    for env in [kernel, *workers.values()]:
        assert_no_canary(env)
        secrets = env["dask_config"]["julius-canaries"]
        # a key Dask does not define holds a value of the user's: only its digest is kept
        for case in ("case0", "case1", "case2", "case3"):
            assert re.fullmatch(r"<sha256:[0-9a-f]{12}>", secrets[case]), secrets[case]
        assert secrets["apiKey"] == "<redacted>" and secrets["deep"] == [{"list": [{"auth": "<redacted>"}]}]
        assert re.fullmatch(r"<sha256:[0-9a-f]{12}>", secrets["random"]["url"])
        assert env["dask_config"]["distributed"]["nanny"]["environ"] == {
            "WORKER_ONLY_SECRET": "<redacted>", "PLAIN_NAME": "<redacted>"}
        assert env["dask_config"]["tokenize"]["ensure-deterministic"] is False   # not a secret name
    # the worker-only variable really reached the workers (so the scrub above was tested)
    assert set(client.run(lambda: os.environ.get("WORKER_ONLY_SECRET")).values()) == {NANNY_SECRET}


def test_numerics_platform_origins_and_indexes_are_recorded():
    env = capture_environment()
    assert env["os"]["platform_tag"] == __import__("sysconfig").get_platform().replace("-", "_").replace(".", "_")
    assert env["os"]["libc"].startswith(platform.libc_ver()[0])
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    assert set(env["cpu"]["flags"]) <= flags and ("avx2" in flags) == ("avx2" in env["cpu"]["flags"])
    from threadpoolctl import threadpool_info

    numpy_blas = [p for p in threadpool_info() if p["user_api"] == "blas" and "numpy" in p["filepath"]]
    assert [b["num_threads"] for b in env["threads"]["blas"]] == [p["num_threads"] for p in numpy_blas]
    assert env["threads"]["blas"][0]["internal_api"] == numpy_blas[0]["internal_api"]
    assert env["python"]["hashseed"] in ("random", os.environ.get("PYTHONHASHSEED"))
    # this checkout is an editable install; dask came from an index
    assert env["distributions"]["julius-magics"]["origin"]["kind"] == "editable"
    assert env["distributions"]["dask"] == {"installer": env["distributions"]["dask"]["installer"],
                                            "origin": {"kind": "index"}}
    assert env["indexes"]["pip"]["index_url"].startswith(("http", "file"))
    assert "@" not in json.dumps(env["indexes"]).replace("<redacted>@", "")


def test_workers_do_not_differ_from_the_kernel_by_julius_own_settings(monkeypatch):
    """julius sets distributed.worker.multiprocessing-method on its workers: not the user's environment."""
    from julius_magics.cluster.session import Session

    # this module sets DASK_JULIUS_API_KEY after dask read its environment: fresh workers would see it
    monkeypatch.delenv("DASK_JULIUS_API_KEY")
    s = Session()
    s.start(n_workers=1)
    try:
        kernel = capture_environment()
        worker = next(iter(cluster_environments(s.client).values()))
    finally:
        s.stop()
    diff = env_diff(kernel, worker)
    assert diff["same"] is True, format_env_diff(diff)
    # the nanny gives workers one BLAS thread: reported apart, never "workers differ"
    assert set(diff["threads"]) <= {"blas threads", "OMP_NUM_THREADS"}
    assert "multiprocessing-method" not in (worker["dask_config"]["distributed"]["worker"])


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
    assert re.fullmatch(r"<sha256:[0-9a-f]{12}>", env["dask_config"]["julius-test"]["store"])   # not Dask's: digested
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


PRELOADED_WORKER = """
import json
from julius_magics.cluster.session import Session, prepare_workers
from julius_magics.recording.environment import capture_environment
prepare_workers()   # as %load_ext does: workers are forked from a preloaded server
s = Session()
s.start(n_workers=1)
try:
    seen = s.run_on_workers(lambda: (hash("julius"), capture_environment()))
finally:
    s.stop()
print(json.dumps(list(seen.values())[0]))
"""


def test_workers_forked_from_the_preloaded_server_start_as_spawned_workers_do():
    """Forked workers inherit the server's hash seed and loaded BLAS: they must be the nanny's, as recorded."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED", "OMP_NUM_THREADS",
                                                            "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", PRELOADED_WORKER], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    hashed, worker = json.loads(out.stdout.splitlines()[-1])
    seeded = subprocess.run([sys.executable, "-c", "print(hash('julius'))"], capture_output=True, text=True,
                            env={**env, "PYTHONHASHSEED": "6640"}, timeout=60)
    assert worker["python"]["hashseed"] == "6640" and hashed == int(seeded.stdout)   # the seed it says it has
    assert [p["num_threads"] for p in worker["threads"]["blas"]] == [1]   # the nanny's one BLAS thread


def test_an_install_between_two_captures_is_seen(tmp_path, monkeypatch):
    """The distributions are read again only when the metadata folders on ``sys.path`` changed."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(version):
        for old in site.glob("*.dist-info"):
            shutil.rmtree(old)
        info = site / f"julius_probe_dist-{version}.dist-info"
        info.mkdir()
        # only the headers count: the description's lines that look like headers do not
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: julius-probe-dist\nVersion: {version}\n\n"
                                       "Its description:\nName: another-name\nVersion: 9.9\n")

    assert "julius-probe-dist" not in capture_environment()["packages"]
    install("1.0")
    assert capture_environment()["packages"]["julius-probe-dist"] == "1.0"
    install("2.0")   # an upgrade
    assert capture_environment()["packages"]["julius-probe-dist"] == "2.0"
    assert "another-name" not in capture_environment()["packages"]
    shutil.rmtree(site / "julius_probe_dist-2.0.dist-info")   # a removal
    assert "julius-probe-dist" not in capture_environment()["packages"]


def test_the_distributions_are_read_again_whenever_one_is_installed_removed_or_upgraded(tmp_path, monkeypatch):
    from julius_magics.recording import environment

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))

    def install(version):
        shutil.rmtree(site, ignore_errors=True)
        (site / f"julius_probe-{version}.dist-info").mkdir(parents=True)
        (site / f"julius_probe-{version}.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: julius-probe\nVersion: {version}\n\nA long description.\n")

    install("1.0")
    assert capture_environment()["packages"]["julius-probe"] == "1.0"
    [cached] = (tmp_path / "home" / ".julius" / "cache" / "environments").iterdir()
    listing = environment._listing
    listing.cache_clear()   # as a new process (a worker) starts: the file is read, not the metadata
    monkeypatch.setattr(environment, "_listing", lambda stamp: pytest.fail("read the metadata again"))
    assert capture_environment()["packages"]["julius-probe"] == "1.0"
    monkeypatch.setattr(environment, "_listing", listing)
    install("2.0")   # an upgrade
    assert capture_environment()["packages"]["julius-probe"] == "2.0"
    shutil.rmtree(site)   # removed
    assert "julius-probe" not in capture_environment()["packages"]
    for damage in ('{"origins": {}, "packages": ', '{"origins": [], "packages": {}}'):   # read past, never trusted
        for f in cached.parent.iterdir():
            f.write_text(damage)
        environment._listing.cache_clear()
        packages = capture_environment()["packages"]
        assert "julius-probe" not in packages and packages["dask"] == dask.__version__
