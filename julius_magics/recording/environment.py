"""The runtime environment of the kernel and of every worker, never with secrets.

An environment is a plain JSON-able dict::

    {"python": {"version", "implementation", "executable", "hashseed"},
     "os": {"system", "release", "platform", "machine", "platform_tag", "libc"},
     "cpu": {"count", "model", "flags"}, "memory": {"total"},
     "packages": {normalized name: version},
     "distributions": {normalized name: {"installer", "origin"}},
     "indexes": {"pip": {...}, "uv": {...}},
     "threads": {"blas": [...], "loaded": [...], "omp_num_threads"},
     "dask_config": {...}, "env_vars": {name: value}}

``origin`` says where a distribution came from, as ``importlib.metadata`` knows it
(``direct_url.json``, PEP 610): ``{"kind": "index"}``, ``{"kind": "editable", "url"}``,
``{"kind": "local", "url"}``, ``{"kind": "vcs", "vcs", "url", "commit"}`` or
``{"kind": "url", "url", "hashes"}``.

Secrets are kept out: environment variables come only from an allow-list, every
``distributed.nanny.environ`` value is redacted (it is the workers' environment, set
by the user), a Dask config value under a key that no package's defaults define (the
user's own: a webhook URL under ``myapp.webhook``) is recorded as ``<sha256:...>`` (a
short SHA-256: a diff still sees it change), and the whole capture is scrubbed
(:mod:`.redaction`: secret-named values, credentials in URLs and DSNs, and the values
known to be secret, :func:`.redaction.known_secrets`, wherever they appear).

The recorded environment as pins (requirements, uv-lock, conda) is :mod:`.pins`;
rebuilding it is :mod:`.rebuild`.
"""

from __future__ import annotations

import configparser
import email.parser
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import sys
import sysconfig
import tempfile

from ..terminal import one_line
from .redaction import REDACTED, jsonable, known_secrets, scrub, scrub_text, secret_name

__all__ = ["capture_environment", "cluster_environments", "env_diff", "format_env_diff",
           "environment_cause", "distribution_origins", "normalize_name", "installed_version", "platform_tag",
           "file_path"]


ALLOWED_ENV = frozenset({
    "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONHASHSEED", "PYTHONIOENCODING",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "MALLOC_TRIM_THRESHOLD_",
    "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "NPY_DISABLE_CPU_FEATURES",
    "CUDA_VISIBLE_DEVICES", "JULIUS_STORE",
})


