"""JSON schemas of a recording's documents, checked before any reader uses a field.

A signature proves who wrote a document, not that its writer was julius: a
stranger's (or a forger's) validly signed manifest can hold anything. Every
reader therefore validates the unsealed body with :func:`check` first, which
raises one line naming the file and the field::

    Recording 'x': manifest.json is malformed: at created: None is not of type 'string'.

The schemas follow ``docs/format.md``: a step's ``data`` is checked against its
kind's schema (:data:`STEP_SCHEMAS`, as the recording is opened) and an
environment blob against :data:`ENVIRONMENT_SCHEMA` (as it is read), as far as
the readers use them; any other field, and ``meta`` but the few fields the readers
show, is free JSON.
"""

from __future__ import annotations

import functools
import json
import re
import sys

from ..errors import IntegrityError, RecordingError
from .integrity import FORMAT, FORMATS, LEGACY_FORMAT

__all__ = ["check", "check_format", "check_step", "environment", "SCHEMAS", "STEP_SCHEMAS", "ENVIRONMENT_SCHEMA"]

#: Optional format checkers jsonschema imports when they are installed, which take seconds to
#: import (rfc3987_syntax builds a grammar: 2.5 s here; isoduration loads arrow). julius's schemas
#: check no ``format``, so jsonschema is imported without them; user code may still import them.
SLOW_FORMAT_CHECKERS = ("rfc3987_syntax", "isoduration")


@functools.cache
def _jsonschema():
    kept_out = [m for m in SLOW_FORMAT_CHECKERS if m not in sys.modules]
    sys.modules.update(dict.fromkeys(kept_out))   # seen as missing: jsonschema leaves their checkers out
    try:
        import jsonschema
    finally:
        for m in kept_out:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
    return jsonschema


_SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_SIZE = {"type": "integer", "minimum": 0}
_WORKERS = {"type": ["integer", "null"], "minimum": 0, "maximum": 2**31 - 1}   # a count, not any int
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}
_TIME = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{5,}(Z|[+-][0-9:]{4,5})$", "maxLength": 40}
_SHA_MAP = {"type": "object", "propertyNames": {"pattern": "^[0-9a-f]{64}$"}, "additionalProperties": _SIZE}
_META = {
    "type": "object",
    "properties": {
        "note": {"type": ["string", "null"]},
        "data_mode": {"type": "string"},
        "workers": _WORKERS,
        "headlines": {"type": "object", "additionalProperties": {"type": "string"}},
        "partial": {"type": "boolean"},
        "partial_reasons": {"type": "array", "items": {"type": "string"}},
    },
}


def _schemas(fmt, key_id):
    """The documents of format ``fmt`` whose signer is named by a ``key_id`` of pattern ``key_id``."""
    signer = {"type": "string", "pattern": key_id}
    manifest = {
        "type": "object",
        "required": ["format", "name", "created", "closed", "status", "meta", "key_id", "steps",
                     "journal", "chain_head", "parts", "blobs", "size"],
        "properties": {
            "format": {"const": fmt},
            "name": _NAME,
            "created": _TIME,
            "closed": {"anyOf": [_TIME, {"type": "null"}]},
            "status": {"enum": ["complete", "incomplete"]},
            "meta": _META,
            "key_id": signer,
            "steps": _SIZE,
            "journal": {"type": "array", "items": _SHA},
            "chain_head": {"anyOf": [_SHA, {"type": "null"}]},
            "parts": _SHA_MAP,
            "blobs": _SHA_MAP,
            "size": _SIZE,
        },
    }
    entry = {
        "type": "object",
        "required": ["format", "seq", "kind", "time", "data", "parts", "blobs", "prev", "key_id"],
        "properties": {
            "format": {"const": fmt},
            "seq": {"type": "integer", "minimum": 1},
            "kind": {"type": "string", "minLength": 1, "maxLength": 64},
            "time": _TIME,
            "data": {"type": "object"},
            "parts": {"type": "object", "additionalProperties": _SHA},
            "blobs": _SHA_MAP,
            "prev": _SHA,
            "key_id": signer,
        },
    }
    verified = {
        "type": "object",
        "required": ["format", "name", "verified_at", "manifest_sha256", "summary", "key_id"],
        "properties": {
            "format": {"const": fmt},
            "name": _NAME,
            "verified_at": _TIME,
            "manifest_sha256": _SHA,
            "summary": {"type": "object"},
            "key_id": signer,
        },
    }
    closed = {
        "type": "object",
        "required": ["format", "name", "created", "closed", "steps", "chain_head", "key_id"],
        "properties": {
            "format": {"const": fmt},
            "name": _NAME,
            "created": _TIME,
            "closed": _TIME,
            "steps": _SIZE,
            "chain_head": {"anyOf": [_SHA, {"type": "null"}]},
            "key_id": signer,
        },
    }
    return {"manifest": manifest, "entry": entry, "verified": verified, "closed": closed}


