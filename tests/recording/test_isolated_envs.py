"""Isolated replays where the kernel's and the workers' pins differ, a missing Python, pins read back by uv,
and the bad inputs of a rebuild (another platform, an unreachable index, a build killed midway).

Real uv venvs, real LocalClusters; uv's cache is the warm one (see ``test_rebuild``).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from julius_magics.recording.pins import pin_set, render_pins
from julius_magics.recording.rebuild import RebuildError, build_environment, replay_isolated
from julius_magics.recording.store import Store
from tests.recording.test_rebuild import envs, python_json, small_pins, today  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(900)


def uv(*args, **kwargs):
    from julius_magics.recording.venvs import uv_binary

    out = subprocess.run([uv_binary(), *args], capture_output=True, text=True, timeout=600,
                         env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, **kwargs)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def fresh_freeze(python):
    code = ("import importlib.metadata as m, json, re\n"
            "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version "
            "for d in m.distributions()}))")
    return json.loads(python_json(python, code).stdout)


def env_recording(store, name, kernel, workers=None):
    """A recording that holds only an environment step (what a rebuild and ``julius env`` read)."""
    writer = Store(store).create(name)
    blobs = {addr: writer.add_blob(json.dumps(env).encode()) for addr, env in (workers or {}).items()}
    writer.add_step("environment", {"kernel": writer.add_blob(json.dumps(kernel).encode()), "workers": blobs})
    writer.close()


def julius(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "julius_magics.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env={**os.environ, **(env or {})})


# --- (a) the workers' own environment ------------------------------------------------------
TWO_ENVS_SCRIPT = """
from julius_magics.cluster.session import run_workers_on
run_workers_on({worker_python!r})   # the workers run in another environment than the kernel
import json
import julius_magics as jm
from julius_magics import recording
from julius_magics.cluster.session import get_session
session = get_session()
recording.start(session, "two-envs", store={store!r})
session.start(n_workers=2)
session.remote_eval('''
import importlib.metadata, re, sys
def worker_site():
    return [sys.executable, sys.prefix, sorted((re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(), d.version)
                                               for d in importlib.metadata.distributions())]
''')
session.add_rules("w", "def where():\\n    return ApplyFn(worker_site)()")
print("RESULT", json.dumps(session.compute(jm.ref.w.where(label="w:where"))))
recording.stop()
session.stop()
"""


def test_workers_with_other_pins_run_on_their_own_rebuilt_interpreter(envs, today, tmp_path, monkeypatch):  # noqa: F811
    assert today["packages"]["toolz"] != "1.1.0"
    workers_pins = pin_set(today)
    workers_pins.packages["toolz"] = "1.1.0"
    workers_env = build_environment(workers_pins, progress=False, root=envs)
    store = str(tmp_path / "store")
    out = python_json(sys.executable, TWO_ENVS_SCRIPT.format(worker_python=workers_env.python, store=store),
                      cwd=tmp_path)
    executable, prefix, packages = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
    # recorded on workers in their own environment: toolz 1.1.0 there, today's in the kernel
    assert (executable, prefix, dict(packages)) == (workers_env.python, workers_env.path, workers_pins.packages)

    job_tmp = tmp_path / "job-tmp"   # the replay job's (and its fork server's) temporary folders
    job_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(job_tmp))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    result = replay_isolated("two-envs", store, root=envs, build_progress=False, cwd=tmp_path)
    # the replayed value is compared with that one: the same interpreter, prefix and packages
    assert result.verified and result.env_same and result.results == 1, result.summary()
    kernel_env, worker_env = result.environments   # one environment per distinct pin set
    # the job's processes kept what they compiled in the environment's folder, PYTHONDONTWRITEBYTECODE or not
    compiled = {os.path.basename(f) for _, _, files in os.walk(kernel_env.pycache) for f in files}
    tag = sys.implementation.cache_tag
    assert {f"session.{tag}.pyc", f"scheduler.{tag}.pyc"} <= compiled   # julius's own, distributed's
    # ended at once after its report, yet with its exit handlers: multiprocessing's folder removed
    assert [e for e in os.listdir(job_tmp) if e.startswith("pymp-")] == []
    assert kernel_env.key == pin_set(today).key and worker_env.key == workers_pins.key != kernel_env.key
    assert worker_env.path == workers_env.path   # cached by the hash of its pins
    assert fresh_freeze(kernel_env.python)["toolz"] == today["packages"]["toolz"]


# --- (b) a Python minor that is not here ------------------------------------------------------
@pytest.mark.parametrize("version, why", [
    ("3.4.10", r"No download found for request: cpython-3\.4"),                # uv has no build of it
    ("3.14.0", r"127\.0\.0\.1:9"),                                            # its download is unreachable
])
def test_a_missing_python_is_installed_only_when_asked_and_says_why_not(today, tmp_path, version, why):  # noqa: F811
    minor = version.rsplit(".", 1)[0]
    kernel = json.loads(json.dumps(today))
    kernel["python"]["version"] = version
    kernel["packages"] = {"six": "1.17.0"}
    store = str(tmp_path / "store")
    env_recording(store, "old-python", kernel)
    pythons = tmp_path / "pythons"
    settings = {"JULIUS_ENVS": str(tmp_path / "envs"), "UV_PYTHON_INSTALL_DIR": str(pythons),
                "UV_PYTHON_INSTALL_MIRROR": "http://127.0.0.1:9/python", "UV_HTTP_RETRIES": "0"}
    refused = julius("--store", store, "replay", "old-python", "--isolated", env=settings)
    # the last line is the error (before it, the progress line naming the environment), no traceback
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.splitlines()[-1] == (
        f"julius replay: Python {minor} (recorded {version}) is not installed here: install it "
        f"(`uv python install {minor}`, or replay with --python-install)")
    assert not pythons.exists()   # nothing was attempted
    failed = julius("--store", store, "replay", "old-python", "--isolated", "--python-install", env=settings)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr
    import re

    assert re.fullmatch(rf"julius replay: Python {re.escape(minor)} \(recorded {re.escape(version)}\) is not installed "
                        rf"here and `uv python install {re.escape(minor)}` failed: .*{why}.*",
                        failed.stderr.splitlines()[-1]), failed.stderr
    assert not os.listdir(tmp_path / "envs")


# --- (c) the pins as text, read back by uv --------------------------------------------------------
def test_requirements_and_the_lock_install_the_exact_pins_with_uv(today, tmp_path):  # noqa: F811
    store = str(tmp_path / "store")
    env_recording(store, "pins", today)
    index_pins = {n: v for n, v in today["packages"].items()
                  if (today["distributions"][n]["origin"]).get("kind") == "index"}
    assert "julius-magics" not in index_pins and len(index_pins) == len(today["packages"]) - 1
    for fmt, install in (("requirements", ("pip", "install", "--no-deps", "-r")), ("uv-lock", ("pip", "sync"))):
        out = julius("--store", store, "env", "pins", "--format", fmt)
        assert out.returncode == 0, out.stderr
        path = tmp_path / ("requirements.txt" if fmt == "requirements" else "pylock.toml")
        path.write_text(out.stdout)
        venv = tmp_path / f"venv-{fmt}"
        uv("venv", "--no-config", "-q", "--python", sys.executable, str(venv))
        uv(*install, str(path), "--no-config", "--python", str(venv / "bin" / "python"),
           "--preview-features", "pylock")
        assert fresh_freeze(str(venv / "bin" / "python")) == index_pins, fmt
    lock = path.read_text()
    assert lock.splitlines()[1].startswith("# julius-magics==0.1.0  (editable install from file://")
    import tomllib

    packages = {p["name"]: p for p in tomllib.loads(lock)["packages"]}
    assert {n: p["version"] for n, p in packages.items()} == index_pins
    assert all(f["hashes"]["sha256"] for p in packages.values() for f in p.get("wheels", []))


# --- (d) bad inputs ---------------------------------------------------------------------------------
def test_another_platform_is_refused_with_both_tags_before_any_environment_is_built(today, tmp_path):  # noqa: F811
    from julius_magics.recording.environment import platform_tag

    kernel = json.loads(json.dumps(today))
    kernel["packages"] = {"six": "1.17.0"}
    mac = json.loads(json.dumps(kernel))
    mac["os"].update(system="Darwin", machine="arm64", platform_tag="macosx_14_0_arm64", libc=None)
    store, root = str(tmp_path / "store"), tmp_path / "envs"
    env_recording(store, "mac-workers", kernel, {"tcp://127.0.0.1:1": mac})   # only the workers' is another's
    with pytest.raises(RebuildError) as e:
        replay_isolated("mac-workers", store, root=str(root), build_progress=False)
    assert str(e.value) == (f"the recorded environment was built for macosx_14_0_arm64 (no libc recorded) and cannot "
                            f"be installed on this platform, {platform_tag()} ({today['os']['libc']}): replay it on a "
                            f"matching machine")
    assert not root.exists() or not os.listdir(root)   # the kernel's environment was not built either


def test_the_lock_names_package_version_and_index_when_the_index_is_unreachable(today, monkeypatch):  # noqa: F811
    from julius_magics.recording.venvs import lock_pins

    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    dead = {"index_url": "http://127.0.0.1:9/simple", "extra_index_urls": [], "find_links": []}
    with pytest.raises(RebuildError) as e:
        lock_pins(small_pins(today, {"six": "1.17.0"}, indexes=dead))
    assert "\n" not in str(e.value) and str(e.value).startswith("cannot install six 1.17.0: ")
    assert "http://127.0.0.1:9/simple" in str(e.value)


BUILD_SCRIPT = """
import json, sys
from julius_magics.recording.rebuild import PinSet, build_environment
pins = PinSet(**json.loads(sys.argv[1]))
build_environment(pins, progress=False, root=sys.argv[2])
"""


def test_a_build_killed_midway_is_never_reused(envs, today, tmp_path):  # noqa: F811
    pins = pin_set(today)
    pins.packages["six"] = "1.16.0"   # not built by another test: this build starts from nothing
    root = tmp_path / "envs"
    spec = {"python": pins.python, "packages": pins.packages, "origins": pins.origins, "indexes": pins.indexes,
            "platform": pins.platform}
    proc = subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, json.dumps(spec), str(root)], start_new_session=True,
                            env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:   # killed once uv has begun installing into the temporary venv
            building = [e for e in (os.listdir(root) if root.exists() else []) if e.startswith(f".{pins.key}-")]
            site = [os.path.join(root, b, "venv", "lib", f"python{pins.minor}", "site-packages") for b in building]
            if any(os.path.isdir(s) and len(os.listdir(s)) > 4 for s in site):
                break
            assert proc.poll() is None, "the build ended before it could be killed"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # the build and its uv
        proc.wait()
    assert pins.key not in os.listdir(root)   # never under its final name
    assert building
    built = build_environment(pins, progress=False, root=str(root))
    assert not built.reused and fresh_freeze(built.python)["six"] == "1.16.0"
    assert build_environment(pins, progress=False, root=str(root)).reused
