"""The runtime environment of the kernel and of every worker, never with secrets.

An environment is a plain JSON-able dict::

    {"python": {"version", "implementation", "executable"},
     "os": {"system", "release", "platform", "machine"},
     "cpu": {"count", "model"}, "memory": {"total"},
     "packages": {normalized name: version},
     "dask_config": {...}, "env_vars": {name: value}}

Secrets are kept out three ways: environment variables come only from an
allow-list; any variable or config entry whose name looks secret is dropped or
redacted; and, last, every string anywhere in the result that contains the
value of a secret-looking environment variable is redacted.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys

__all__ = ["capture_environment", "cluster_environments", "env_diff", "format_env_diff", "requirements"]

REDACTED = "<redacted>"
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSW|CREDENTIAL|AUTH|SESSION|PRIVATE|COOKIE|SIGNATURE|CERT", re.IGNORECASE)
ALLOWED_ENV = frozenset({
    "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONHASHSEED", "PYTHONIOENCODING",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "MALLOC_TRIM_THRESHOLD_",
    "CUDA_VISIBLE_DEVICES", "JULIUS_STORE",
})
# Credentials inside URLs: scheme://user:password@host
URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@\s]+@")


def _secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _packages() -> dict[str, str]:
    packages: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            # The first found on sys.path is the one Python imports.
            packages.setdefault(_normalize(name), dist.version)
    return dict(sorted(packages.items()))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        return None


def _redact_config(value, name: str = ""):
    """Copy of a Dask config tree with secret-looking entries redacted and URLs stripped of passwords."""
    if isinstance(value, dict):
        return {str(k): (REDACTED if _secret_name(str(k)) else _redact_config(v, str(k))) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_config(v, name) for v in value]
    if isinstance(value, str):
        return URL_PASSWORD.sub(r"\1" + REDACTED + "@", value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return repr(value)  # callables, classes... as text, so the result stays JSON-able


def _env_vars() -> dict[str, str]:
    chosen = {}
    for name, value in os.environ.items():
        if (name in ALLOWED_ENV or name.startswith("DASK_")) and not _secret_name(name):
            chosen[name] = URL_PASSWORD.sub(r"\1" + REDACTED + "@", value)
    return dict(sorted(chosen.items()))


def _scrub(value, secrets: list[str]):
    """Redact every string that contains a secret value, anywhere in the tree."""
    if isinstance(value, dict):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, str) and any(s in value for s in secrets):
        return REDACTED
    return value


def capture_environment() -> dict:
    """Return the environment of this process (Python, OS, CPU, memory, packages, Dask config).

    Returns
    -------
    dict
        JSON-able; see the module docstring for its fields.
    """
    import dask

    env = {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "platform": platform.platform(),
            "machine": platform.machine(),
        },
        "cpu": {"count": os.cpu_count(), "model": _cpu_model()},
        "memory": {"total": _total_memory()},
        "packages": _packages(),
        "dask_config": _without_volatile(_redact_config(dask.config.config)),
        "env_vars": _env_vars(),
    }
    # Values of secret-named variables are scrubbed wherever they appear; short or word-like
    # values (XDG_SESSION_TYPE=wayland) would redact innocent text, and package names and
    # versions never hold secrets.
    secrets = [v for k, v in os.environ.items() if _secret_name(k) and len(v) >= 12]
    packages = env.pop("packages")
    env = _scrub(env, secrets)
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


#: Dask config keys that a running process changes by itself (a Client sets ``scheduler``;
#: each LocalCluster appends to the HTTP routes): not part of the environment's identity.
VOLATILE_DASK_CONFIG = ("scheduler", "shuffle", "distributed.scheduler.http.routes")


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


def _stable_config(env):
    flat = _flatten(env.get("dask_config") or {})
    return {k: v for k, v in flat.items() if not k.startswith(VOLATILE_DASK_CONFIG)}


def env_diff(recorded: dict, current: dict) -> dict:
    """Compare two environments.

    Parameters
    ----------
    recorded, current : dict
        Environments from :func:`capture_environment`.

    Returns
    -------
    dict
        ``{"python": {field: [recorded, current]}, "os": {...}, "machine": {...},
        "packages": {"added", "removed", "changed"}, "dask_config": {"added",
        "removed", "changed"}, "same": bool}``.  ``same`` ignores the machine
        (CPU, memory, executable path), which never makes results differ by itself.

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
        return {n: [old.get(n), new.get(n)] for n in names if old.get(n) != new.get(n)}

    diff = {
        "python": fields("python", ["version", "implementation"]),
        "os": fields("os", ["system", "release", "machine"]),
        "machine": {**fields("cpu"), **fields("memory"), **{f"python.{k}": v for k, v in fields("python", ["executable"]).items()}},
        "packages": _changes(recorded.get("packages") or {}, current.get("packages") or {}),
        "dask_config": _changes(_stable_config(recorded), _stable_config(current)),
    }
    diff["same"] = not (diff["python"] or diff["os"] or any(diff["packages"].values()) or any(diff["dask_config"].values()))
    return diff


def format_env_diff(diff: dict) -> str:
    """Render :func:`env_diff` output as readable lines ("same environment" when nothing differs)."""
    lines = []
    for section in ("python", "os", "machine"):
        for name, (old, new) in diff.get(section, {}).items():
            lines.append(f"{section} {name}: {old} -> {new}")
    for section, label in (("packages", "package"), ("dask_config", "dask config")):
        changes = diff.get(section, {})
        lines += [f"{label} added: {k} {v}" for k, v in changes.get("added", {}).items()]
        lines += [f"{label} removed: {k} {v}" for k, v in changes.get("removed", {}).items()]
        lines += [f"{label} changed: {k} {old} -> {new}" for k, (old, new) in changes.get("changed", {}).items()]
    return "\n".join(lines) if lines else "same environment"


def requirements(env: dict) -> str:
    """Return the packages of ``env`` as pip pins, one ``name==version`` a line.

    Examples
    --------
    >>> print(requirements({"python": {"version": "3.11.7"}, "packages": {"numpy": "2.4.6", "dask": "2026.8.0"}}))
    # python 3.11.7
    dask==2026.8.0
    numpy==2.4.6
    """
    header = f"# python {env.get('python', {}).get('version', '?')}"
    pins = [f"{name}=={version}" for name, version in sorted((env.get("packages") or {}).items())]
    return "\n".join([header, *pins])