def _object(required=(), **properties):
    return {"type": "object", "required": list(required), "properties": properties}


_STR, _INT, _NULL_STR, _NULL_INT = ({"type": "string"}, {"type": "integer"}, {"type": ["string", "null"]},
                                   {"type": ["integer", "null"]})
_BOOL, _NULL_BOOL, _NUMBER, _NULL_SIZE = ({"type": "boolean"}, {"type": ["boolean", "null"]}, {"type": "number"},
                                         {"type": ["integer", "null"], "minimum": 0})
_STRINGS, _NULL_STRINGS = {"type": "array", "items": _STR}, {"type": ["array", "null"], "items": _STR}
_TEXTS = {"type": "object", "additionalProperties": _STR}   # {key: text}
_BLOBS = {"type": "object", "additionalProperties": _SHA}   # {name: blob SHA-256}
# a scheduler event (graph, run, scatter, ...): the fields every such step has
_EVENT = {"seq": _NULL_INT, "time": {"type": ["number", "null"]}, "client": _NULL_STR, "address": _NULL_STR}
_THREADPOOLS = _object(blas=_NULL_INT, openmp=_NULL_INT)
_CLUSTER_SPEC = _object(
    ["workers"], address=_NULL_STR, cluster=_NULL_STR, n_workers=_WORKERS, threads_per_worker=_NULL_INT,
    memory_limit={"type": ["integer", "string", "null"]}, processes=_NULL_BOOL, nanny=_NULL_BOOL,
    workers={"type": "object", "additionalProperties": _object(
        nthreads=_NULL_INT, memory_limit={"type": ["integer", "string", "null"]}, host=_NULL_STR, pid=_NULL_INT,
        cwd=_NULL_STR, threadpools=_THREADPOOLS)},
    kernel=_object(host=_NULL_STR, pid=_NULL_INT, cwd=_NULL_STR, threadpools=_THREADPOOLS))
_RECORDED_FILE = dict(path=_STR, abspath=_STR, cwd=_NULL_STR, size=_NULL_SIZE, mtime_ns=_NULL_INT,
                      sha256={"anyOf": [_SHA, {"type": "null"}]}, reader=_NULL_STR, host=_NULL_STR)
