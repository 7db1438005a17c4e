"""Rebuilding recorded environments with uv, isolated replays, and the environment bisection.

Real uv-built venvs throughout. The pin sets are this test process's own (about 180
pins, all in uv's cache) plus a few small pure-Python packages, so each build is a few
seconds.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

from julius_magics.recording.environment import capture_environment
from julius_magics.recording.rebuild import (
    PinSet, RebuildError, build_environment, build_local_wheels, pin_set,
)

# Read before the suite's private HOME is set: uv's cache must stay the warm one.
REAL_UV_CACHE = os.environ.get("UV_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "uv")
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    """A private cache of rebuilt environments; uv's own cache is the real, warm one."""
    root = tmp_path_factory.mktemp("envs")
    old = {k: os.environ.get(k) for k in ("UV_CACHE_DIR", "JULIUS_ENVS")}
    os.environ["UV_CACHE_DIR"] = REAL_UV_CACHE
    os.environ["JULIUS_ENVS"] = str(root)
    yield str(root)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def today():
    return capture_environment()


def small_pins(today, packages, **changes):
    base = pin_set(today)
    return PinSet(python=changes.get("python", base.python), packages=packages, origins=changes.get("origins", {}),
                  indexes=changes.get("indexes", base.indexes), platform=changes.get("platform", base.platform))


def variant(today, root, **versions):
    """Today's pins with some packages at other versions (None removes one), built."""
    pins = pin_set(today)
    for name, version in versions.items():
        if version is None:
            pins.packages.pop(name, None)
        else:
            pins.packages[name] = version
    return build_environment(pins, progress=False, root=root)