def normalize_name(name: str) -> str:
    """A distribution's name as PEP 503 normalizes it (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name):
    """The version of distribution ``name`` installed in this process, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def file_path(url):
    """The local path of a ``file:`` URL (an editable or local install's origin); other text as it is."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url or "")
    return unquote(parsed.path) if parsed.scheme == "file" else (url or "")


# --- distributions and where they came from ----------------------------------------
def _origin(dist) -> dict:
    """Where ``dist`` was installed from, after its ``direct_url.json`` (PEP 610)."""
    try:
        text = dist.read_text("direct_url.json")
        direct = json.loads(text) if text else None
    except (OSError, ValueError):
        direct = None
    if not isinstance(direct, dict) or not isinstance(direct.get("url"), str):
        return {"kind": "index"}
    url = scrub_text(direct["url"])
    if "vcs_info" in direct:
        vcs = direct["vcs_info"] or {}
        origin = {"kind": "vcs", "vcs": vcs.get("vcs"), "url": url, "commit": vcs.get("commit_id")}
        if vcs.get("requested_revision"):
            origin["requested_revision"] = vcs["requested_revision"]
        return origin
    if "dir_info" in direct:
        return {"kind": "editable" if (direct["dir_info"] or {}).get("editable") else "local", "url": url}
    archive = direct.get("archive_info") or {}
    hashes = dict(archive.get("hashes") or {})
    if not hashes and isinstance(archive.get("hash"), str) and "=" in archive["hash"]:
        algo, _, digest = archive["hash"].partition("=")   # the older single-hash field
        hashes = {algo: digest}
    kind = "local" if url.startswith("file:") else "url"
    return {"kind": kind, "url": url, **({"hashes": hashes} if hashes else {})}


def _installed():
    """``{name: (version, dist)}`` of the distributions Python imports (the first one found on ``sys.path``).

    Read again only when the metadata folders on ``sys.path`` changed (each install, upgrade
    or removal changes one): a recording captures the kernel's environment at each cluster it
    adopts, and reading every distribution's metadata each time cost 0.1 s.
    """
    return _listing(_metadata_stamp())


@functools.lru_cache(maxsize=1)
def _listing(stamp):
    found = {}
    for dist in importlib.metadata.distributions():
        name, version = _name_version(dist)
        if name:
            found.setdefault(normalize_name(name), (version, dist))
    return dict(sorted(found.items()))


def _metadata_stamp() -> tuple:
    """The ``*.dist-info`` and ``*.egg-info`` entries on ``sys.path``, with their times: what Python's
    distributions are read from.

    Not the folders' own times, and only folders that hold some: Dask puts its scratch
    folders, which change all the time, on ``sys.path``.
    """
    stamp = []
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as children:
                found = tuple(sorted((c.name, c.stat().st_mtime_ns) for c in children
                                     if c.name.endswith((".dist-info", ".egg-info"))))
        except NotADirectoryError:   # a zip or egg file
            found = ((entry, os.stat(entry).st_mtime_ns),)
        except OSError:
            found = ()
        if found:
            stamp.append((entry, found))
    return tuple(stamp)


def _name_version(dist):
    """``Name`` and ``Version`` from the metadata's headers, not its long description.

    ``dist.metadata`` parses the whole file with the email parser: twice as slow for
    180 distributions, mostly in their READMEs.
    """
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    headers = email.parser.HeaderParser().parsestr(re.split(r"\r?\n\r?\n", text, maxsplit=1)[0])
    return headers["Name"], headers["Version"]


def _distributions() -> tuple[dict, dict]:
    """``(distribution_origins(), {name: version})`` of this process's Python.

    Kept in a file of the user's cache, named by what they are read from
    (:func:`_metadata_stamp`): each worker a recording adopts is a new process of the
    kernel's environment, and reading 200 distributions' metadata cost it 40 ms.
    """
    stamp = _metadata_stamp()
    name = hashlib.sha256(repr((sys.executable, stamp)).encode()).hexdigest()[:32]
    path = os.path.join(os.path.expanduser("~"), ".julius", "cache", "environments", f"{name}.json")
    try:
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
        if isinstance(cached, dict) and isinstance(cached.get("origins"), dict) and isinstance(cached.get("packages"), dict):
            return cached["origins"], cached["packages"]
    except (OSError, ValueError):
        pass
    installed = _listing(stamp)
    origins, packages = distribution_origins(installed), _packages(installed)
    try:   # written whole or not at all: processes of the host read it at once
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="julius-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"origins": origins, "packages": packages}, f)
        os.replace(tmp, path)
    except OSError:
        pass
    return origins, packages


def _packages(installed=None) -> dict[str, str]:
    return {name: version for name, (version, _) in (installed or _installed()).items()}


def distribution_origins(installed=None) -> dict[str, dict]:
    """``{name: {"installer", "origin"}}`` of every installed distribution."""
    out = {}
    for name, (_, dist) in (installed or _installed()).items():
        try:
            installer = (dist.read_text("INSTALLER") or "").strip() or None
        except OSError:
            installer = None
        out[name] = {"installer": installer, "origin": _origin(dist)}
    return out


# --- package indexes -----------------------------------------------------------------
def _split_urls(value):
    return [u for u in re.split(r"\s+", value or "") if u]


def _pip_indexes() -> dict:
    """The index URLs, extra index URLs and find-links pip would use here (its config files, then env)."""
    files = ["/etc/xdg/pip/pip.conf", "/etc/pip.conf", os.path.expanduser("~/.pip/pip.conf"),
             os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "pip", "pip.conf"),
             os.path.join(sys.prefix, "pip.conf")]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(os.environ["PIP_CONFIG_FILE"])
    settings = {}
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                settings.update({k: v for k, v in parser.items(section)
                                 if k in ("index-url", "extra-index-url", "find-links", "no-index")})
    for key in ("index-url", "extra-index-url", "find-links", "no-index"):
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env is not None:
            settings[key] = env
    return {"index_url": (_split_urls(settings.get("index-url")) or ["https://pypi.org/simple"])[0],
            "extra_index_urls": _split_urls(settings.get("extra-index-url")),
            "find_links": _split_urls(settings.get("find-links")),
            "no_index": str(settings.get("no-index", "")).lower() in ("1", "true", "yes", "on")}


def _uv_indexes() -> dict:
    """What uv would use here: its environment variables, then ``uv.toml`` (a project's own config aside)."""
    settings = {}
    for path in ("/etc/uv/uv.toml", os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"),
                                                 "uv", "uv.toml")):
        try:
            import tomllib

            with open(path, "rb") as f:
                settings.update(tomllib.load(f))
        except (OSError, ValueError, ImportError):
            continue
    index_url = os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or settings.get("index-url")
    extra = _split_urls(os.environ.get("UV_INDEX") or os.environ.get("UV_EXTRA_INDEX_URL") or "")
    extra += [u for u in settings.get("extra-index-url", []) if isinstance(u, str)]
    extra += [i["url"] for i in settings.get("index", []) if isinstance(i, dict) and isinstance(i.get("url"), str)]
    links = _split_urls(os.environ.get("UV_FIND_LINKS") or "")
    links += [u for u in settings.get("find-links", []) if isinstance(u, str)]
    return {"index_url": index_url or "https://pypi.org/simple", "extra_index_urls": extra, "find_links": links,
            "no_index": os.environ.get("UV_NO_INDEX", "").lower() in ("1", "true")}