# The data of the step kinds julius writes, as far as readers (summary, diff, replay) use it; any
# other field is free JSON. Every kind of ``steps.KINDS`` has one (tests/recording/test_step_schemas.py).
STEP_SCHEMAS = {
    "cluster": _object(n_workers=_WORKERS, threads_per_worker=_NULL_INT, seed=_NULL_INT, mode=_NULL_STR,
                       address=_NULL_STR, memory_limit={"type": ["integer", "string", "null"]}),
    "environment": _object(["kernel", "workers"], kernel=_SHA,
                           workers={"type": "object", "additionalProperties": _SHA},
                           wheels={"type": "object", "additionalProperties": _object(["filename", "sha256"],
                                                                                     filename=_STR, sha256=_SHA)}),
    "remote_eval": _object(["source"], source=_STR, push=_NULL_STRINGS, failed=_BOOL, dropped=_NULL_STR),
    "cell": _object(["source"], source=_STR),
    "rules": _object(["ns", "source", "rules"], ns=_STR, source=_STR, rules=_STRINGS, failed=_BOOL),
    "dispatch": _object(
        ["targets", "key_rules", "results", "nodes", "jobs"],
        targets={"type": "array", "items": _object(["id", "key"], id=_STR, key=_STR, label=_NULL_STR)},
        results={"type": "object", "additionalProperties": _object(["fp"], fp=_STR, label=_NULL_STR,
                                                                   describe=_NULL_STR)},
        nodes=_INT, jobs=_INT, seconds=_NUMBER, seed=_NULL_INT, dropped=_NULL_STR),
    "graph": _object(
        ["fingerprints"], **_EVENT, fingerprints=_TEXTS, descriptions=_TEXTS, keys=_STRINGS, ntasks=_NULL_INT,
        graphs={"type": "integer", "minimum": 1}, pending=_STRINGS, scattered=_STRINGS, reuses=_STRINGS,
        after={"type": "array", "items": {"type": "array", "prefixItems": [_STR, _STRINGS, _NUMBER],
                                          "minItems": 2, "maxItems": 3}},
        dropped=_NULL_STR),
    "run": _object(**_EVENT, name=_NULL_STR, workers=_NULL_STRINGS, nanny=_BOOL, wait=_BOOL),
    "worker_plugin": _object(["name"], **_EVENT, name=_STR, nanny=_BOOL),
    "adopted_cluster": _object(["address"], client=_NULL_STR, address=_STR, captured=_BOOL, reason=_NULL_STR,
                               owned=_NULL_BOOL, spec={"anyOf": [_CLUSTER_SPEC, {"type": "null"}]}),
    "scatter": _object(["keys"], **_EVENT, keys=_STRINGS, values=_BLOBS, dropped=_NULL_STR,
                       nbytes={"type": ["object", "null"], "additionalProperties": _INT}),
    "fingerprints": _object(["fingerprints"], **_EVENT, graph=_NULL_INT, fingerprints=_TEXTS, descriptions=_TEXTS),
    "dropped": _object(**_EVENT, what=_NULL_STR, keys=_NULL_STRINGS, reason=_NULL_STR, files=_NULL_STRINGS),
    "unreproducible": _object(**_EVENT, what=_NULL_STR, name=_NULL_STR, op=_NULL_STR, count=_NULL_INT,
                              reason=_NULL_STR),
    # a replay scales its cluster to ``workers``
    "worker_joined": _object(**_EVENT, worker=_NULL_STR, workers=_WORKERS,
                             environment={"anyOf": [_SHA, {"type": "null"}]}),
    "worker_left": _object(**_EVENT, worker=_NULL_STR, workers=_WORKERS),
    "inputs": _object(["files"], files={"type": "array", "items": _object(
        # a replay serves a relative path from the reader's cwd
        ["path", "abspath", "cwd", "size", "sha256"], **{**_RECORDED_FILE, "cwd": _STR, "size": _SIZE, "sha256": _SHA},
        embedded=_BOOL)}),
    "remote_inputs": _object(["files"], files={"type": "array", "items": _object(
        ["url"], url=_STR, path=_NULL_STR, cwd=_NULL_STR, size=_NULL_SIZE, etag=_NULL_STR, version_id=_NULL_STR,
        sha256={"anyOf": [_SHA, {"type": "null"}]}, blob={"anyOf": [_SHA, {"type": "null"}]}, reader=_NULL_STR)}),
    "outputs": _object(["files"], files={"type": "array", "items": _object(
        ["path", "abspath"], **_RECORDED_FILE, existed=_NULL_BOOL, content=_NULL_STR,
        in_task=_NULL_BOOL, rewritten=_NULL_BOOL, gone=_NULL_BOOL)}),
    "data": _object(["files"], files={"type": "array", "items": _object(
        ["path", "size", "sha256", "embedded"], path=_STR, size=_SIZE, sha256=_SHA, embedded=_BOOL)}),
}
# fields a step of any kind may hold: the names of those whose text was stored redacted
_ANY_STEP = {"redacted": _STRINGS}
# what ``julius env`` writes as requirements lines: no name or version may hold a space or a newline
_DISTRIBUTION_NAME = {"pattern": "^[A-Za-z0-9]([A-Za-z0-9._-]{0,200}[A-Za-z0-9])?$"}
_VERSION = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,100}$"}
# written after --index-url and "name @", into uv's and conda's files (a URL, or a folder for --find-links):
# no space, never an option (a leading "-")
_URL = {"type": "string", "pattern": "^(?!-)\\S+$", "maxLength": 8192}
_PYTHON_VERSION = {"type": ["string", "null"], "pattern": "^[0-9]+(\\.[0-9]+){0,2}([a-z]+[0-9]*)?\\+?$"}
_REVISION = {"type": ["string", "null"], "pattern": "^[A-Za-z0-9][A-Za-z0-9._/+-]{0,255}$"}   # a commit, a tag
_WORD = {"type": ["string", "null"], "pattern": "^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"}   # vcs, installer, kind
_URLS = {"type": "array", "items": _URL}
_POOL = _object(user_api=_NULL_STR, internal_api=_NULL_STR, version=_NULL_STR, num_threads=_NULL_INT,
                threading_layer=_NULL_STR, architecture=_NULL_STR, prefix=_NULL_STR, filepath=_NULL_STR)
