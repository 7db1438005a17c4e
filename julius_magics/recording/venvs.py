"""Build a recorded pin set into a venv with uv, and cache it.

:func:`build_environment` checks the platform (:func:`check_platform`) and finds the
recorded Python minor (:func:`find_python`), then makes a venv with ``uv venv`` and
``uv pip install --no-deps`` of the exact pins from the recorded indexes, in a
temporary folder renamed into place: cached at ``~/.julius/envs/<hash of the pin set>``
(:func:`envs_root`) and reused only while its own freeze still matches.

Editable and local installs cannot come from an index: they are copied from where
they are installed now if the version matches, installed from a wheel embedded in
the recording (:func:`build_local_wheels`, :func:`embed_local_wheels`,
:func:`recorded_wheels`), or refused with the package named.  Nothing is ever
installed silently at another version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from .environment import distribution_origins, file_path, installed_version, normalize_name, platform_tag
from .pins import PinSet, RebuildError

__all__ = ["build_environment", "BuiltEnvironment", "check_platform", "find_python", "build_local_wheels", "lock_pins",
           "embed_local_wheels", "recorded_wheels", "uv_binary", "envs_root", "PINS_FILE"]

PINS_FILE = "julius-pins.json"

def uv_binary() -> str:
    """The ``uv`` executable: the one the ``uv`` package ships, else the one on ``PATH``."""
    try:
        import uv

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise RebuildError("uv is not installed here: `pip install uv` (it rebuilds recorded environments)")


def envs_root() -> str:
    """Where rebuilt environments are cached: ``$JULIUS_ENVS`` or ``~/.julius/envs``."""
    return os.environ.get("JULIUS_ENVS") or os.path.join(os.path.expanduser("~"), ".julius", "envs")


def _uv_env():
    """The environment uv runs in: never the caller's virtualenv (uv would pick its interpreter)."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH")}


