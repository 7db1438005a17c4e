"""``%record start --with-local-packages``: wheels of editable installs embedded in the recording.

A real IPython shell on a real LocalCluster; the user's own package is a real editable
install (``uv pip install -e``) on the kernel's ``sys.path``, built into a wheel by uv.
"""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from julius_magics.recording.rebuild import recorded_wheels, uv_binary
from tests.support import run

# Read before the suite's private HOME is set: uv's cache must stay the warm one (hatchling is in it).
REAL_UV_CACHE = os.environ.get("UV_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "uv")
pytestmark = pytest.mark.timeout(300)

PYPROJECT = ('[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
             '[project]\nname = "{name}"\nversion = "1.0"\n[tool.hatch.build.targets.wheel]\npackages = ["{module}"]\n')


def editable_package(root, name, source):
    """A package folder ``root/name`` installed editable into ``root/site``; returns its folder."""
    module = name.replace("-", "_")
    folder = root / name
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(source)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(name=name, module=module))
    out = subprocess.run([uv_binary(), "pip", "install", "--no-config", "-q", "--target", str(root / "site"),
                          "-e", str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return folder


@pytest.fixture
def local_package(tmp_path, monkeypatch):
    """``jm-localpkg``, installed editable on this process's ``sys.path`` (not another process's)."""
    monkeypatch.setenv("UV_CACHE_DIR", REAL_UV_CACHE)
    # julius-magics is an editable install in a development venv: it is built too, but without its
    # JupyterLab build hook, which would write into the checkout
    monkeypatch.setenv("HATCH_BUILD_NO_HOOKS", "true")
    good = editable_package(tmp_path / "pkgs", "jm-localpkg", "ANSWER = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs" / "site"))
    monkeypatch.syspath_prepend(str(good))
    return good


@pytest.fixture
def local_packages(local_package, tmp_path):
    """``jm-localpkg`` (builds) and ``jm-unbuildable`` (its source broken since it was installed), editable."""
    broken = editable_package(tmp_path / "pkgs", "jm-unbuildable", "X = 1\n")
    (broken / "pyproject.toml").write_text("[project\nthis is not TOML\n")
    import importlib

    importlib.invalidate_caches()
    return local_package, broken


def environment_steps(store, name):
    return [s for s in store.open(name).steps if s.kind == "environment"]


def test_record_with_local_packages_embeds_a_wheel_once_and_warns_of_one_that_cannot_be_built(
        ip, recordings, local_packages, tmp_path, capsys):
    good, broken = local_packages
    store = recordings
    run(ip, "%cluster start -n 1")
    try:
        run(ip, f"%record start withpkgs --store {store.url} --with-local-packages --data embed-remote")
        run(ip, "import jm_localpkg\nfrom julius_magics import ref, compute\n"
                "value = compute(ref.mr.reducer(-jm_localpkg.ANSWER, abs))")
        run(ip, "%cluster stop")
        run(ip, "%cluster start -n 1")   # a second cluster: its environment step embeds nothing again
        run(ip, "%record stop")
    finally:
        run(ip, "%cluster stop")
    assert run(ip, "value") == 42
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "jm-unbuildable" in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"julius: warning: jm-unbuildable is not embedded (cannot build a wheel of jm-unbuildable from {broken}: ")
    assert warnings[0].endswith("an isolated replay needs jm-unbuildable 1.0 installed here")
    info = store.info("withpkgs")
    meta = store.open("withpkgs").meta
    assert info.status == "complete" and meta["data_mode"] == "embed-remote", meta.get("partial_reasons")

    first, second = environment_steps(store, "withpkgs")
    assert "wheels" not in second.data
    wheels = first.data["wheels"]
    assert "jm-unbuildable" not in wheels
    filename = wheels["jm-localpkg"]["filename"]
    assert filename.startswith("jm_localpkg-1.0-") and filename.endswith("-none-any.whl")
    # the blob is a real wheel of the package's files
    rec = store.open("withpkgs")
    wheel = tmp_path / "blob.whl"
    rec.blob_to_file(wheels["jm-localpkg"]["sha256"], wheel)
    with zipfile.ZipFile(wheel) as z:
        assert z.read("jm_localpkg/__init__.py") == b"ANSWER = 42\n"
        assert "Version: 1.0" in z.read("jm_localpkg-1.0.dist-info/METADATA").decode().splitlines()
    # the kernel's environment names it an editable install of that folder, at that version
    kernel = json.loads(rec.blob(first.data["kernel"]))
    assert kernel["packages"]["jm-localpkg"] == "1.0"
    assert kernel["distributions"]["jm-localpkg"]["origin"] == {"kind": "editable", "url": good.as_uri()}
    # and an isolated replay finds it again
    found = recorded_wheels(rec, str(tmp_path / "found"))
    assert set(found) == set(wheels) and os.path.basename(found["jm-localpkg"]) == filename
    with open(found["jm-localpkg"], "rb") as f, open(wheel, "rb") as g:
        assert f.read() == g.read()
    # where jm-localpkg is not installed (another process), `julius replay --isolated` takes it from its wheel
    # and refuses, by name and before building anything, the package that has none
    out = subprocess.run([sys.executable, "-m", "julius_magics.cli", "--store", store.url, "replay", "withpkgs",
                          "--isolated", "-n", "1"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "JULIUS_ENVS": str(tmp_path / "envs")})
    assert out.returncode != 0
    assert "jm-unbuildable 1.0 was an editable install" in out.stderr and "holds no wheel" in out.stderr, out.stderr
    assert "jm-localpkg" not in out.stderr and "Traceback" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if "jm-unbuildable" in line]) == 1


