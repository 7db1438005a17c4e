"""JSON schemas of a recording's documents, checked before any reader uses a field.

A signature proves who wrote a document, not that its writer was julius: a
stranger's (or a forger's) validly signed manifest can hold anything. Every
reader therefore validates the unsealed body with :func:`check` first, which
raises one line naming the file and the field::

    Recording 'x': manifest.json is malformed: at created: None is not of type 'string'.

The schemas follow ``docs/format.md``; ``meta`` and a step's ``data`` are free
JSON objects except the few ``meta`` fields the readers show.
"""

from __future__ import annotations

import functools
import re
import sys

from ..errors import IntegrityError, RecordingError
from .integrity import FORMAT, FORMATS, LEGACY_FORMAT

__all__ = ["check", "check_format", "SCHEMAS", "STEP_SCHEMAS"]

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
_STRINGS = {"type": "array", "items": _STR}
# The data of the step kinds the recorder writes, as far as readers (summary, diff, replay) use it;
# any other field, and any other kind, is free JSON.
STEP_SCHEMAS = {
    "cluster": _object(n_workers=_NULL_INT, threads_per_worker=_NULL_INT, seed=_NULL_INT, mode=_NULL_STR),
    "environment": _object(["kernel", "workers"], kernel=_SHA,
                           workers={"type": "object", "additionalProperties": _SHA},
                           wheels={"type": "object", "additionalProperties": _object(["filename", "sha256"],
                                                                                     filename=_STR, sha256=_SHA)}),
    "remote_eval": _object(["source"], source=_STR, push={"type": ["array", "null"], "items": _STR},
                           failed={"type": "boolean"}),
    "cell": _object(["source"], source=_STR),
    "rules": _object(["ns", "source", "rules"], ns=_STR, source=_STR, rules=_STRINGS, failed={"type": "boolean"}),
    "dispatch": _object(
        ["targets", "key_rules", "results", "nodes", "jobs"],
        targets={"type": "array", "items": _object(["id", "key"], id=_STR, key=_STR, label=_NULL_STR)},
        results={"type": "object", "additionalProperties": _object(["fp"], fp=_STR, label=_NULL_STR)},
        nodes=_INT, jobs=_INT, seconds={"type": "number"}),
    "graph": _object(["fingerprints"], fingerprints={"type": "object", "additionalProperties": _STR},
                     descriptions={"type": "object"}, keys={"type": "array"}, ntasks=_NULL_INT),
    "worker_plugin": _object(["name"], name=_STR),
    # a replay scales its cluster to ``workers``
    "worker_joined": _object(workers=_WORKERS),
    "worker_left": _object(workers=_WORKERS),
    "inputs": _object(["files"], files={"type": "array", "items": _object(
        ["path", "abspath", "size", "sha256"], path=_STR, abspath=_STR, cwd=_NULL_STR, size=_SIZE, sha256=_SHA,
        mtime_ns=_NULL_INT, reader=_NULL_STR, embedded={"type": "boolean"})}),
    "outputs": _object(["files"], files={"type": "array", "items": _object(
        ["path", "abspath"], path=_STR, abspath=_STR, cwd=_NULL_STR, size={"type": ["integer", "null"], "minimum": 0},
        sha256={"anyOf": [_SHA, {"type": "null"}]}, mtime_ns=_NULL_INT, reader=_NULL_STR,
        in_task={"type": ["boolean", "null"]}, rewritten={"type": ["boolean", "null"]})}),
    "data": _object(["files"], files={"type": "array", "items": _object(
        ["path", "size", "sha256", "embedded"], path=_STR, size=_SIZE, sha256=_SHA, embedded={"type": "boolean"})}),
}
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
            "steps": {kind: validator(schema) for kind, schema in STEP_SCHEMAS.items()}}


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

    The store keeps any JSON as a step; the readers that interpret a kind
    (summaries, diff, replay) call this first. Raises ``IntegrityError``
    naming ``where``, the step and the field.
    """
    validator = _validators()["steps"].get(step.kind)
    if validator is not None:
        _raise_first(validator, step.data, f"{where}: journal entry {step.seq} ({step.kind})", ("data",))
    return step


def _raise_first(validator, document, where, prefix):
    error = _jsonschema().exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        place = "/".join(str(p) for p in (*prefix, *error.absolute_path)) or "top level"
        message = " ".join(error.message.split())
        if len(message) > 120:
            message = message[:117] + "..."
        raise IntegrityError(f"{where} is malformed: at {place}: {message}.")