# --- can this machine build it -------------------------------------------------------------
def _libc_version(text):
    match = re.search(r"(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_platform(pins):
    """Refuse, before anything is built, a pin set recorded for another OS, architecture or newer libc."""
    import platform as _platform

    recorded = pins.platform
    if not recorded.get("system") and not recorded.get("platform_tag"):
        return   # recorded before platforms were: the install itself will tell
    libc, libc_version = _platform.libc_ver()
    current = {"system": _platform.system(), "machine": _platform.machine(), "platform_tag": platform_tag(),
               "libc": f"{libc} {libc_version}".strip()}

    def show(p):
        return f"{p.get('platform_tag') or p.get('system')} ({p.get('libc') or 'no libc recorded'})"

    same = all(recorded.get(k) in (None, current[k]) for k in ("system", "machine", "platform_tag"))
    old, new = _libc_version(recorded.get("libc")), _libc_version(current["libc"])
    # wheels built for glibc 2.36 need at least that glibc; musl is another platform altogether
    recorded_libc = (recorded.get("libc") or "").split()[:1]
    libc_ok = not recorded_libc or (recorded_libc == current["libc"].split()[:1]
                                    and (old is None or new is None or old <= new))
    if not same or not libc_ok:
        raise RebuildError(f"the recorded environment was built for {show(recorded)} and cannot be installed on "
                           f"this platform, {show(current)}: replay it on a matching machine")


# --- building ---------------------------------------------------------------------------
def _run(args, progress=False, **kwargs):
    """Run a uv command; its stderr goes to ours while it runs (uv's own progress) and is kept."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_uv_env(),
                            **kwargs)
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if progress:
            sys.stderr.write(line)
            sys.stderr.flush()
    out = proc.stdout.read()
    proc.wait()
    return proc.returncode, out, lines


def find_python(version, install=False):
    """The path of an interpreter of ``version``'s minor (the exact version preferred).

    Refuses with one line naming the version when there is none, unless ``install``,
    then ``uv python install`` fetches it.
    """
    uv = uv_binary()
    minor = ".".join(version.split(".")[:2])
    for request in (version, minor):
        rc, out, _ = _run([uv, "python", "find", "--no-config", "--no-python-downloads", "--system", request])
        if rc == 0 and out.strip():
            return out.strip()
    if not install:
        raise RebuildError(f"Python {minor} (recorded {version}) is not installed here: install it "
                           f"(`uv python install {minor}`, or replay with --python-install)")
    rc, _, err = _run([uv, "python", "install", "--no-config", minor], progress=True)
    if rc != 0:
        raise RebuildError(f"Python {minor} (recorded {version}) is not installed here and `uv python install "
                           f"{minor}` failed: {_last_error(err)}")
    rc, out, err = _run([uv, "python", "find", "--no-config", minor])
    if rc != 0 or not out.strip():
        raise RebuildError(f"Python {minor} was installed but uv cannot find it: {_last_error(err)}")
    return out.strip()


def _last_error(lines):
    """A uv failure in one line: its first and last ``cause:`` (what it tried, why it failed), else its ``error:``."""
    useful = [line.strip(" ×╰─▶│") for line in lines if line.strip(" ×╰─▶│")]
    causes = [line[len("cause:"):].strip() for line in useful if line.startswith("cause:")]
    if len(causes) > 1:
        return f"{causes[0]}: {causes[-1]}"
    errors = [line for line in useful if line.lower().startswith("error")]
    return (causes or errors or useful or ["no message"])[-1]


def _requirement(name, version, origin):
    kind = (origin or {}).get("kind", "index")
    if kind == "vcs":
        commit = f"@{origin['commit']}" if origin.get("commit") else ""
        return f"{name} @ {origin.get('vcs') or 'git'}+{origin['url']}{commit}"
    if kind == "url":
        return f"{name} @ {origin['url']}"
    return f"{name}=={version}"


def _site_packages(venv, minor):
    return os.path.join(venv, "lib", f"python{minor}", "site-packages")


def _copy_installed(name, version, site_packages):
    """Copy the distribution ``name`` as installed in this process (its RECORD) into ``site_packages``.

    An editable install's ``.pth`` file points at the same source folder; a local
    install's files are copied.  Returns False when it is not installed here at ``version``.
    """
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    if dist.version != version or dist.files is None:
        return False
    for rel in dist.files:
        parts = rel.parts
        if parts and parts[0] == "..":
            continue   # console scripts and data outside site-packages: not needed to import it
        src = dist.locate_file(rel)
        if not os.path.isfile(src):
            continue
        dest = os.path.join(site_packages, *parts)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(src, dest)
    return True


def _freeze(venv):
    """``{name: version}`` of what the venv's Python imports (its own "pip freeze"), or None when it cannot run.

    Read from its site-packages in this process (what ``python -I`` of the venv finds
    there), without starting its interpreter: a reused environment costs no process.
    """
    import glob
    import importlib.metadata

    python = os.path.join(venv, "bin", "python")
    sites = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
    if not os.path.exists(python) or len(sites) != 1:   # a dangling interpreter link, or not one Python
        return None
    seen = {}
    for dist in importlib.metadata.distributions(path=sites):
        name = dist.metadata["Name"]
        if name:
            seen.setdefault(normalize_name(name), dist.version)
    return seen


def _installed_names(venv):
    """``{name: version}`` as the venv's ``NAME-VERSION.dist-info`` folders say (None when unclear).

    What :func:`_freeze` reads from each one's metadata, from the folder names alone (a
    hundredth of the time): installers name them after the metadata, so when they hold
    exactly the pins, so does the metadata. Two folders of one name, or any other oddity:
    None, and the metadata decides.
    """
    import glob

    sites = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
    if not os.path.exists(os.path.join(venv, "bin", "python")) or len(sites) != 1:
        return None
    seen = {}
    for entry in os.listdir(sites[0]):
        if entry.endswith((".dist-info", ".egg-info")):
            name, _, version = entry.rpartition(".")[0].partition("-")
            if not version or normalize_name(name) in seen:
                return None
            seen[normalize_name(name)] = version
    return seen


def _install_error(lines, pins, urls):
    """One line naming the package, the version and the index, from uv's failure output."""
    text = "\n".join(lines)
    where = ", ".join([urls["index_url"], *urls.get("extra_index_urls", []), *urls.get("find_links", [])])
    fetch = re.search(r"Failed to fetch:\s*`?([^`\s]+)`?", text)
    if fetch:
        url = fetch.group(1)
        name = normalize_name(url.rstrip("/").rsplit("/", 1)[-1])
        version = pins.packages.get(name, "?")
        return (f"cannot install {name} {version}: the index {url.rstrip('/').rsplit('/', 1)[0]} is unreachable "
                f"({_last_error(lines)})")
    missing = re.search(r"no version of ([A-Za-z0-9_.\-]+)\s*==\s*([^\s,]+)", text) or re.search(
        r"([A-Za-z0-9_.\-]+)==([^\s,`]+)\s+(?:was not found|could not be found)", text)
    if missing:
        name, version = normalize_name(missing.group(1)), missing.group(2)
        return f"cannot install {name} {version}: not found on {where} (yanked or removed from the index?)"
    not_found = re.search(r"`?([A-Za-z0-9_.\-]+)`? was not found in the (?:package registry|provided package locations)",
                          text)
    if not_found:
        name = normalize_name(not_found.group(1))
        return f"cannot install {name} {pins.packages.get(name, '?')}: not found on {where}"
    return f"uv could not install the recorded pins from {where}: {_last_error(lines)}"


