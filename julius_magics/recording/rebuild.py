"""Rebuild a recording's environment with uv, replay in it, and find which package change broke a result.

A recorded environment (``environment.capture_environment``) holds every
distribution's exact version and origin, the package indexes, the Python version
and the platform.  From it:

- :func:`pin_set` makes the :class:`PinSet` to install (optionally with some
  packages taken from another environment: bisection);
- :func:`build_environment` builds a venv with ``uv venv`` on the recorded Python
  minor and ``uv pip install --no-deps`` of the exact pins from the recorded indexes,
  into a temporary folder renamed into place, cached at
  ``~/.julius/envs/<hash of the pin set>`` and reused only while its own freeze
  still matches;
- :func:`replay_isolated` replays a recording inside the rebuilt interpreter (a
  subprocess of the venv's Python, so the LocalCluster's scheduler and workers run
  on it too) and returns the report, whose ``env_diff`` must be empty;
- :func:`bisect_environment` rebuilds environments taking half of the changed
  packages from the recording and half from today, replaying only up to the first
  differing node, to name the package whose change alters it.

Editable and local installs cannot come from an index: they are copied from where
they are installed now if the version matches, installed from a wheel embedded in
the recording (:func:`build_local_wheels` makes them), or refused with the package
named.  Nothing is ever installed silently at another version.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from ..errors import JuliusError
from .environment import _index_urls, _normalize, capture_environment, env_diff, format_env_diff

__all__ = ["RebuildError", "PinSet", "pin_set", "build_environment", "replay_isolated", "bisect_environment",
           "build_local_wheels", "embed_local_wheels", "recorded_wheels", "uv_binary", "envs_root", "IsolatedReplay", "BisectReport", "recorded_pins", "run_isolated_job"]

PINS_FILE = "julius-pins.json"


class RebuildError(JuliusError):
    """An environment cannot be rebuilt as recorded (the message names what and why, in one line)."""


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


# --- pin sets -------------------------------------------------------------------------
@dataclass
class PinSet:
    """What one environment must hold: exact versions and where each comes from.

    Attributes
    ----------
    python : str
        Recorded Python version (``3.11.7``); the rebuild needs the same minor.
    packages : dict
        ``{name: version}``.
    origins : dict
        ``{name: origin}`` (``environment.distribution_origins``) for the packages whose
        origin is not an index.
    indexes : dict
        ``index_url``, ``extra_index_urls``, ``find_links``.
    platform : dict
        ``system``, ``machine``, ``platform_tag``, ``libc`` as recorded.
    """

    python: str
    packages: dict
    origins: dict = field(default_factory=dict)
    indexes: dict = field(default_factory=dict)
    platform: dict = field(default_factory=dict)

    @property
    def minor(self):
        return ".".join(self.python.split(".")[:2])

    def identity(self):
        """The JSON that defines the environment (what its hash is taken of)."""
        return {"python": self.python, "packages": dict(sorted(self.packages.items())),
                "origins": {k: self.origins[k] for k in sorted(self.origins)},
                "platform_tag": self.platform.get("platform_tag")}

    @property
    def key(self):
        """Hash of the pin set: the cache folder's name."""
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def pin_set(env, take=None, today=None):
    """The :class:`PinSet` of recorded environment ``env``.

    Parameters
    ----------
    env : dict
        A recorded environment.
    take : iterable of str, optional
        Packages to take from ``today`` instead (its version, or absent when today has
        none): the environments a bisection builds.
    today : dict, optional
        Today's environment (``capture_environment()`` of this process by default).
    """
    packages = dict(env.get("packages") or {})
    dists = env.get("distributions")
    if dists is None:
        # recorded before origins were: a package that is an editable/local install here at the
        # recorded version is taken as one (an index could hold another project under its name)
        from .environment import distribution_origins

        here = distribution_origins()
        dists = {n: d for n, d in here.items() if n in packages and _installed_version(n) == packages[n]}
    origins = {n: d["origin"] for n, d in dists.items()
               if n in packages and (d.get("origin") or {}).get("kind", "index") != "index"}
    if take:
        today = today or capture_environment()
        today_dists = today.get("distributions") or {}
        for name in take:
            origins.pop(name, None)
            if name in (today.get("packages") or {}):
                packages[name] = today["packages"][name]
                origin = (today_dists.get(name) or {}).get("origin") or {"kind": "index"}
                if origin.get("kind", "index") != "index":
                    origins[name] = origin
            else:
                packages.pop(name, None)
    os_ = env.get("os") or {}
    return PinSet(python=(env.get("python") or {}).get("version") or "", packages=packages, origins=origins,
                  indexes=_index_urls(env), platform={k: os_.get(k) for k in ("system", "machine", "platform_tag",
                                                                                 "libc")})