# --- what shapes numbers ----------------------------------------------------------
#: CPU features that change which kernels NumPy, BLAS and friends run, hence the last bits of results.
NUMERIC_CPU_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd",
                     "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512ifma",
                     "avx512vbmi", "amx_bf16", "amx_tile", "amx_int8", "neon", "asimd", "sve", "sve2")


def _cpu_info():
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and model is None:
                    model = value.strip()
                elif name in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), sorted(flags & set(NUMERIC_CPU_FLAGS))


def _thread_pools() -> dict:
    """The BLAS NumPy computes with and its thread count, and every other thread pool loaded (threadpoolctl).

    ``blas`` is what results depend on and what is compared: the libraries NumPy loads.
    ``loaded`` lists every BLAS/OpenMP library loaded in this process so far (OpenMP
    appears once scikit-learn or another user is imported): for people to read, not
    compared, since it depends on what was imported before the capture.
    """
    try:
        import numpy  # noqa: F401  -- loads the BLAS that results are computed with
    except Exception:
        pass
    try:
        from threadpoolctl import threadpool_info

        pools = threadpool_info()
    except Exception:
        pools = []
    keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture", "prefix")

    def entry(pool):
        return {k: pool.get(k) for k in keep if pool.get(k) is not None}

    def order(entries):
        return sorted(entries, key=lambda e: json.dumps(e, sort_keys=True))

    blas = [p for p in pools if p.get("user_api") == "blas"]
    numpy_blas = [p for p in blas if "numpy" in (p.get("filepath") or "")] or blas[:1]
    return {"blas": order(entry(p) for p in numpy_blas), "loaded": order(entry(p) for p in pools),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def platform_tag() -> str:
    """This interpreter's platform tag, as wheels name it (``linux_x86_64``)."""
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


def _total_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        return None


def _env_vars(nanny_names, defaults) -> dict[str, str]:
    chosen = {}
    for name, value in os.environ.items():
        if (name in ALLOWED_ENV or name.startswith("DASK_")) and not secret_name(name):
            nanny = name in nanny_names or "NANNY__ENVIRON" in name
            if nanny:
                value = REDACTED
            elif name.startswith("DASK_") and not _defined(defaults, name[5:].lower().split("__")):
                value = _digest(value)   # the config key it sets is the user's own, as below
            chosen[name] = value
    return dict(sorted(chosen.items()))


#: Dask config keys that julius sets on its own workers (``Session.start``): the project's
#: settings, not the user's environment, so neither recorded nor compared.
PROJECT_DASK_CONFIG = ("distributed.worker.multiprocessing-method",)
#: Dask config keys that a running process changes by itself (a Client sets ``scheduler``;
#: each LocalCluster appends to the HTTP routes): not part of the environment's identity.
VOLATILE_DASK_CONFIG = ("scheduler", "shuffle", "distributed.scheduler.http.routes") + PROJECT_DASK_CONFIG


#: Client preloads julius itself sets while recording (``cluster.adopt``): workers started then inherit
#: them, but they are the project's, not the user's environment.
PROJECT_PRELOADS = ("julius_magics.cluster.adopt",)


def _without_volatile(config):
    """The config without the keys a running process changes by itself (identical runs, identical blobs)."""
    client = (config.get("distributed") or {}).get("client")
    if isinstance(client, dict) and isinstance(client.get("preload"), list):
        client["preload"] = [p for p in client["preload"] if p not in PROJECT_PRELOADS]
    for dotted in VOLATILE_DASK_CONFIG:
        *parents, last = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def _config_name(name) -> str:
    return str(name).lower().replace("_", "-")   # Dask reads "memory_limit" as "memory-limit"


@functools.lru_cache(maxsize=4)
def _defaults_tree(stamp):
    """The keys of ``dask.config.defaults`` (Dask's, distributed's and any package's yaml), names normalized."""
    import dask

    def normalized(tree):
        return {_config_name(k): normalized(v) if isinstance(v, dict) else v for k, v in tree.items()}

    merged = {}
    for defaults in dask.config.defaults:
        dask.config.update(merged, normalized(defaults))
    return merged


def _config_defaults():
    import dask

    return _defaults_tree(tuple(id(d) for d in dask.config.defaults))   # packages add theirs when imported


def _defined(defaults, path) -> bool:
    """Whether the config key at ``path`` (its parts) is one the defaults define."""
    node = defaults
    for part in path:
        if not isinstance(node, dict) or _config_name(part) not in node:
            return False
        node = node[_config_name(part)]
    return True


def _digest(value) -> str:
    return "<sha256:" + hashlib.sha256(str(value).encode("utf-8", "surrogatepass")).hexdigest()[:12] + ">"


def _digested(value, name):
    """The user's own config value: each string as a short SHA-256; under a secret name, as it is (scrubbed later).

    Numbers and booleans are settings, never a credential: kept.
    """
    if secret_name(name):
        return value
    if isinstance(value, dict):
        return {k: _digested(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_digested(v, name) for v in value]
    if isinstance(value, str) and value != REDACTED:
        return _digest(value)
    return value


def _user_values_digested(config, defaults):
    """``config`` with the values under keys ``defaults`` do not define digested (:func:`_digested`)."""
    out = {}
    for k, v in config.items():
        name = _config_name(k)
        if not isinstance(defaults, dict) or name not in defaults:
            out[k] = _digested(v, k)
        elif isinstance(v, dict) and isinstance(defaults[name], dict):
            out[k] = _user_values_digested(v, defaults[name])
        else:
            out[k] = v
    return out


def _dask_config():
    """The Dask config, JSON-able, ``distributed.nanny.environ`` values redacted and the user's own keys'
    values digested; those nanny values; their names; and the defaults' keys."""
    import dask

    config = jsonable(dask.config.config)
    nanny = ((config.get("distributed") or {}).get("nanny") or {})
    environ = nanny.get("environ")
    hidden = []
    if isinstance(environ, dict):
        hidden = [v for v in environ.values() if isinstance(v, str)]
        nanny["environ"] = {k: REDACTED for k in environ}
    defaults = _config_defaults()
    config = _user_values_digested(_without_volatile(config), defaults)
    return config, hidden, set(environ) if isinstance(environ, dict) else set(), defaults


def capture_environment() -> dict:
    """Return the environment of this process.

    Python, OS and platform tag, libc, CPU (with the flags that change numerical
    results), memory, every distribution with its version, installer and origin, the
    package indexes pip and uv would use, BLAS/OpenMP libraries and their thread
    counts, ``PYTHONHASHSEED``, the Dask config, and an allow-list of variables.
    Secrets are redacted (see the module docstring).

    Returns
    -------
    dict
        JSON-able; see the module docstring for its fields.
    """
    config, nanny_values, nanny_names, defaults = _dask_config()
    model, flags = _cpu_info()
    origins, packages = _distributions()
    libc, libc_version = platform.libc_ver()
    env = {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "hashseed": os.environ.get("PYTHONHASHSEED") or ("random" if sys.flags.hash_randomization else "0"),
        },
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "platform_tag": platform_tag(),
            "libc": f"{libc} {libc_version}".strip() or None,
        },
        "cpu": {"count": os.cpu_count(), "model": model, "flags": flags},
        "memory": {"total": _total_memory()},
        "distributions": origins,
        "indexes": {"pip": _pip_indexes(), "uv": _uv_indexes()},
        "threads": _thread_pools(),
        "dask_config": config,
        "env_vars": _env_vars(nanny_names, defaults),
    }
    # Values known to be secret (secret-named variables, fsspec credentials: at least 8 characters,
    # XDG_SESSION_TYPE=wayland must not redact every "wayland") are hunted wherever they appear;
    # package names and versions never hold secrets, so they are left out of the hunt.
    secrets = [*known_secrets(), *nanny_values]
    # Distribution names are not secrets (google-auth, keyring): their origin URLs were scrubbed already.
    distributions = env.pop("distributions")
    env = scrub(env, secrets)
    env["distributions"] = distributions
    env["packages"] = packages
    return env