def python_json(python, code, cwd=None, check=True):
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=800,
                         env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def last_json(stdout, event=None):
    for line in reversed(stdout.splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if event is None or (isinstance(obj, dict) and obj.get("event") == event):
            return obj
    raise AssertionError(f"no JSON {event or ''} line in:\n{stdout[-2000:]}")


def test_a_pin_set_is_built_exactly_and_reused_only_while_its_freeze_matches(envs, today):
    pins = small_pins(today, {"six": "1.17.0", "toolz": "1.1.0"})
    built = build_environment(pins, progress=False, root=envs)
    assert not built.reused and built.path == os.path.join(envs, pins.key)
    out = python_json(built.python, "import six, toolz, sys; print(six.__version__, toolz.__version__, sys.version)")
    assert out.stdout.split()[:3] == ["1.17.0", "1.1.0", platform.python_version()]
    again = build_environment(pins, progress=False, root=envs)
    assert again.reused and again.path == built.path
    # its dist-info folders' names say what its metadata says, in a glance
    from julius_magics.recording.venvs import _freeze, _installed_names

    assert _installed_names(built.path) == _freeze(built.path) == pins.packages
    # tampered: its freeze no longer matches, so it is rebuilt, never reused
    site = os.path.join(built.path, "lib", f"python{pins.minor}", "site-packages")
    for entry in os.listdir(site):
        if entry.startswith("toolz-"):
            import shutil

            shutil.rmtree(os.path.join(site, entry))
    rebuilt = build_environment(pins, progress=False, root=envs)
    assert not rebuilt.reused
    assert python_json(rebuilt.python, "import toolz; print(toolz.__version__)").stdout.strip() == "1.1.0"
    # built aside and renamed into place: nothing half-built is left under the cache
    assert not [e for e in os.listdir(envs) if e.startswith(".")]


def test_a_missing_python_minor_is_refused_with_the_version(envs, today):
    pins = small_pins(today, {"six": "1.17.0"}, python="3.4.10")
    with pytest.raises(RebuildError, match=r"^Python 3\.4 \(recorded 3\.4\.10\) is not installed here: install it "
                                           r"\(`uv python install 3\.4`, or replay with --python-install\)$"):
        build_environment(pins, progress=False, root=envs)
    assert pins.key not in os.listdir(envs)


def test_another_platform_is_refused_before_anything_is_built(envs, today):
    pins = small_pins(today, {"six": "1.17.0"}, platform={
        "system": "Darwin", "machine": "arm64", "platform_tag": "macosx_14_0_arm64", "libc": None})
    before = sorted(os.listdir(envs))
    with pytest.raises(RebuildError, match=r"built for macosx_14_0_arm64 .* cannot be installed on this platform, "
                                           r"linux_x86_64|built for macosx_14_0_arm64"):
        build_environment(pins, progress=False, root=envs)
    assert sorted(os.listdir(envs)) == before
    # the same OS and architecture, but a newer glibc than this machine's: refused too
    import platform as _platform

    base = pin_set(today).platform
    newer = dict(base, libc=f"{_platform.libc_ver()[0]} 99.0")
    with pytest.raises(RebuildError, match=r"\(glibc 99\.0\) and cannot be installed on this platform"):
        build_environment(small_pins(today, {"six": "1.17.0"}, platform=newer), progress=False, root=envs)
    assert sorted(os.listdir(envs)) == before


def test_an_unreachable_index_or_a_missing_pin_names_package_version_and_index(envs, today, monkeypatch):
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")   # the connection is refused: retrying only takes longer
    dead = {"index_url": "http://127.0.0.1:9/simple", "extra_index_urls": [], "find_links": []}
    with pytest.raises(RebuildError) as e:
        build_environment(small_pins(today, {"six": "1.17.0"}, indexes=dead), progress=False, root=envs)
    message = str(e.value)
    assert "\n" not in message and "six 1.17.0" in message and "http://127.0.0.1:9/simple" in message
    with pytest.raises(RebuildError) as e:
        build_environment(small_pins(today, {"six": "0.0.999"}), progress=False, root=envs)
    message = str(e.value)
    assert "\n" not in message and "six 0.0.999" in message and "pypi.org/simple" in message
    # requests 2.32.0 was yanked from PyPI: refused, never installed silently
    with pytest.raises(RebuildError, match=r"^cannot install requests 2\.32\.0: it has been yanked from "
                                           r"https://pypi\.org/simple \(warning: `requests==2\.32\.0` is yanked"):
        build_environment(small_pins(today, {"requests": "2.32.0"}), progress=False, root=envs)


def test_editable_and_local_packages(envs, today, tmp_path):
    # an editable install at another version than the recorded one: refused, by name
    env = json.loads(json.dumps(today))
    env["packages"]["julius-magics"] = "9.9.9"
    with pytest.raises(RebuildError, match=r"^julius-magics 9\.9\.9 was an editable install \(file://.*\) and is "
                                           r"0\.1\.0 here: no index has it and the recording holds no wheel"):
        build_environment(pin_set(env), progress=False, root=envs)
    # a user's own package, not installed here: refused without a wheel, installed from one
    source = tmp_path / "tinypkg"
    (source / "jm_tiny").mkdir(parents=True)
    (source / "jm_tiny" / "__init__.py").write_text("ANSWER = 42\n")
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "jm-tiny"\nversion = "1.0"\n[tool.hatch.build.targets.wheel]\npackages = ["jm_tiny"]\n')
    origin = {"kind": "editable", "url": source.as_uri()}
    pins = small_pins(today, {"jm-tiny": "1.0", "six": "1.17.0"}, origins={"jm-tiny": origin})
    with pytest.raises(RebuildError, match=r"^jm-tiny 1\.0 was an editable install .* and is not installed here"):
        build_environment(pins, progress=False, root=envs)
    wheels = build_local_wheels({"distributions": {"jm-tiny": {"installer": "uv", "origin": origin}}},
                                out_dir=str(tmp_path / "wheels"))
    assert list(wheels) == ["jm-tiny"] and wheels["jm-tiny"].endswith("jm_tiny-1.0-py2.py3-none-any.whl")
    built = build_environment(pins, local_wheels=wheels, progress=False, root=envs)
    assert python_json(built.python, "import jm_tiny; print(jm_tiny.ANSWER)").stdout.strip() == "42"
    # embedded in a recording (the hook of `%record start --with-local-packages`) and found there again
    from julius_magics.recording.rebuild import embed_local_wheels, recorded_wheels
    from julius_magics.recording.store import Store

    store = Store(str(tmp_path / "store"))
    writer = store.create("with-wheels")
    embedded = embed_local_wheels(writer, {"distributions": {"jm-tiny": {"installer": "uv", "origin": origin}}})
    kernel = writer.add_blob(json.dumps(today).encode())
    writer.add_step("environment", {"kernel": kernel, "workers": {}, "wheels": embedded})
    writer.close()
    found = recorded_wheels(store.open("with-wheels"), str(tmp_path / "found"))
    assert list(found) == ["jm-tiny"] and os.path.basename(found["jm-tiny"]) == embedded["jm-tiny"]["filename"]
    with open(found["jm-tiny"], "rb") as f, open(wheels["jm-tiny"], "rb") as g:
        assert f.read() == g.read()


TUTORIAL_SCRIPT = """
from julius_magics import recording
from julius_magics.cluster.session import get_session
from julius_magics.datasets import make_fraud_data
from julius_magics.tutorial import run_pipeline
train, test = make_fraud_data({data!r}, train_mb=1.5, test_mb=0.6)
session = get_session()
recording.start(session, "tutorial", store={store!r})
session.start(n_workers=2)
print("AUC", run_pipeline(session, train, test)["auc"])
recording.stop()
session.stop()
"""


@pytest.fixture(scope="module")
def tutorial_recording(tmp_path_factory):
    """The tutorial pipeline recorded in this test process's environment."""
    work = tmp_path_factory.mktemp("tutorial")
    store = str(work / "store")
    out = subprocess.run([sys.executable, "-c", TUTORIAL_SCRIPT.format(data=str(work / "data"), store=store)],
                         capture_output=True, text=True, cwd=work, timeout=600)
    assert out.returncode == 0 and "AUC 0." in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    return store, "tutorial", str(work)


def test_plain_replay_names_a_changed_package_and_isolated_replay_restores_the_recorded_env(
        envs, today, tutorial_recording):
    store, name, work = tutorial_recording
    assert today["packages"]["toolz"] != "1.1.0"
    other = variant(today, envs, toolz="1.1.0")   # a venv where dask runs on another toolz
    plain = python_json(other.python, f"from julius_magics.cli import main; main(['--store', {store!r}, 'replay', "
                                      f"{name!r}, '-n', '1', '--json'])", cwd=work, check=False)
    report = last_json(plain.stdout, "report")["report"]
    assert report["env_diff"]["same"] is False
    assert report["env_diff"]["packages"]["changed"] == {"toolz": [today["packages"]["toolz"], "1.1.0"]}
    # `julius replay --isolated --json` from that venv (the server runs the same job: recording.isolated)
    isolated = subprocess.run([other.python, "-m", "julius_magics.cli", "--store", store, "replay", name, "--isolated",
                               "--json", "-n", "1"], capture_output=True, text=True, cwd=work, timeout=800)
    assert isolated.returncode == 0, isolated.stdout[-3000:] + isolated.stderr[-3000:]
    events = [json.loads(line) for line in isolated.stdout.splitlines()]
    assert any(e["event"] == "progress" and e["message"].startswith("environment of the kernel and workers: "
                                                                     f"{len(today['packages'])} pins") for e in events)
    result = events[-1]["report"]
    assert events[-1]["event"] == "report" and result["verified"] is True and result["results"] > 0
    assert result["env_diff"]["same"] is True, result["env_diff"]
    assert [e["packages"] for e in result["isolated"]] == [len(today["packages"])]
    rebuilt = result["isolated"][0]["python"]
    out = python_json(rebuilt, "import toolz, julius_magics; print(toolz.__version__, julius_magics.__file__)")
    version, where = out.stdout.split()
    assert version == today["packages"]["toolz"]
    # julius-magics, an editable install here, is the same source folder in the rebuilt venv
    import julius_magics

    assert os.path.dirname(where) == os.path.dirname(julius_magics.__file__)


def test_recorded_pins_and_one_environment_per_distinct_pin_set(today, tutorial_recording):
    from julius_magics.recording.rebuild import environments_for, recorded_pins

    store, name, _ = tutorial_recording
    text = recorded_pins(name, store, "requirements").splitlines()
    assert f"toolz=={today['packages']['toolz']}" in text and f"dask=={today['packages']['dask']}" in text
    assert any(line.startswith("# julius-magics==0.1.0  (editable install from file://") for line in text)
    out = subprocess.run([sys.executable, "-m", "julius_magics.cli", "--store", store, "env", name, "--format",
                          "conda"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"    - toolz=={today['packages']['toolz']}" in out.stdout.splitlines()
    assert f"  - python={today['python']['version']}" in out.stdout.splitlines()
    # a fresh recording's workers do not differ from its kernel by julius's own settings
    shown = subprocess.run([sys.executable, "-m", "julius_magics.cli", "--store", store, "show", name],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "environment: Python " in shown.stdout, shown.stderr
    assert "workers differ from the kernel" not in shown.stdout, shown.stdout
    with pytest.raises(RebuildError, match="has no environment of 'tcp://nowhere:1'"):
        recorded_pins(name, store, "conda", which="tcp://nowhere:1")
    same = {"tcp://a:1": today, "tcp://b:2": today}
    kernel_pins, worker_pins = environments_for(today, same)
    assert worker_pins is None and kernel_pins.key == pin_set(today).key
    other = json.loads(json.dumps(today))
    other["packages"]["toolz"] = "1.1.0"
    kernel_pins, worker_pins = environments_for(today, {"tcp://a:1": today, "tcp://b:2": other})
    assert worker_pins.packages["toolz"] == "1.1.0" and kernel_pins.packages["toolz"] == today["packages"]["toolz"]


BISECT_SCRIPT = """
import julius_magics as jm
from julius_magics import recording
from julius_magics.cluster.session import get_session
session = get_session()
recording.start(session, "bisect-me", store={store!r})
session.start(n_workers=1)
session.remote_eval("import tabulate, six, humanize\\ndef count_formats():\\n    return len(tabulate.tabulate_formats)\\n"
                    "def six_version():\\n    return six.__version__")
session.add_rules("b", "def formats():\\n    return ApplyFn(count_formats)()\\ndef fixed():\\n    return ApplyFn(int, 7)()\\n"
                  "def sixv():\\n    return ApplyFn(six_version)()")
print("RESULT", session.compute([jm.ref.b.fixed(label="fixed"), jm.ref.b.formats(label="b:formats"),
                                 jm.ref.b.sixv(label="b:sixv")]))
recording.stop()
session.stop()
"""


def test_bisect_names_the_package_whose_version_changes_a_remote_eval_result(envs, today, tmp_path):
    # recorded with tabulate 0.8.10 (24 table formats), six 1.16.0 and humanize 4.16.0
    old = variant(today, envs, tabulate="0.8.10", six="1.16.0", humanize="4.16.0")
    store = str(tmp_path / "store")
    out = python_json(old.python, BISECT_SCRIPT.format(store=store), cwd=tmp_path)
    assert "RESULT [7, 24, '1.16.0']" in out.stdout
    # today: tabulate 0.9.0 has 36 formats; six and humanize changed too, without effect on the result
    new = variant(today, envs, tabulate="0.9.0", six="1.17.0", humanize="4.17.0")
    out = subprocess.run([new.python, "-m", "julius_magics.cli", "--store", store, "replay", "bisect-me", "--bisect-env",
                          "-n", "1", "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = last_json(out.stdout, "bisect")["bisect"]
    assert result["changed"] == ["humanize", "six", "tabulate"], result
    by_label = {c["label"]: {k: c[k] for k in ("name", "recorded", "today")} for c in result["culprits"]}
    assert by_label == {"b:formats": {"name": "tabulate", "recorded": "0.8.10", "today": "0.9.0"},
                        "b:sixv": {"name": "six", "recorded": "1.16.0", "today": "1.17.0"}}, result["rebuilds"]
    # per differing result, its own package; the unchanged result is not attributed
    lines = result["message"].splitlines()
    assert len(lines) == 2 and {c["label"] for c in result["culprits"]} == {"b:formats", "b:sixv"}
    assert any(line.startswith("tabulate 0.8.10 → 0.9.0 changes `b:formats` (node ") for line in lines)
    assert any(line.startswith("six 1.16.0 → 1.17.0 changes `b:sixv` (node ") for line in lines)
    first = [r for r in result["rebuilds"]][:3]
    assert len(first) <= 3   # ⌈log2 3⌉ + 1 for the first result
    assert len(result["rebuilds"]) <= 4   # the second result reuses the first's probes where its path is the same
    assert result["rebuilds"][0]["take"] == [] and result["rebuilds"][0]["differs"] is False
    assert all(r["take"] != ["humanize", "six", "tabulate"] for r in result["rebuilds"])


def test_the_magic_the_widget_and_the_server_replay_isolated(envs, today, tutorial_recording, ip):
    """`%replay --isolated`, the widget's `isolated` checkbox and the server's `isolated=True`: one rebuilt replay."""
    import asyncio

    from julius_magics.server.manager import RecordingsManager
    from julius_magics.widget import RecordingBrowser

    store, name, _ = tutorial_recording
    report = ip.run_line_magic("replay", f"{name} --store {store} -n 1 --isolated")
    assert report.verified and report.env_same and report.steps == report.total_steps > 0
    browser = RecordingBrowser(store=store, n_workers=1)
    browser.isolated.value = True
    browser.replay(name, wait=True)
    assert browser.report is not None, browser.error.value
    assert browser.report.verified and browser.report.env_same and browser.report.results > 0
    assert "Isolated replay of " in browser.output.value and "environment as recorded" in browser.output.value

    async def server_replay():
        manager = RecordingsManager(store_url=store)
        assert manager.replay_argv(name, 1, isolated=True)[:3] == [sys.executable, "-m",
                                                                    "julius_magics.recording.isolated"]
        job = await manager.start_replay(name, workers=1, isolated=True)
        return await manager.wait(job.id)

    job = asyncio.run(server_replay())
    assert job.report["verified"] is True and job.report["env_diff"]["same"] is True, job.as_dict()
    assert job.report["isolated"][0]["reused"] is True   # built once, by the tests above, and cached