def _libc_version(text):
    match = re.search(r"(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_platform(pins):
    """Refuse, before anything is built, a pin set recorded for another OS, architecture or newer libc."""
    import platform as _platform

    from .environment import _platform_tag

    recorded = pins.platform
    if not recorded.get("system") and not recorded.get("platform_tag"):
        return   # recorded before platforms were: the install itself will tell
    libc, libc_version = _platform.libc_ver()
    current = {"system": _platform.system(), "machine": _platform.machine(), "platform_tag": _platform_tag(),
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
    """The most specific line of a uv failure: its last ``cause:``, else its ``error:`` line."""
    useful = [line.strip(" ×╰─▶│") for line in lines if line.strip(" ×╰─▶│")]
    causes = [line[len("cause:"):].strip() for line in useful if line.startswith("cause:")]
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
    """``{name: version}`` of what the venv's Python imports (its own "pip freeze")."""
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        return None
    code = ("import importlib.metadata as m, json, re\n"
            "seen = {}\n"
            "for d in m.distributions():\n"
            "    n = d.metadata['Name']\n"
            "    if n: seen.setdefault(re.sub(r'[-_.]+', '-', n).lower(), d.version)\n"
            "print(json.dumps(seen))")
    try:
        out = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout)
    except ValueError:
        return None


def _install_error(lines, pins, urls):
    """One line naming the package, the version and the index, from uv's failure output."""
    text = "\n".join(lines)
    where = ", ".join([urls["index_url"], *urls.get("extra_index_urls", []), *urls.get("find_links", [])])
    fetch = re.search(r"Failed to fetch:\s*`?([^`\s]+)`?", text)
    if fetch:
        url = fetch.group(1)
        name = _normalize(url.rstrip("/").rsplit("/", 1)[-1])
        version = pins.packages.get(name, "?")
        return (f"cannot install {name} {version}: the index {url.rstrip('/').rsplit('/', 1)[0]} is unreachable "
                f"({_last_error(lines)})")
    missing = re.search(r"no version of ([A-Za-z0-9_.\-]+)\s*==\s*([^\s,]+)", text) or re.search(
        r"([A-Za-z0-9_.\-]+)==([^\s,`]+)\s+(?:was not found|could not be found)", text)
    if missing:
        name, version = _normalize(missing.group(1)), missing.group(2)
        return f"cannot install {name} {version}: not found on {where} (yanked or removed from the index?)"
    not_found = re.search(r"`?([A-Za-z0-9_.\-]+)`? was not found in the (?:package registry|provided package locations)",
                          text)
    if not_found:
        name = _normalize(not_found.group(1))
        return f"cannot install {name} {pins.packages.get(name, '?')}: not found on {where}"
    return f"uv could not install the recorded pins from {where}: {_last_error(lines)}"


@dataclass
class BuiltEnvironment:
    """A rebuilt environment: its folder, its Python, whether it was reused, and how long it took."""

    path: str
    python: str
    key: str
    reused: bool
    seconds: float
    pins: PinSet

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
        if _freeze(target) == pins.packages:
            return BuiltEnvironment(target, os.path.join(target, "bin", "python"), pins.key, True,
                                    time.monotonic() - started, pins)
        _discard(target, root)   # changed since it was built: never reused
    check_platform(pins)
    local_wheels = {_normalize(k): v for k, v in (local_wheels or {}).items()}
    local = {n: o for n, o in pins.origins.items() if o.get("kind") in ("editable", "local")}
    plan = {}
    for name, origin in sorted(local.items()):
        version = pins.packages[name]
        if _installed_version(name) == version:
            plan[name] = "copy"
        elif name in local_wheels:
            plan[name] = local_wheels[name]
        else:
            here = _installed_version(name)
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
                    "--index-url", urls["index_url"], "--index-strategy", "unsafe-best-match", "-r", requirements]
            for url in urls.get("extra_index_urls", []):
                args += ["--extra-index-url", url]
            for url in urls.get("find_links", []):
                args += ["--find-links", url]
            rc, _, err = _run(args, progress=progress)
            if rc != 0:
                raise RebuildError(_install_error(err, pins, urls))
            yanked = [line for line in err if "yanked" in line.lower()]
            if yanked:
                match = re.search(r"`([A-Za-z0-9_.\-]+)==([^`]+)`", yanked[0])
                name, version = (_normalize(match.group(1)), match.group(2)) if match else ("?", "?")
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