def test_without_the_option_nothing_is_embedded(ip, recordings, local_packages, tmp_path, capsys):
    store = recordings
    run(ip, "%cluster start -n 1")
    try:
        run(ip, f"%%record nopkgs --store {store.url}\nfrom julius_magics import ref, compute\n"
                "value = compute(ref.mr.reducer(-5, abs))")
    finally:
        run(ip, "%cluster stop")
    assert run(ip, "value") == 5
    assert "not embedded" not in capsys.readouterr().err
    steps = environment_steps(store, "nopkgs")
    assert steps and all("wheels" not in s.data for s in steps)
    assert recorded_wheels(store.open("nopkgs"), str(tmp_path / "found")) == {}


def test_an_isolated_replay_installs_the_local_package_from_its_embedded_wheel(ip, recordings, local_package,
                                                                                tmp_path):
    store = recordings
    run(ip, "%cluster start -n 1")
    try:
        run(ip, f"%record start fromwheel --store {store.url} --with-local-packages")
        run(ip, "from julius_magics import ref, compute\nvalue = compute(ref.mr.reducer(-3, abs))")
        run(ip, "%record stop")
    finally:
        run(ip, "%cluster stop")
    # another process, where jm-localpkg is not installed: the rebuilt environment takes it from the wheel
    out = subprocess.run([sys.executable, "-m", "julius_magics.cli", "--store", store.url, "replay", "fromwheel",
                          "--isolated", "--json", "-n", "1"], capture_output=True, text=True, timeout=280,
                         cwd=tmp_path, env={**os.environ, "JULIUS_ENVS": str(tmp_path / "envs")})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout.splitlines()[-1])["report"]
    assert report["verified"] is True and report["env_diff"]["same"] is True, report["env_diff"]
    rebuilt = report["isolated"][0]["python"]
    check = subprocess.run([rebuilt, "-I", "-c", "import jm_localpkg; print(jm_localpkg.ANSWER, jm_localpkg.__file__)"],
                           capture_output=True, text=True, timeout=60)
    answer, where = check.stdout.split()
    assert answer == "42" and where.startswith(str(tmp_path / "envs")), check.stdout + check.stderr
