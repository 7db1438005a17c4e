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

Secrets are kept out four ways, at every depth of the Dask config and of every other
string: environment variables come only from an allow-list; any value under a
secret-looking name (token, secret, password, key, credential, auth, session, ...) is
redacted whatever its length; credentials inside URLs, DSNs and query strings are cut
out by pattern; and every ``distributed.nanny.environ`` value is redacted (it is the
workers' environment, set by the user). Last, every string that contains a secret
value found by the first three is redacted where else it appears.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import platform
import re
import sys
import sysconfig

__all__ = ["capture_environment", "cluster_environments", "env_diff", "format_env_diff", "requirements",
           "render_pins", "environment_cause", "scrub", "scrub_text", "secret_name", "distribution_origins", "PIN_FORMATS"]

REDACTED = "<redacted>"
ALLOWED_ENV = frozenset({
    "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONHASHSEED", "PYTHONIOENCODING",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "MALLOC_TRIM_THRESHOLD_",
    "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "NPY_DISABLE_CPU_FEATURES",
    "CUDA_VISIBLE_DEVICES", "JULIUS_STORE",
})

# A name looks secret when one of its words (split at -_. and camelCase) is, or ends in, one of these.
_SECRET_WORDS = ("token", "tokens", "secret", "secrets", "password", "passwords", "passwd", "passphrase",
                 "key", "credential", "credentials", "auth", "authorization", "authentication", "session",
                 "sessions", "sessionid", "private", "cookie", "cookies", "signature", "dsn")
_SECRET_WORD_ENDS = ("token", "secret", "password", "passwd", "key", "credential", "credentials", "auth", "session")
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")

# scheme://userinfo@host: the userinfo (user name, token, user:password, a password holding '@')
# runs to the last '@' before the host's '/', '?', '#' or the end.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s?#'\"]*@")
_SECRET_PARAM = (r"[\w.\-]*?(?:passw(?:or)?d|passwd|pwd|passphrase|token|secret|api[_\-]?key|access[_\-]?key|"
                 r"private[_\-]?key|auth\w*|credentials?|session\w*|signature|sig)[\w.\-]*")
# name=value in a query string, a libpq/ODBC DSN or a command line; value of any length
_PARAM_VALUE = re.compile(r"(?i)(\b" + _SECRET_PARAM + r"\s*=\s*)(\"[^\"]*\"|'[^']*'|[^\s&;,'\"]+)")
# "name": "value" inside JSON or YAML text
_QUOTED_VALUE = re.compile(r"(?i)([\"']?\b" + _SECRET_PARAM + r"[\"']?\s*:\s*)(\"[^\"]*\"|'[^']*')")
_AUTH_HEADER = re.compile(r"(?i)\b(bearer|basic|token)\s+[^\s'\",;]{8,}")
#: Values shorter than this are not hunted for elsewhere (a password "1" would redact every "1").
_MIN_ECHO = 4


#: Spelled inside any name, whatever its separators and case, these always mean a secret.
_SECRET_INSIDE = re.compile(r"passw(or)?d|passphrase|secret|credential|apikey|accesskey|privatekey|authtoken|"
                            r"token(?!iz|is)|sessionid|sessiontoken|sessionkey")


def secret_name(name: str) -> bool:
    """True when a variable, config key or parameter name looks like it holds a secret.

    Examples
    --------
    >>> [secret_name(n) for n in ("AWS_SECRET_ACCESS_KEY", "apiKey", "db.password", "tokenize", "rename-keys")]
    [True, True, True, False, False]
    """
    name = str(name)
    if _SECRET_INSIDE.search(re.sub(r"[^a-z0-9]", "", name.lower())):
        return True
    for word in _WORD_SPLIT.split(name):
        word = word.lower()
        if word in _SECRET_WORDS or (len(word) > 3 and word.endswith(_SECRET_WORD_ENDS)):
            return True
    return False


def scrub_text(text: str) -> str:
    """``text`` with credentials cut out of URLs, DSNs, query strings and auth headers."""
    text = _URL_USERINFO.sub(r"\1" + REDACTED + "@", text)
    text = _PARAM_VALUE.sub(r"\1" + REDACTED, text)
    text = _QUOTED_VALUE.sub(r'\1"' + REDACTED + '"', text)
    return _AUTH_HEADER.sub(r"\1 " + REDACTED, text)


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return repr(value)   # callables, classes... as text, so the result stays JSON-able


def _collect_and_redact(value, secrets: set, under_secret=False, parent=""):
    """First pass: redact values under secret names and credentials in strings; collect what was cut.

    Every value of a ``nanny.environ`` mapping is hidden, whatever its name: it is the
    workers' environment as the user set it, and a plain name can hold a secret.
    """
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            hidden = under_secret or secret_name(k) or (parent == "nanny" and k == "environ")
            out[k] = _collect_and_redact(v, secrets, hidden, k)
        return out
    if isinstance(value, list):
        return [_collect_and_redact(v, secrets, under_secret, parent) for v in value]
    if under_secret and value is not None and not isinstance(value, bool):
        if isinstance(value, str) and len(value) >= _MIN_ECHO:
            secrets.add(value)
        return REDACTED if value != "" else value
    if isinstance(value, str):
        cleaned = scrub_text(value)
        if cleaned != value:
            secrets.update(_cut_parts(value, cleaned))
        return cleaned
    return value


def _cut_parts(original: str, cleaned: str):
    """The substrings of ``original`` that scrubbing replaced (so they can be hunted elsewhere)."""
    pieces = [p for p in re.split(re.escape(REDACTED), cleaned)]
    cut, pos = [], 0
    for before, after in zip(pieces, pieces[1:]):
        start = original.find(before, pos) + len(before) if before else pos
        end = original.find(after, start) if after else len(original)
        if end < 0:
            break
        part = original[start:end]
        if len(part) >= _MIN_ECHO:
            cut.append(part)
        pos = end
    return cut


def _echoes(value, secrets):
    """Second pass: every occurrence of a collected secret, anywhere, is redacted."""
    if isinstance(value, dict):
        return {_echoes(k, secrets): _echoes(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_echoes(v, secrets) for v in value]
    if isinstance(value, str):
        for s in secrets:
            if s in value:
                value = value.replace(s, REDACTED)
    return value


def scrub(tree, extra_secrets=()):
    """A JSON-able copy of ``tree`` with every secret redacted, at every depth.

    Parameters
    ----------
    tree : dict, list or scalar
    extra_secrets : iterable of str
        Values known to be secret (for example those of secret-named environment
        variables): redacted wherever they appear.

    Examples
    --------
    >>> scrub({"db": "postgresql://me:p@ss@host/db?password=x1", "api": {"Token": 42}, "n": 3})
    {'db': 'postgresql://<redacted>@host/db?password=<redacted>', 'api': {'Token': '<redacted>'}, 'n': 3}
    """
    secrets = {s for s in extra_secrets if isinstance(s, str) and len(s) >= _MIN_ECHO}
    cleaned = _collect_and_redact(_jsonable(tree), secrets)
    # longest first, so a secret holding a shorter one is cut whole
    return _echoes(cleaned, sorted(secrets, key=len, reverse=True))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


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
    """``{name: dist}`` of the distributions Python imports (the first one found on ``sys.path``)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_normalize(name), dist)
    return dict(sorted(found.items()))


def _packages(installed=None) -> dict[str, str]:
    return {name: dist.version for name, dist in (installed or _installed()).items()}


def distribution_origins(installed=None) -> dict[str, dict]:
    """``{name: {"installer", "origin"}}`` of every installed distribution."""
    out = {}
    for name, dist in (installed or _installed()).items():
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


def _platform_tag() -> str:
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


def _total_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        return None


def _env_vars(nanny_names) -> dict[str, str]:
    chosen = {}
    for name, value in os.environ.items():
        if (name in ALLOWED_ENV or name.startswith("DASK_")) and not secret_name(name):
            nanny = name in nanny_names or "NANNY__ENVIRON" in name
            chosen[name] = REDACTED if nanny else value
    return dict(sorted(chosen.items()))


#: Dask config keys that julius sets on its own workers (``Session.start``): the project's
#: settings, not the user's environment, so neither recorded nor compared.
PROJECT_DASK_CONFIG = ("distributed.worker.multiprocessing-method",)
#: Dask config keys that a running process changes by itself (a Client sets ``scheduler``;
#: each LocalCluster appends to the HTTP routes): not part of the environment's identity.
VOLATILE_DASK_CONFIG = ("scheduler", "shuffle", "distributed.scheduler.http.routes") + PROJECT_DASK_CONFIG


def _without_volatile(config):
    """The config without the keys a running process changes by itself (identical runs, identical blobs)."""
    for dotted in VOLATILE_DASK_CONFIG:
        *parents, last = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def _dask_config():
    """The Dask config, JSON-able, ``distributed.nanny.environ`` values redacted; and those values."""
    import dask

    config = _jsonable(dask.config.config)
    nanny = ((config.get("distributed") or {}).get("nanny") or {})
    environ = nanny.get("environ")
    hidden = []
    if isinstance(environ, dict):
        hidden = [v for v in environ.values() if isinstance(v, str)]
        nanny["environ"] = {k: REDACTED for k in environ}
    return _without_volatile(config), hidden, set(environ) if isinstance(environ, dict) else set()


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
    config, nanny_values, nanny_names = _dask_config()
    model, flags = _cpu_info()
    installed = _installed()
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
            "platform_tag": _platform_tag(),
            "libc": f"{libc} {libc_version}".strip() or None,
        },
        "cpu": {"count": os.cpu_count(), "model": model, "flags": flags},
        "memory": {"total": _total_memory()},
        "distributions": distribution_origins(installed),
        "indexes": {"pip": _pip_indexes(), "uv": _uv_indexes()},
        "threads": _thread_pools(),
        "dask_config": config,
        "env_vars": _env_vars(nanny_names),
    }
    # Values of secret-named variables are hunted wherever they appear; package names and
    # versions never hold secrets, so they are left out of the hunt.
    # (at least 8 characters: XDG_SESSION_TYPE=wayland must not redact every "wayland")
    secrets = [v for k, v in os.environ.items() if secret_name(k) and len(v) >= 8] + nanny_values
    # Distribution names are not secrets (google-auth, keyring): their origin URLs were scrubbed already.
    distributions = env.pop("distributions")
    env = scrub(env, secrets)
    env["distributions"] = distributions
    env["packages"] = _packages(installed)
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
                     **{f"PYTHONHASHSEED": v for v in hashseed.values()}},
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
    return "\n".join(lines) if lines else "same environment"


# --- pins -----------------------------------------------------------------------
PIN_FORMATS = ("requirements", "uv-lock", "conda")


def _origin_of(env, name):
    return ((env.get("distributions") or {}).get(name) or {}).get("origin") or {"kind": "index"}


def _index_urls(env):
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
    urls = _index_urls(env) if env.get("indexes") else None
    if urls:
        header.append(f"--index-url {urls['index_url']}")
        header += [f"--extra-index-url {u}" for u in urls.get("extra_index_urls", [])]
        header += [f"--find-links {u}" for u in urls.get("find_links", [])]
    pins = [_requirement_line(name, version, _origin_of(env, name))
            for name, version in sorted((env.get("packages") or {}).items())]
    return "\n".join(header + pins)


def _toml_str(text):
    return json.dumps(str(text))   # a JSON string is a valid TOML basic string


def uv_lock(env: dict) -> str:
    """The packages of ``env`` in the shape of a ``uv.lock`` file (TOML, one ``[[package]]`` each).

    Each package's ``source`` says where it came from: ``registry`` (the recorded index),
    ``editable``, ``directory``/``path``, ``git`` (with its commit) or ``url``.
    """
    version = (env.get("python") or {}).get("version", "3")
    minor = ".".join(version.split(".")[:2])
    registry = _index_urls(env)["index_url"]
    lines = ["# the recorded environment, in uv.lock's shape (julius env --format uv-lock)",
             "version = 1", f"requires-python = {_toml_str('==' + minor + '.*')}", ""]
    for name, ver in sorted((env.get("packages") or {}).items()):
        origin = _origin_of(env, name)
        kind = origin.get("kind")
        if kind == "vcs":
            rev = f"#{origin['commit']}" if origin.get("commit") else ""
            source = f"{{ git = {_toml_str(origin['url'] + rev)} }}"
        elif kind == "editable":
            source = f"{{ editable = {_toml_str(_file_path(origin['url']))} }}"
        elif kind == "local":
            path = _file_path(origin["url"])
            source = f"{{ {'directory' if os.path.isdir(path) else 'path'} = {_toml_str(path)} }}"
        elif kind == "url":
            source = f"{{ url = {_toml_str(origin['url'])} }}"
        else:
            source = f"{{ registry = {_toml_str(registry)} }}"
        lines += ["[[package]]", f"name = {_toml_str(name)}", f"version = {_toml_str(ver)}", f"source = {source}"]
        hashes = origin.get("hashes") or {}
        if hashes and kind == "url":
            algo, digest = sorted(hashes.items())[0]
            lines.append(f"sdist = {{ url = {_toml_str(origin['url'])}, hash = {_toml_str(algo + ':' + digest)} }}")
        lines.append("")
    return "\n".join(lines)


def _file_path(url):
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url or "")
    return unquote(parsed.path) if parsed.scheme == "file" else (url or "")


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
    urls = _index_urls(env)
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