def cluster_environments(client) -> dict[str, dict]:
    """Return ``{worker address: environment}`` of every worker of ``client``'s cluster."""
    return client.run(capture_environment)


# --- comparing ----------------------------------------------------------------
def _flatten(tree, prefix: str = "") -> dict[str, object]:
    flat = {}
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, path))
        else:
            flat[path] = v
    return flat


def _changes(old: dict, new: dict) -> dict:
    return {
        "added": {k: new[k] for k in sorted(new.keys() - old.keys())},
        "removed": {k: old[k] for k in sorted(old.keys() - new.keys())},
        "changed": {k: [old[k], new[k]] for k in sorted(old.keys() & new.keys()) if old[k] != new[k]},
    }


def _stable_config(env):
    flat = _flatten(env.get("dask_config") or {})
    return {k: v for k, v in flat.items() if not k.startswith(VOLATILE_DASK_CONFIG)}


def _pools(env, api, field):
    """One comparable value per thread-pool field: ``openblas 0.3.31`` or ``[2]`` (thread counts)."""
    pools = (env.get("threads") or {}).get(api)
    if pools is None:
        return None   # recorded before thread pools were: nothing to compare
    if field == "vendor":
        return ", ".join(sorted(f"{p.get('internal_api')} {p.get('version')}" for p in pools)) or "none"
    return [p.get("num_threads") for p in pools]