_INDEXES = _object(index_url={"anyOf": [_URL, {"type": "null"}]}, extra_index_urls=_URLS, find_links=_URLS)
#: An environment blob (``recording/environment.py``), as far as ``julius env``, ``diff`` and the
#: rebuilds read it; the Dask config is free JSON.
ENVIRONMENT_SCHEMA = _object(
    python=_object(version=_PYTHON_VERSION, implementation=_NULL_STR, executable=_NULL_STR, hashseed=_NULL_STR),
    os=_object(system=_NULL_STR, release=_NULL_STR, platform=_NULL_STR, machine=_NULL_STR, platform_tag=_NULL_STR,
               libc=_NULL_STR),
    cpu=_object(count=_NULL_INT, model=_NULL_STR, flags=_NULL_STRINGS),
    memory=_object(total=_NULL_INT),
    indexes=_object(pip=_INDEXES, uv=_INDEXES),
    threads=_object(blas={"type": "array", "items": _POOL}, loaded={"type": "array", "items": _POOL},
                    omp_num_threads=_NULL_STR),   # the variable OMP_NUM_THREADS
    dask_config={"type": "object"},
    env_vars=_TEXTS,
    distributions={"type": "object", "propertyNames": _DISTRIBUTION_NAME, "additionalProperties": _object(
        installer=_WORD,
        origin=_object(["kind"], kind={**_WORD, "type": "string"}, url=_URL, vcs=_WORD, commit=_REVISION,
                       requested_revision=_REVISION,
                       hashes={"type": "object", "propertyNames": {"pattern": "^[a-z0-9_]{1,20}$"},
                               "additionalProperties": {"type": "string", "pattern": "^[0-9a-fA-F]{1,256}$"}}))},
    packages={"type": "object", "propertyNames": _DISTRIBUTION_NAME, "additionalProperties": _VERSION},
)
SCHEMAS = {FORMAT: _schemas(FORMAT, "^[0-9a-f]{32}$"), LEGACY_FORMAT: _schemas(LEGACY_FORMAT, "^[0-9a-f]{16}$")}


_SHA_RE, _KEY_ID_RE, _TIME_RE = (re.compile(pattern) for pattern in (_SHA["pattern"], "^[0-9a-f]{32}$",
                                                                     _TIME["pattern"]))
_ENTRY_FIELDS = frozenset(SCHEMAS[FORMAT]["entry"]["required"])


def _plain_entry(entry):
    """True when a journal entry of the current format surely matches its schema (as the writer makes them).

    Checking the few fields by hand costs ~1/20 of the validator's time, which, at one
    entry a captured graph, was a fifth of opening a recording. Anything this does not
    accept is judged (and its error named) by the validator: the patterns are the
    schema's, used as jsonschema uses them (``re.search``); the types are stricter.
    """
    parts, blobs, kind, time = entry.get("parts"), entry.get("blobs"), entry.get("kind"), entry.get("time")
    return (
        _ENTRY_FIELDS <= entry.keys() and entry["format"] == FORMAT
        and type(entry["seq"]) is int and entry["seq"] >= 1
        and type(kind) is str and 1 <= len(kind) <= 64
        and type(time) is str and len(time) <= 40 and _TIME_RE.search(time) is not None
        and type(entry["data"]) is dict
        and type(parts) is dict and all(type(sha) is str and _SHA_RE.search(sha) for sha in parts.values())
        and type(blobs) is dict and all(_SHA_RE.search(sha) and type(size) is int and size >= 0
                                        for sha, size in blobs.items())
        and type(entry["prev"]) is str and _SHA_RE.search(entry["prev"]) is not None
        and type(entry["key_id"]) is str and _KEY_ID_RE.search(entry["key_id"]) is not None
    )


def _plain_lists(manifest):
    """True when a manifest's lists of entries, parts and blobs (a few per step) surely match the schema."""
    journal = manifest.get("journal")
    return type(journal) is list and all(type(sha) is str and _SHA_RE.search(sha) for sha in journal) and all(
        type(listed) is dict and all(_SHA_RE.search(sha) and type(size) is int and size >= 0
                                     for sha, size in listed.items())
        for listed in (manifest.get("parts"), manifest.get("blobs")))


def _without_lists(schema):
    """The manifest schema with its lists still required, but their items not checked (:func:`_plain_lists` did)."""
    properties = {k: v for k, v in schema["properties"].items() if k not in ("journal", "parts", "blobs")}
    return {**schema, "properties": properties}


@functools.cache
def _validators() -> dict:
    """Built at the first check, not at import: importing jsonschema and compiling the schemas took
    0.1 s in every process that imports the recording layer, the workers of a recorded cluster too."""
    validator = _jsonschema().Draft202012Validator
    documents = {(fmt, kind): validator(schema) for fmt, kinds in SCHEMAS.items() for kind, schema in kinds.items()}
    for checked in documents.values():
        validator.check_schema(checked.schema)
    return {"documents": documents,
            "manifests": {fmt: validator(_without_lists(kinds["manifest"])) for fmt, kinds in SCHEMAS.items()},
            "steps": {kind: validator({**schema, "properties": {**schema["properties"], **_ANY_STEP}})
                      for kind, schema in STEP_SCHEMAS.items()},
            "environment": validator(ENVIRONMENT_SCHEMA)}


