"""What a recorded environment must hold: the pin sets a rebuild installs, and the pins as text.

- :func:`recorded_environments` reads a recording's kernel and worker environments;
- :func:`pin_set` makes the :class:`PinSet` to install from one of them (optionally
  with some packages taken from another environment: bisection), and
  :func:`environments_for` one pin set per distinct environment;
- :func:`render_pins` writes them for people and other tools, in one of
  :data:`PIN_FORMATS` (``julius env NAME --format``; :func:`recorded_pins`).

Building a pin set into a venv is :mod:`.venvs`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ..errors import JuliusError
from .environment import capture_environment, distribution_origins, installed_version

__all__ = ["RebuildError", "PinSet", "pin_set", "environments_for", "recorded_environments", "index_urls",
           "PIN_FORMATS", "requirements", "uv_lock", "conda_environment", "render_pins", "recorded_pins"]


class RebuildError(JuliusError):
    """An environment cannot be rebuilt as recorded (the message names what and why, in one line)."""



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
        here = distribution_origins()
        dists = {n: d for n, d in here.items() if n in packages and installed_version(n) == packages[n]}
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
                  indexes=index_urls(env), platform={k: os_.get(k) for k in ("system", "machine", "platform_tag",
                                                                                 "libc")})



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



def recorded_environments(name, store, trust_key=None, any_signer=False):
    """``(store, recording, kernel environment, {worker address: environment})`` of recording ``name``.

    ``trust_key`` and ``any_signer`` as for :meth:`Store.open` (``any_signer`` only where nothing is unpickled).
    """
    from .steps import recorded_environment
    from .store import Store

    store = Store.coerce(store)
    recording = store.open(name, trust_key=trust_key, any_signer=any_signer)
    kernel, workers = recorded_environment(recording)
    if kernel is None:
        raise RebuildError(f"recording {name!r} holds no environment to rebuild")
    return store, recording, kernel, workers



PIN_FORMATS = ("requirements", "uv-lock", "conda")


def _origin_of(env, name):
    return ((env.get("distributions") or {}).get(name) or {}).get("origin") or {"kind": "index"}


def index_urls(env):
    """The recorded package indexes a rebuild uses: the installer's own first, the other's as extras.

    uv does not read pip's config files, nor pip uv's: the main index is that of the tool
    that installed most distributions; every other recorded index and find-links
    location is kept, since an exact pin is found wherever it is.
    """
    indexes = env.get("indexes") or {}
    uv, pip = indexes.get("uv") or {}, indexes.get("pip") or {}
    installers = [d.get("installer") for d in (env.get("distributions") or {}).values()]
    first, second = (uv, pip) if installers.count("uv") >= installers.count("pip") else (pip, uv)
    index_url = first.get("index_url") or second.get("index_url") or "https://pypi.org/simple"
    extras, links = [], []
    for source in (first, second):
        for url in [source.get("index_url")] + list(source.get("extra_index_urls") or []):
            if url and url != index_url and url not in extras:
                extras.append(url)
        links += [u for u in source.get("find_links") or [] if u not in links]
    return {"index_url": index_url, "extra_index_urls": extras, "find_links": links}


def _requirement_line(name, version, origin):
    kind = origin.get("kind")
    if kind == "vcs":
        commit = f"@{origin['commit']}" if origin.get("commit") else ""
        return f"{name} @ {origin.get('vcs') or 'git'}+{origin['url']}{commit}"
    if kind == "url":
        hashes = "".join(f" --hash={algo}:{digest}" for algo, digest in sorted((origin.get("hashes") or {}).items()))
        return f"{name} @ {origin['url']}{hashes}"
    if kind in ("editable", "local"):
        return f"# {name}=={version}  ({kind} install from {origin.get('url')}: not on an index)"
    hashes = "".join(f" --hash={algo}:{digest}" for algo, digest in sorted((origin.get("hashes") or {}).items()))
    return f"{name}=={version}{hashes}"


def requirements(env: dict) -> str:
    """Return the packages of ``env`` as pip requirements: exact pins, with hashes where known.

    Editable and local installs cannot come from an index: they are listed as comments
    that name where they were installed from. Direct URLs and VCS checkouts keep their
    URL (and commit).

    Examples
    --------
    >>> print(requirements({"python": {"version": "3.11.7"}, "packages": {"numpy": "2.4.6", "dask": "2026.8.0"}}))
    # python 3.11.7
    dask==2026.8.0
    numpy==2.4.6
    """
    header = [f"# python {env.get('python', {}).get('version', '?')}"]
    urls = index_urls(env) if env.get("indexes") else None
    if urls:
        header.append(f"--index-url {urls['index_url']}")
        header += [f"--extra-index-url {u}" for u in urls.get("extra_index_urls", [])]
        header += [f"--find-links {u}" for u in urls.get("find_links", [])]
    pins = [_requirement_line(name, version, _origin_of(env, name))
            for name, version in sorted((env.get("packages") or {}).items())]
    return "\n".join(header + pins)


def uv_lock(env: dict) -> str:
    """The packages of ``env`` as a lock that uv installs (PEP 751 ``pylock.toml``: ``uv pip sync``).

    uv resolves the exact pins on the recorded indexes, so the lock holds each file's
    URL and sha256 hash; the index must be reachable. Editable and local installs are
    named in its header, not locked (:func:`.venvs.lock_pins`).
    """
    from .venvs import lock_pins   # venvs builds on this module

    return lock_pins(pin_set(env))


def conda_environment(env: dict) -> str:
    """The packages of ``env`` as a conda ``environment.yml``.

    Distributions that conda installed (``INSTALLER`` is ``conda``) are conda
    dependencies; the rest, as pip installed them, go under ``pip:`` with their exact
    pins (editable and local installs as comments: no index has them).
    """
    python = (env.get("python") or {}).get("version", "3")
    conda, pip = [], []
    for name, version in sorted((env.get("packages") or {}).items()):
        dist = (env.get("distributions") or {}).get(name) or {}
        line = _requirement_line(name, version, _origin_of(env, name))
        if dist.get("installer") == "conda":
            conda.append(f"  - {name}={version}")
        elif line.startswith("#"):
            pip.append(f"    {line}")
        else:
            pip.append(f"    - {line}")
    urls = index_urls(env)
    options = [f"    - --index-url {urls['index_url']}"] + [f"    - --extra-index-url {u}" for u in urls.get(
        "extra_index_urls", [])] + [f"    - --find-links {u}" for u in urls.get("find_links", [])]
    lines = ["# the recorded environment (julius env --format conda)", "name: julius-recorded",
             "channels:", "  - conda-forge", "dependencies:", f"  - python={python}", *conda, "  - pip", "  - pip:",
             *options, *pip]
    return "\n".join(lines)


def render_pins(env: dict, fmt: str = "requirements") -> str:
    """``env``'s packages as text in one of :data:`PIN_FORMATS`."""
    if fmt == "requirements":
        return requirements(env)
    if fmt == "uv-lock":
        return uv_lock(env)
    if fmt == "conda":
        return conda_environment(env)
    raise ValueError(f"unknown pin format {fmt!r}: choose one of {', '.join(PIN_FORMATS)}")


def recorded_pins(name, store=None, fmt="requirements", which="kernel"):
    """The recorded environment of ``name`` as pins text (``julius env NAME --format FMT``).

    Parameters
    ----------
    fmt : {"requirements", "uv-lock", "conda"}
    which : str
        ``kernel``, or a worker's address (as ``julius show`` lists them).
    """
    # JSON only, nothing is unpickled: any signer's; but uv would ask the recorded indexes, of the signer's choosing
    _, recording, kernel, workers = recorded_environments(name, store, any_signer=fmt != "uv-lock")
    env = kernel if which == "kernel" else workers.get(which)
    if env is None:
        raise RebuildError(f"recording {name!r} has no environment of {which!r}: kernel or one of "
                           + ", ".join(sorted(workers)))
    return render_pins(env, fmt) + "\n"