def env_diff(recorded: dict, current: dict) -> dict:
    """Compare two environments.

    Parameters
    ----------
    recorded, current : dict
        Environments from :func:`capture_environment`.

    Returns
    -------
    dict
        ``{"python": {field: [recorded, current]}, "os": {...}, "numerics": {...},
        "threads": {...}, "machine": {...}, "packages": {"added", "removed", "changed"},
        "dask_config": {"added", "removed", "changed"}, "same": bool}``.  ``numerics``
        holds CPU flags and BLAS/OpenMP vendors, ``threads`` their thread counts.
        ``same`` ignores the machine (CPU model, memory, executable path), which never
        makes results differ by itself, and the thread counts, which differ between a
        kernel and its workers by design (the nanny sets them) and are reported apart.
        Fields missing from one side (an older recording) are not compared.

    Examples
    --------
    >>> a = {"python": {"version": "3.11.7"}, "packages": {"numpy": "2.4.6"}}
    >>> b = {"python": {"version": "3.12.1"}, "packages": {"numpy": "2.4.6", "rich": "14.0"}}
    >>> d = env_diff(a, b)
    >>> d["python"], d["packages"]["added"], d["same"]
    ({'version': ['3.11.7', '3.12.1']}, {'rich': '14.0'}, False)
    """
    def fields(section, names=None):
        old, new = recorded.get(section) or {}, current.get(section) or {}
        names = names or sorted(old.keys() | new.keys())
        return {n: [old.get(n), new.get(n)] for n in names
                if n in old and n in new and old.get(n) != new.get(n)}

    def pools(field):
        out = {}
        for api in ("blas",):
            old, new = _pools(recorded, api, field), _pools(current, api, field)
            if old is not None and new is not None and old != new:
                out[f"{api} {'threads' if field == 'threads' else 'vendor'}"] = [old, new]
        return out

    hashseed = fields("python", ["hashseed"])
    diff = {
        "python": fields("python", ["version", "implementation"]),
        "os": fields("os", ["system", "release", "machine", "platform_tag", "libc"]),
        "numerics": {**{f"cpu {k}": v for k, v in fields("cpu", ["flags"]).items()}, **pools("vendor"),
                     **{"PYTHONHASHSEED": v for v in hashseed.values()}},
        "threads": {**pools("threads"), **{"OMP_NUM_THREADS": v for v in fields("threads", ["omp_num_threads"]).values()}},
        "machine": {**fields("cpu", ["count", "model"]), **fields("memory"),
                    **{f"python.{k}": v for k, v in fields("python", ["executable"]).items()}},
        "packages": _changes(recorded.get("packages") or {}, current.get("packages") or {}),
        "dask_config": _changes(_stable_config(recorded), _stable_config(current)),
    }
    diff["same"] = not (diff["python"] or diff["os"] or diff["numerics"] or any(diff["packages"].values())
                        or any(diff["dask_config"].values()))
    return diff