def _installed_version(name):
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


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
    from .environment import _file_path, distribution_origins

    env = env or {"distributions": distribution_origins()}
    out_dir = out_dir or tempfile.mkdtemp(prefix="julius-wheels-")
    uv = uv_binary()
    wheels = {}
    for name, dist in sorted((env.get("distributions") or {}).items()):
        origin = dist.get("origin") or {}
        if origin.get("kind") not in ("editable", "local"):
            continue
        source = _file_path(origin.get("url"))
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


# --- replaying in a rebuilt environment -------------------------------------------------------
def _recorded(name, store, trust):
    from .steps import recorded_environment
    from .store import Store

    store = Store.coerce(store)
    recording = store.open(name, trust=trust)
    kernel, workers = recorded_environment(recording)
    if kernel is None:
        raise RebuildError(f"recording {name!r} holds no environment to rebuild")
    return store, recording, kernel, workers


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


def environments_for(kernel, workers, take=None, today=None):
    """One pin set per distinct recorded environment: ``(kernel pins, worker pins or None)``."""
    kernel_pins = pin_set(kernel, take, today)
    worker_pins = None
    for env in (workers or {}).values():
        pins = pin_set(env, take, today)
        if pins.key != kernel_pins.key:
            worker_pins = pins
            break
    return kernel_pins, worker_pins


def _job_command(python, worker_python, argv):
    """The replay job (``julius_magics.recording.replay_job``) on ``python``, its workers on ``worker_python``."""
    if not worker_python:
        return [python, "-m", "julius_magics.recording.replay_job", *argv]
    code = ("import sys, multiprocessing\n"
            f"multiprocessing.set_executable({worker_python!r})   # the workers' own environment\n"
            "from julius_magics.recording.replay_job import main\n"
            f"sys.exit(main({argv!r}))")
    return [python, "-c", code]