def check_format(document, where):
    """Return the document's ``format`` if this version reads it, else raise ``RecordingError``."""
    fmt = document.get("format") if isinstance(document, dict) else None
    if fmt not in FORMATS:
        shown = repr(fmt)[:60]
        raise RecordingError(f"{where} has format {shown}; this julius_magics reads {FORMAT!r} "
                             f"(and {LEGACY_FORMAT!r} with --legacy-hmac).")
    return fmt


def check(document, kind, where):
    """Validate an unsealed document of ``kind`` (``manifest``, ``entry``, ``verified``, ``closed``).

    Returns ``document``.

    Raises
    ------
    RecordingError
        Its ``format`` is not one this version reads.
    IntegrityError
        It does not have the shape of its kind: one line naming ``where`` and the field.
    """
    fmt = check_format(document, where)
    if kind == "entry" and fmt == FORMAT and _plain_entry(document):
        return document
    validator = _validators()["documents"][(fmt, kind)]
    if kind == "manifest" and _plain_lists(document):
        validator = _validators()["manifests"][fmt]
    _raise_first(validator, document, where, ())
    return document


def check_step(step, where):
    """Validate the data of a step of a kind julius reads (``STEP_SCHEMAS``); other kinds are free JSON.

    Called on every journal entry as a recording is opened (:mod:`.verify`), so no
    reader (summaries, diff, env, replay, the sidebar) meets a field of the wrong
    shape. Raises ``IntegrityError`` naming ``where``, the step and the field.
    """
    if step.kind in _PLAIN_EVENTS and _plain_event(step.data):
        return step
    validator = _validators()["steps"].get(step.kind)
    if validator is not None:
        _raise_first(validator, step.data, f"{where}: journal entry {step.seq} ({step.kind})", ("data",))
    return step


# The kinds a recording holds thousands of (one a graph a loop of ``submit`` sent), checked by
# hand first as :func:`_plain_entry` does: the validator took 40 us a step.
_PLAIN_EVENTS = frozenset({"graph", "fingerprints"})
_EVENT_TEXTS = ("client", "address", "kind")
_EVENT_MAPS = ("fingerprints", "descriptions")
_EVENT_LISTS = ("keys", "pending", "scattered", "reuses")
_EVENT_FIELDS = frozenset({"seq", "time", "ntasks", "graph", "graphs", "after", "dropped", *_EVENT_TEXTS,
                           *_EVENT_MAPS, *_EVENT_LISTS})


def _plain_event(data):
    """True when a graph's (or its later fingerprints') data surely matches its schema, as the recorder writes it."""
    return (
        data.keys() <= _EVENT_FIELDS and type(data.get("fingerprints")) is dict
        and all(type(data.get(f, 1)) is int for f in ("seq", "ntasks", "graph", "graphs")) and data.get("graphs", 1) >= 1
        and type(data.get("time", 0.0)) in (float, int)
        and all(type(data.get(f, "")) is str for f in _EVENT_TEXTS)
        and all(type(m) is dict and all(type(k) is str and type(v) is str for k, v in m.items())
                for m in (data.get(f, {}) for f in _EVENT_MAPS))
        and all(type(items) is list and all(type(k) is str for k in items)
                for items in (data.get(f, []) for f in _EVENT_LISTS))
        and type(data.get("dropped")) in (str, type(None))
        and type(data.get("after", [])) is list
        and all(type(a) is list and len(a) == 3 and type(a[0]) is str and type(a[1]) is list
                and all(type(k) is str for k in a[1]) and type(a[2]) in (float, int) for a in data.get("after", []))
    )


def environment(raw, where):
    """The environment of a recording's blob ``raw`` (bytes), parsed and validated.

    Raises ``IntegrityError`` naming ``where`` when it is not UTF-8 JSON of an environment's shape.
    """
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise IntegrityError(f"{where} is not valid JSON (corrupt or not an environment).") from None
    _raise_first(_validators()["environment"], document, where, ())
    return document


def _raise_first(validator, document, where, prefix):
    error = _jsonschema().exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        place = "/".join(str(p) for p in (*prefix, *error.absolute_path)) or "top level"
        message = " ".join(error.message.split())
        if len(message) > 120:
            message = message[:117] + "..."
        raise IntegrityError(f"{where} is malformed: at {place}: {message}.")