def environment_cause(diff: dict) -> str | None:
    """The environment difference most likely to change results, by name (None when there is none).

    For a replay's "likely cause": packages first (the changed ones by name), then Python,
    the OS, the numerics (CPU flags, BLAS vendor, ``PYTHONHASHSEED``), then BLAS/OpenMP
    thread counts, which change the last bits of floating-point reductions.

    Examples
    --------
    >>> environment_cause({"packages": {"changed": {"pandas": ["2.2.3", "3.1.1"]}}})
    'environment differs (pandas 2.2.3 -> 3.1.1)'
    >>> environment_cause({"threads": {"blas threads": [[2], [1]]}})
    'BLAS/OpenMP thread counts differ (blas threads [2] -> [1])'
    """
    packages = diff.get("packages") or {}
    named = [f"{k} {a} -> {b}" for k, (a, b) in sorted((packages.get("changed") or {}).items())]
    named += [f"{k} added" for k in sorted(packages.get("added") or {})]
    named += [f"{k} removed" for k in sorted(packages.get("removed") or {})]
    for section in ("python", "os", "numerics"):
        named += [f"{section} {k} {a} -> {b}" for k, (a, b) in (diff.get(section) or {}).items()]
    if named:
        more = f", and {len(named) - 5} more" if len(named) > 5 else ""
        return f"environment differs ({', '.join(named[:5])}{more})"
    threads = [f"{k} {a} -> {b}" for k, (a, b) in (diff.get("threads") or {}).items()]
    if threads:
        return f"BLAS/OpenMP thread counts differ ({', '.join(threads)})"
    return None


def format_env_diff(diff: dict) -> str:
    """Render :func:`env_diff` output as readable lines ("same environment" when nothing differs)."""
    lines = []
    for section in ("python", "os", "numerics", "threads", "machine"):
        for name, (old, new) in diff.get(section, {}).items():
            lines.append(f"{section} {name}: {old} -> {new}")
    for section, label in (("packages", "package"), ("dask_config", "dask config")):
        changes = diff.get(section, {})
        lines += [f"{label} added: {k} {v}" for k, v in changes.get("added", {}).items()]
        lines += [f"{label} removed: {k} {v}" for k, v in changes.get("removed", {}).items()]
        lines += [f"{label} changed: {k} {old} -> {new}" for k, (old, new) in changes.get("changed", {}).items()]
    # a line each, whatever a recorded value holds
    return "\n".join(one_line(line) for line in lines) if lines else "same environment"