def _index_args(urls):
    """uv's options for the recorded indexes: every one searched for each exact pin."""
    args = ["--index-url", urls["index_url"], "--index-strategy", "unsafe-best-match"]
    for url in urls.get("extra_index_urls", []):
        args += ["--extra-index-url", url]
    for url in urls.get("find_links", []):
        args += ["--find-links", url]
    return args


def _uv_platform(platform):
    """uv's ``--python-platform`` for a recorded platform (None when it has no name for it)."""
    system, machine = platform.get("system"), platform.get("machine")
    if system == "Linux" and machine:
        libc = platform.get("libc") or ""
        if libc.startswith("musl"):
            return f"{machine}-unknown-linux-musl"
        version = _libc_version(libc)
        return f"{machine}-manylinux_{version[0]}_{version[1]}" if version else f"{machine}-unknown-linux-gnu"
    if system == "Darwin" and machine:
        return f"{'aarch64' if machine == 'arm64' else machine}-apple-darwin"
    if system == "Windows":
        return {"AMD64": "x86_64-pc-windows-msvc", "ARM64": "aarch64-pc-windows-msvc"}.get(machine)
    return None


def lock_pins(pins):
    """``pins`` as a PEP 751 lock (``pylock.toml``) that uv installs: ``uv pip sync pylock.toml``.

    uv resolves the exact pins, without their dependencies, on the recorded indexes for
    the recorded Python and platform, and writes each package's files with the
    index's URLs and sha256 hashes. Editable and local installs cannot be locked (no
    index has them): they are listed in the header, and left out.

    Raises
    ------
    RebuildError
        The index is unreachable or a pin is not on it: one line naming the package,
        the version and the index.
    """
    local = sorted(n for n, o in pins.origins.items() if o.get("kind") in ("editable", "local"))
    lines = [_requirement(n, v, pins.origins.get(n)) for n, v in sorted(pins.packages.items()) if n not in local]
    urls = pins.indexes or {"index_url": "https://pypi.org/simple"}
    with tempfile.TemporaryDirectory(prefix="julius-lock-") as tmp:
        requirements, out = os.path.join(tmp, "requirements.txt"), os.path.join(tmp, "pylock.toml")
        with open(requirements, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        target = _uv_platform(pins.platform)
        rc, _, err = _run([uv_binary(), "pip", "compile", "--no-config", "--no-deps", "--no-header", "--format",
                           "pylock.toml", "--python-version", pins.python or pins.minor,
                           *(["--python-platform", target] if target else []), *_index_args(urls), "-q", "-o", out,
                           requirements])
        if rc != 0:
            raise RebuildError(_install_error(err, pins, urls))
        with open(out, encoding="utf-8") as f:
            body = f.read()
    header = [f"# the recorded environment as a PEP 751 lock (julius env --format uv-lock): Python {pins.python}"
              f"{', ' + target if target else ''}; install it with `uv pip sync pylock.toml`"]
    header += [f"# {n}=={pins.packages[n]}  ({pins.origins[n]['kind']} install from {pins.origins[n].get('url')}: "
               "not on an index, not locked)" for n in local]
    return "\n".join(header) + "\n" + body


@dataclass
class BuiltEnvironment:
    """A rebuilt environment: its folder, its Python, whether it was reused, and how long it took."""

    path: str
    python: str
    key: str
    reused: bool
    seconds: float
    pins: PinSet

    @property
    def pycache(self):
        """Where the processes of replays on this Python keep their bytecode (``PYTHONPYCACHEPREFIX``)."""
        return os.path.join(self.path, "pycache")

    def as_dict(self):
        return {"path": self.path, "python": self.python, "key": self.key, "reused": self.reused,
                "seconds": round(self.seconds, 2), "packages": len(self.pins.packages)}


def build_environment(pins, local_wheels=None, python_install=False, progress=True, root=None):
    """Build (or reuse) the venv of ``pins`` and return it.

    Parameters
    ----------
    pins : PinSet
    local_wheels : dict, optional
        ``{name: path of a wheel}`` for editable/local installs (embedded in the recording).
    python_install : bool
        Let ``uv python install`` fetch a missing Python minor.
    progress : bool
        Show uv's own progress on stderr.
    root : str, optional
        The cache folder (:func:`envs_root` by default).

    Returns
    -------
    BuiltEnvironment

    Raises
    ------
    RebuildError
        Another platform, a missing Python, an editable or local package that is not
        here at its version and has no wheel, an unreachable index or a missing (yanked)
        pin: one line naming it.
    """
    started = time.monotonic()
    root = root or envs_root()
    os.makedirs(root, exist_ok=True)
    target = os.path.join(root, pins.key)
    if os.path.isdir(target):
        if pins.packages in (_installed_names(target), _freeze(target)):   # the first is quick, the second exact
            return BuiltEnvironment(target, os.path.join(target, "bin", "python"), pins.key, True,
                                    time.monotonic() - started, pins)
        _discard(target, root)   # changed since it was built: never reused
    check_platform(pins)
    local_wheels = {normalize_name(k): v for k, v in (local_wheels or {}).items()}
    local = {n: o for n, o in pins.origins.items() if o.get("kind") in ("editable", "local")}
    plan = {}
    for name, origin in sorted(local.items()):
        version = pins.packages[name]
        if installed_version(name) == version:
            plan[name] = "copy"
        elif name in local_wheels:
            plan[name] = local_wheels[name]
        else:
            here = installed_version(name)
            raise RebuildError(
                f"{name} {version} was an {origin['kind']} install ({origin.get('url')}) and is "
                + (f"{here} here" if here else "not installed here")
                + ": no index has it and the recording holds no wheel of it (record with --with-local-packages)")
    python = find_python(pins.python, install=python_install)
    uv = uv_binary()
    tmp = tempfile.mkdtemp(prefix=f".{pins.key}-", dir=root)
    try:
        venv = os.path.join(tmp, "venv")
        rc, _, err = _run([uv, "venv", "--no-config", "--no-python-downloads", "--relocatable", "-q",
                           "--python", python, venv])
        if rc != 0:
            raise RebuildError(f"uv venv failed for Python {pins.python}: {_last_error(err)}")
        site = _site_packages(venv, pins.minor)
        if not os.path.isdir(site):
            raise RebuildError(f"uv made no Python {pins.minor} environment (recorded {pins.python}): "
                               f"found {os.listdir(os.path.join(venv, 'lib'))}")
        lines = [_requirement(n, v, pins.origins.get(n)) for n, v in sorted(pins.packages.items()) if n not in plan]
        lines += [plan[n] for n in sorted(plan) if plan[n] != "copy"]   # embedded wheels
        if lines:
            requirements = os.path.join(tmp, "requirements.txt")
            with open(requirements, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            urls = pins.indexes or {"index_url": "https://pypi.org/simple"}
            args = [uv, "pip", "install", "--no-config", "--no-deps", "--python", os.path.join(venv, "bin", "python"),
                    *_index_args(urls), "-r", requirements]
            rc, _, err = _run(args, progress=progress)
            if rc != 0:
                raise RebuildError(_install_error(err, pins, urls))
            yanked = [line for line in err if "yanked" in line.lower()]
            if yanked:
                match = re.search(r"`([A-Za-z0-9_.\-]+)==([^`]+)`", yanked[0])
                name, version = (normalize_name(match.group(1)), match.group(2)) if match else ("?", "?")
                raise RebuildError(f"cannot install {name} {version}: it has been yanked from "
                                   f"{urls['index_url']} ({yanked[0].strip()})")
        for name in sorted(n for n, how in plan.items() if how == "copy"):
            _copy_installed(name, pins.packages[name], site)
        frozen = _freeze(venv)
        if frozen != pins.packages:
            frozen = frozen or {}
            wrong = sorted(n for n in pins.packages.keys() | frozen.keys() if pins.packages.get(n) != frozen.get(n))
            raise RebuildError("the rebuilt environment does not hold the recorded pins: " + ", ".join(
                f"{n} {pins.packages.get(n, 'absent')} -> {frozen.get(n, 'absent')}" for n in wrong[:8]))
        with open(os.path.join(venv, PINS_FILE), "w", encoding="utf-8") as f:
            json.dump(pins.identity(), f, indent=1, sort_keys=True)
        try:
            os.rename(venv, target)   # atomic: a half-built environment is never under its final name
        except OSError:
            if not (os.path.isdir(target) and _freeze(target) == pins.packages):   # built meanwhile by another
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BuiltEnvironment(target, os.path.join(target, "bin", "python"), pins.key, False,
                            time.monotonic() - started, pins)


def _discard(path, root):
    """Move ``path`` aside, then delete it (a rename is atomic; a deletion may stop halfway)."""
    aside = tempfile.mkdtemp(prefix=".stale-", dir=root)
    os.rename(path, os.path.join(aside, "env"))
    shutil.rmtree(aside, ignore_errors=True)


def build_local_wheels(env=None, out_dir=None, progress=False):
    """Build wheels of the editable and local installs of ``env`` (default: this process).

    For ``%record start --with-local-packages``: the wheels are embedded in the
    recording so that a rebuild can install them when the source has moved on.

    Returns
    -------
    dict
        ``{name: path of the wheel}``; the source folders that no longer exist are skipped.
    """
    env = env or {"distributions": distribution_origins()}
    out_dir = out_dir or tempfile.mkdtemp(prefix="julius-wheels-")
    uv = uv_binary()
    wheels = {}
    for name, dist in sorted((env.get("distributions") or {}).items()):
        origin = dist.get("origin") or {}
        if origin.get("kind") not in ("editable", "local"):
            continue
        source = file_path(origin.get("url"))
        if not os.path.isdir(source):
            continue   # a local wheel file or a vanished folder: nothing to build from
        dest = os.path.join(out_dir, name)
        rc, _, err = _run([uv, "build", "--no-config", "--wheel", "--out-dir", dest, source], progress=progress)
        if rc != 0:
            raise RebuildError(f"cannot build a wheel of {name} from {source}: {_last_error(err)}")
        built = sorted(f for f in os.listdir(dest) if f.endswith(".whl"))
        if built:
            wheels[name] = os.path.join(dest, built[-1])
    return wheels


def embed_local_wheels(writer, env=None, progress=False):
    """Build wheels of the editable/local installs and add them to a recording being written.

    The hook of ``%record start --with-local-packages``: the recorder puts the result
    in its ``environment`` step as ``"wheels"``, where :func:`recorded_wheels` finds them.

    Returns
    -------
    dict
        ``{name: {"filename", "sha256"}}`` (blob hashes of ``writer``).
    """
    with tempfile.TemporaryDirectory(prefix="julius-wheels-") as out_dir:
        return {name: {"filename": os.path.basename(path), "sha256": writer.add_blob(path)}
                for name, path in build_local_wheels(env, out_dir, progress).items()}


def recorded_wheels(recording, out_dir):
    """Wheels of local packages embedded in ``recording`` (``environment`` step ``wheels``), as files."""
    wheels = {}
    os.makedirs(out_dir, exist_ok=True)
    for step in recording.steps:
        if step.kind == "environment":
            for name, entry in (step.data.get("wheels") or {}).items():
                path = os.path.join(out_dir, os.path.basename(entry["filename"]))
                recording.blob_to_file(entry["sha256"], path)
                wheels[name] = path
    return wheels