def _run_job(command, progress=None, cwd=None):
    """Run a JSON-lines replay job; returns the ``report`` event's report (raises on an ``error`` event)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=cwd,
                            env={k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")})
    report, error = None, None
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue   # a library's own print
        if not isinstance(event, dict):
            continue
        if event.get("event") == "progress" and progress:
            progress(event.get("done", 0), event.get("total", 0), event.get("message", ""))
        elif event.get("event") == "report":
            report = event.get("report")
        elif event.get("event") == "error":
            error = event.get("message")
    proc.wait()
    if error:
        raise JuliusError(error)
    if report is None:
        raise JuliusError(f"the replay in {command[0]} stopped (exit {proc.returncode}) without a report")
    return report


@dataclass
class IsolatedReplay:
    """An isolated replay: the report (as the replay job gave it) and the environments built for it.

    ``verified``, ``steps``, ``results``, ``mismatches``, ``env_diff`` and ``summary()`` read
    as a ``ReplayReport``'s. The replay ran in another process: its cluster is gone, and
    ``getdata`` in this kernel does not give replayed values.
    """

    name: str
    report: dict
    environments: list

    @property
    def verified(self):
        return bool(self.report.get("verified"))

    @property
    def steps(self):
        return self.report.get("steps", 0)

    @property
    def total_steps(self):
        return self.report.get("total_steps", 0)

    @property
    def results(self):
        return self.report.get("results", 0)

    @property
    def mismatches(self):
        return self.report.get("mismatches") or []

    @property
    def env_diff(self):
        return self.report.get("env_diff") or {}

    @property
    def env_same(self):
        return bool((self.report.get("env_diff") or {}).get("same", True))

    def as_dict(self):
        return {"name": self.name, "report": self.report, "environments": [e.as_dict() for e in self.environments],
                "verified": self.verified}

    def summary(self):
        built = "; ".join(f"{'reused' if e.reused else 'built'} {e.path} ({len(e.pins.packages)} pins, "
                          f"{e.seconds:.1f}s)" for e in self.environments)
        r = self.report
        head = (f"Isolated replay of {self.name!r}: {r.get('steps')}/{r.get('total_steps')} steps, "
                f"{r.get('results')} results compared -> "
                + ("VERIFIED: every result fingerprint matched" if self.verified else "NOT VERIFIED"))
        lines = [head, f"  environment: {built}",
                 "  environment as recorded" if self.env_same else
                 "  the rebuilt environment differs from the recorded one:\n"
                 + "\n".join("    " + line for line in format_env_diff(r.get("env_diff") or {}).splitlines())]
        for m in r.get("mismatches") or []:
            lines.append(f"  differs: {m.get('label') or m.get('node')} ({m.get('node')}): recorded "
                         f"{m.get('recorded_value')}, replayed {m.get('replayed_value')}")
        return "\n".join(lines)

    __str__ = summary


def _store_url(store):
    return store.url


def replay_isolated(name, store=None, n_workers=None, trust=False, python_install=False, progress=None,
                    build_progress=True, root=None, cwd=None, log=None):
    """Replay recording ``name`` inside its rebuilt environment.

    Parameters
    ----------
    name : str
    store : Store, str or None
    n_workers : int, optional
        Workers of the replay's LocalCluster (default: as recorded).
    trust : bool
        As for ``replay``.
    python_install : bool
        Let uv install a missing Python minor.
    progress : callable, optional
        ``progress(done, total, message)`` for the replay's steps.
    build_progress : bool
        Show uv's own progress while building.
    root : str, optional
        Cache of environments (:func:`envs_root`).
    cwd : str, optional
        Folder the replay runs in (relative input paths resolve against it).
    log : callable, optional
        ``log(text)`` before and after each environment is built.

    Returns
    -------
    IsolatedReplay
    """
    say = log or (lambda text: None)
    store, recording, kernel, workers = _recorded(name, store, trust)
    kernel_pins, worker_pins = environments_for(kernel, workers)
    envs = []
    with tempfile.TemporaryDirectory(prefix="julius-wheels-") as wheel_dir:
        wheels = recorded_wheels(recording, wheel_dir)
        for role, pins in (("kernel and workers" if worker_pins is None else "kernel", kernel_pins),
                           ("workers", worker_pins)):
            if pins is None:
                continue
            say(f"environment of the {role}: {len(pins.packages)} pins, Python {pins.python} "
                f"({os.path.join(root or envs_root(), pins.key)})")
            envs.append(build_environment(pins, wheels, python_install, build_progress, root))
            say(f"environment of the {role}: {'reused' if envs[-1].reused else 'built'} in {envs[-1].seconds:.1f}s")
    argv = [name, "--store", _store_url(store)]
    if n_workers:
        argv += ["-n", str(n_workers)]
    if trust:
        argv.append("--trust")
    worker_python = envs[1].python if len(envs) > 1 else None
    report = _run_job(_job_command(envs[0].python, worker_python, argv), progress, cwd)
    return IsolatedReplay(name, report, envs)


# --- bisecting the environment -------------------------------------------------------------
def _result_step(recording, node):
    """Index of the step holding the recorded result of ``node`` (a node id or a Dask key)."""
    from . import steps as step_kinds

    for i, step in enumerate(recording.steps):
        if node in step_kinds.results(step):
            return i
    raise RebuildError(f"recording {recording.name!r} holds no result of node {node!r}")


def replay_until(name, nodes, store=None, trust=False, n_workers=None):
    """Replay recording ``name`` only up to the last step that computes one of ``nodes``; which still match?

    The steps after it are not replayed. Runs in this process (inside a rebuilt
    environment, as a bisection's probe).

    Returns
    -------
    dict
        ``differs`` (``{node: bool}``), ``steps`` (replayed), ``total_steps``.
    """
    from ..cluster.session import Session
    from ..rules.registry import RuleBook
    from . import steps as step_kinds
    from .replay import ReplayReport, _Context, prepare_inputs
    from .store import Store

    nodes = [nodes] if isinstance(nodes, str) else list(nodes)
    store = Store.coerce(store)
    recording = store.open(name, trust=trust)
    upto = max(_result_step(recording, node) for node in nodes)
    report = ReplayReport(name)
    mapping = prepare_inputs(recording, report)
    spec = next((s.data for s in recording.steps if s.kind == "cluster"), {})
    session = Session(rulebook=RuleBook(), seed=spec.get("seed", 0), progress=False)
    session.start(n_workers=n_workers or spec.get("n_workers") or 2,
                  threads_per_worker=spec.get("threads_per_worker") or 1)
    try:
        if mapping:
            session.set_input_map(mapping)
        context = _Context(session, recording, report)   # the replay's own step functions, up to ``upto``
        for step in recording.steps[:upto + 1]:
            kind = step_kinds.kind_of(step, f"recording {name!r}")
            if kind.replay is not None:
                kind.replay(context, step)
    finally:
        session.stop()
    differing = {m["node"] for m in report.mismatches}
    return {"differs": {node: node in differing for node in nodes}, "steps": upto + 1,
            "total_steps": len(recording.steps)}


@dataclass
class BisectReport:
    """What a bisection of the environment found.

    Attributes
    ----------
    message : str
        One line per differing result: "pandas 2.2.3 → 3.1.1 changes `ml.select` (node …)",
        or why nothing could be attributed.
    culprits : list of dict
        Per differing result: ``node``, ``label``, ``name`` (the package), ``recorded`` and
        ``today`` (versions, None when absent).
    node, label, culprit
        The first differing result and its culprit (``name``, ``recorded``, ``today``).
    changed : list of str
        Packages that differ between the recording and today.
    rebuilds : list of dict
        Each environment probed: ``take`` (packages from today), ``differs`` (of the
        first result), ``reused``, ``seconds`` (build), ``replay_seconds``, ``error``.
    """

    name: str
    message: str
    node: str | None = None
    label: str | None = None
    culprit: dict | None = None
    changed: list = field(default_factory=list)
    rebuilds: list = field(default_factory=list)
    culprits: list = field(default_factory=list)

    def as_dict(self):
        return {"name": self.name, "message": self.message, "node": self.node, "label": self.label,
                "culprit": self.culprit, "culprits": self.culprits, "changed": self.changed,
                "rebuilds": self.rebuilds}

    def summary(self):
        lines = [self.message]
        for r in self.rebuilds:
            took = ", ".join(r["take"]) or "nothing"
            outcome = "replay failed" if r.get("error") else "differs" if r["differs"] else "matches"
            lines.append(f"  rebuild {r['n']}: recorded pins, from today: {took} -> "
                         f"{outcome} ({'reused' if r['reused'] else 'built'} "
                         f"{r['seconds']:.1f}s, replay {r['replay_seconds']:.1f}s)")
        return "\n".join(lines)

    __str__ = summary


def _versions(env, name):
    return (env.get("packages") or {}).get(name)


def bisect_environment(name, store=None, trust=False, n_workers=None, python_install=False, root=None,
                       today_report=None, isolated=None, log=None, max_results=10):
    """Find, per result that differs in today's replay, which package change alters it.

    Today's replay (in this process's environment) must differ and the isolated
    replay (in the recorded environment) must verify; then environments taking half
    of the changed packages from the recording and half from today are rebuilt,
    each replayed only up to the differing results, at most ⌈log2(changed)⌉ times
    after the isolated one for the first result. Each probe checks every differing
    result at once, so results that follow the same path cost nothing more; the
    others reuse the environments already built (uv's cache, and this cache).

    Parameters
    ----------
    name, store, trust, n_workers, python_install, root
        As for :func:`replay_isolated`.
    today_report : dict, optional
        Today's replay report, if already run (else it is run, in a subprocess of this Python).
    isolated : IsolatedReplay, optional
        The isolated replay, if already run.
    log : callable, optional
        ``log(text)`` for each step of the bisection.
    max_results : int
        Attribute at most this many differing results (the first ones).

    Returns
    -------
    BisectReport
    """
    say = log or (lambda text: None)
    store, recording, kernel, workers = _recorded(name, store, trust)
    url = _store_url(store)
    options = (["-n", str(n_workers)] if n_workers else []) + (["--trust"] if trust else [])
    if today_report is None:
        say("replaying in today's environment")
        today_report = _run_job(_job_command(sys.executable, None, [name, "--store", url, *options]))
    if today_report.get("verified"):
        return BisectReport(name, f"today's replay of {name!r} verifies: there is no difference to attribute")
    mismatches = list(today_report.get("mismatches") or [])
    if not mismatches:
        return BisectReport(name, f"today's replay of {name!r} does not verify, but no result differs: "
                                  "nothing for an environment bisection to attribute")
    labels = {}
    for m in mismatches:
        labels.setdefault(m["node"], m.get("label") or m["node"])
    nodes = list(labels)[:max_results]
    node, label = nodes[0], labels[nodes[0]]
    if isolated is None:
        say("replaying in the recorded environment (--isolated)")
        isolated = replay_isolated(name, store, n_workers, trust, python_install, root=root, build_progress=False)
    rebuilds = [{"n": 1, "take": [], "differs": not isolated.verified, "error": None,
                 "reused": isolated.environments[0].reused, "seconds": sum(e.seconds for e in isolated.environments),
                 "replay_seconds": (isolated.report.get("timings") or {}).get("replay") or 0.0}]
    if not isolated.verified:
        return BisectReport(name, f"the isolated replay of {name!r} does not verify either: the difference is not "
                                  "(only) the environment", node, label, rebuilds=rebuilds)
    today = capture_environment()
    recorded_pkgs, today_pkgs = kernel.get("packages") or {}, today.get("packages") or {}
    changed = sorted(n for n in recorded_pkgs.keys() | today_pkgs.keys() if recorded_pkgs.get(n) != today_pkgs.get(n))
    if not changed:
        return BisectReport(name, f"no package differs between recording {name!r} and today, yet {label} differs: "
                                  "the cause is outside the packages (Python, OS, CPU, or code and data)",
                            node, label, rebuilds=rebuilds)
    say(f"{len(changed)} changed packages: {', '.join(changed)}; {len(nodes)} differing result(s), "
        f"the first {label} ({node})")
    probes = {}   # tuple(take) -> {node: differs}

    def probe(take, wanted):
        key = tuple(take)
        if key in probes and all(n in probes[key] for n in wanted):
            return probes[key]
        kernel_pins, worker_pins = environments_for(kernel, workers, take, today)
        envs = [build_environment(kernel_pins, None, python_install, False, root)]
        if worker_pins is not None:
            envs.append(build_environment(worker_pins, None, python_install, False, root))
        t0 = time.monotonic()
        code = ("import sys\n"
                + (f"import multiprocessing; multiprocessing.set_executable({envs[1].python!r})\n"
                   if len(envs) > 1 else "")
                + "from julius_magics.recording.rebuild import _probe_main\n"
                f"sys.exit(_probe_main({[url, name, list(wanted), n_workers, trust]!r}))")
        try:
            outcome, error = _run_job([envs[0].python, "-c", code])["differs"], None
        except JuliusError as e:
            outcome, error = None, str(e)
        rebuilds.append({"n": len(rebuilds) + 1, "take": list(take), "differs": (outcome or {}).get(wanted[0]),
                         "error": error, "reused": envs[0].reused, "seconds": sum(e.seconds for e in envs),
                         "replay_seconds": time.monotonic() - t0})
        if error is not None:   # a mix that cannot run says nothing about which package changes a node
            raise RebuildError(f"the replay failed with {', '.join(take)} from today: {error}")
        say(f"rebuild {len(rebuilds)}: from today {', '.join(take)} -> "
            + ", ".join(f"{labels[n]} {'differs' if outcome[n] else 'matches'}" for n in wanted))
        probes[key] = {**probes.get(key, {}), **outcome}
        return probes[key]

    culprits = []
    try:
        for target in nodes:
            fixed, candidates = [], list(changed)
            while len(candidates) > 1:
                half = candidates[:math.ceil(len(candidates) / 2)]
                pending = [n for n in nodes if n not in {c["node"] for c in culprits}]
                if probe(fixed + half, [target] + [n for n in pending if n != target])[target]:
                    candidates = half
                else:
                    fixed += half
                    candidates = candidates[len(half):]
            package = candidates[0]
            culprits.append({"node": target, "label": labels[target], "name": package,
                             "recorded": _versions(kernel, package), "today": _versions(today, package)})
    except RebuildError as e:
        lines = [_culprit_line(c) for c in culprits]
        return BisectReport(name, "\n".join(lines + [f"cannot attribute the remaining differing results: {e}"]),
                            node, label, culprits[0] if culprits else None, changed, rebuilds, culprits)
    first = culprits[0]
    return BisectReport(name, "\n".join(_culprit_line(c) for c in culprits), node, label,
                        {k: first[k] for k in ("name", "recorded", "today")}, changed, rebuilds, culprits)


def _culprit_line(c):
    return (f"{c['name']} {c['recorded'] or 'absent'} → {c['today'] or 'absent'} changes `{c['label']}` "
            f"(node {c['node']})")


def _probe_main(args):
    """A bisection's probe, run in a rebuilt environment: one JSON ``report`` line on stdout."""
    import contextlib

    url, name, nodes, n_workers, trust = args
    try:
        with contextlib.redirect_stdout(sys.stderr):   # only the event on stdout
            result = replay_until(name, nodes, url, trust, n_workers)
    except JuliusError as e:
        print(json.dumps({"event": "error", "message": str(e)}), flush=True)
        return 1
    except Exception as e:   # the mixed environment itself broke (an import, an API): reported, not raised
        print(json.dumps({"event": "error", "message": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(json.dumps({"event": "report", "report": result}, default=str), flush=True)
    return 0


def recorded_pins(name, store=None, fmt="requirements", which="kernel"):
    """The recorded environment of ``name`` as pins text (``julius env NAME --format FMT``).

    Parameters
    ----------
    fmt : {"requirements", "uv-lock", "conda"}
    which : str
        ``kernel``, or a worker's address (as ``julius show`` lists them).
    """
    from .environment import render_pins

    _, recording, kernel, workers = _recorded(name, store, True)   # JSON only: nothing is unpickled
    env = kernel if which == "kernel" else workers.get(which)
    if env is None:
        raise RebuildError(f"recording {name!r} has no environment of {which!r}: kernel or one of "
                           + ", ".join(sorted(workers)))
    return render_pins(env, fmt) + "\n"


# --- the isolated replay as a process: the same JSON lines as a replay job -------------------------
def run_isolated_job(name, write, **options):
    """Rebuild and replay ``name`` isolated, passing JSON-able events to ``write``; return the exit status.

    The events are those of a replay job (``{"event": "progress" | "report" | "error", ...}``):
    building the environment shows as progress messages, and the report carries
    ``"isolated": [environment, ...]`` besides the replay's own fields. Exit status:
    0 verified, 1 not verified, 2 refused or error.
    """
    def progress(done, total, message):
        write({"event": "progress", "done": done, "total": total, "message": message})

    try:
        result = replay_isolated(name, progress=progress, build_progress=False,
                                 log=lambda text: progress(0, 0, text), **options)
    except JuliusError as e:
        write({"event": "error", "message": str(e)})
        return 2
    write({"event": "report", "report": {**result.report, "isolated": [e.as_dict() for e in result.environments]}})
    return 0 if result.verified else 1


def main(argv=None):
    """``python -m julius_magics.recording.rebuild NAME [--store URL] [-n N] [--trust] [--python-install]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m julius_magics.recording.rebuild",
                                     description="Replay a recording in its rebuilt environment; JSON lines out.")
    parser.add_argument("name")
    parser.add_argument("--store", default=None)
    parser.add_argument("-n", "--workers", type=int, default=None)
    parser.add_argument("--trust", action="store_true")
    parser.add_argument("--python-install", action="store_true")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"-n must be at least 1, not {args.workers}")
    out = sys.stdout

    def write(event):
        out.write(json.dumps(event, default=str) + "\n")
        out.flush()

    import contextlib

    with contextlib.redirect_stdout(sys.stderr):   # only events on stdout
        return run_isolated_job(args.name, write, store=args.store, n_workers=args.workers, trust=args.trust,
                                python_install=args.python_install)


if __name__ == "__main__":
    sys.exit(main())
