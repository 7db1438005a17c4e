"""A recording on disk: its layout, its steps, the writer that appends them, the reader of a verified one.

Layout of a store (see ``docs/format.md``)::

    <store>/_blobs/<sha256>                  data, shared by every recording of the store
    <store>/_tmp/                            temporary files of local writes (renamed into place)
    <store>/<name>/manifest.json             sealed manifest (written at create, rewritten at close)
    <store>/<name>/journal/000001.json       one sealed JSON entry per step, chained
    <store>/<name>/parts/<sha256>            binary parts of steps (opaque bytes)
    <store>/<name>/closed.json               sealed marker written when the writer closes
    <store>/<name>/verified.json             sealed sidecar written by :func:`write_verified`

The journal knows nothing of Dask or pickles: steps are JSON dicts, parts and blobs are bytes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import datetime
import hashlib
import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field

from ..errors import IntegrityError, RecordingError, RecordingExistsError, RecordingNotFoundError
from . import integrity, redaction
from .files import TMP, LocalFiles
from .integrity import FORMAT, canonical, sha256_hex

__all__ = ["RecordingInfo", "Step", "RecordingWriter", "Recording", "validate_name", "read_info", "claim",
           "put_blob", "file_digest", "new_manifest", "entry_file", "checked", "write_verified", "flush_to_disk"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
ENTRY_PATTERN = re.compile(r"journal/[0-9]{6,}\.json\Z")
PART_PATTERN = re.compile(r"parts/[0-9a-f]{64}\Z")
KNOWN_FILE = re.compile(r"(manifest\.json|verified\.json|closed\.json|journal/[0-9]{6,}\.json|parts/[0-9a-f]{64})\Z")
SHA_PATTERN = re.compile(r"[0-9a-f]{64}\Z")
MANIFEST, VERIFIED, CLOSED, BLOBS = "manifest.json", "verified.json", "closed.json", "_blobs"
STATUSES = ("complete", "incomplete")


def validate_name(name):
    """Return ``name`` if it is a valid recording name, else raise ``ValueError`` naming it.

    >>> validate_name("fraud-v1.2")
    'fraud-v1.2'
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"Invalid recording name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return name


def now():
    """The current UTC time as ``2026-11-29T12:00:00Z``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def entry_file(seq):
    """``journal/000042.json``: the relative path of journal entry ``seq``."""
    return f"journal/{seq:06d}.json"


@dataclass(frozen=True)
class RecordingInfo:
    """What a store knows about one recording without opening it.

    ``status`` is ``"complete"``, ``"incomplete"`` (its writer never closed it),
    ``"partial"`` (closed, but capture missed something: never verified) or
    ``"verified"`` (complete, and a replay by you or a key you trust matched
    it). ``results`` holds the headline results (label -> value) of its labelled
    targets. ``key_id`` is the fingerprint of the author's key; ``trusted`` says
    whether it is yours or one you trust. The ``size`` of an incomplete
    recording counts its journal and parts only.
    """

    name: str
    created: str
    steps: int
    size: int
    workers: int | None
    status: str
    note: str
    data_mode: str
    key_id: str
    signed_by_me: bool
    trusted: bool = False
    results: dict = field(default_factory=dict)

    def as_dict(self):
        """Return the fields as a JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class Step:
    """One journal entry: ``seq`` (from 1), ``kind``, ``data`` (JSON) and the names of its parts."""

    seq: int
    kind: str
    data: dict
    part_names: tuple


def read_info(files, name, raw, verified_raw, key, trusted, legacy_hmac=False):
    """The :class:`RecordingInfo` of recording ``name`` from its manifest bytes ``raw``.

    Parameters
    ----------
    verified_raw : bytes or None
        Its verification sidecar, if any (a bad one is ignored with a warning).
    trusted : collection of str
        Fingerprints of the trusted keys.

    Raises
    ------
    IntegrityError, UntrustedRecordingError, RecordingError
        The manifest is changed, malformed, of an unknown format, or an old
        HMAC one without ``legacy_hmac``: one line saying why.
    """
    from .verify import check_sidecar, read_manifest

    body, mine = read_manifest(raw, name, key, True, legacy_hmac)
    meta = body["meta"]
    status = body["status"]
    steps, size = body["steps"], body["size"]
    if status == "incomplete":
        tree = files.tree(files.path(name))
        steps = sum(1 for rel in tree if ENTRY_PATTERN.match(rel))
        size = sum(size for rel, size in tree.items() if rel not in (MANIFEST, VERIFIED, CLOSED))
    elif not meta.get("partial") and _matched(check_sidecar(verified_raw, name, raw, key, trusted)):
        status = "verified"
    return _info(name, body, steps, size, status, mine, mine or body["key_id"] in trusted)


def _info(name, manifest, steps, size, status, mine, trusted):
    """The :class:`RecordingInfo` of a verified manifest; a closed partial recording lists as ``partial``."""
    meta = manifest["meta"]
    if status == "complete" and meta.get("partial"):
        status = "partial"
    return RecordingInfo(
        name=name, created=manifest["created"], steps=steps, size=size, workers=meta.get("workers"),
        status=status, note=meta.get("note") or "", data_mode=meta.get("data_mode", "embed"),
        key_id=manifest["key_id"], signed_by_me=mine, trusted=trusted, results=dict(meta.get("headlines") or {}))


def new_manifest(name, meta, key):
    """The body of the first manifest of a new recording (``incomplete``, no steps)."""
    validate_name(name)
    meta = dict(meta or {})
    canonical(meta)  # refuse non-JSON meta now, not at close
    return {
        "format": FORMAT,
        "name": name,
        "created": now(),
        "closed": None,
        "status": "incomplete",
        "meta": meta,
        "key_id": integrity.key_id(key),
        "steps": 0,
        "journal": [],
        "chain_head": None,
        "parts": {},
        "blobs": {},
        "size": 0,
    }


def claim(files, name, manifest_bytes, where):
    """Write a new manifest exclusively: of two writers of one name, exactly one gets it."""
    try:
        files.write(files.path(name, MANIFEST), manifest_bytes, exclusive=True)
    except FileExistsError:
        raise RecordingExistsError(f"Recording '{name}' already exists in {where}.") from None
    # leftovers of a delete that crashed half-way would mix into this recording
    for leftover in ("journal", "parts", VERIFIED, CLOSED):
        files.rm(files.path(name, leftover))


def _matched(sidecar) -> bool:
    """Whether the last replay written down (a checked ``verified.json`` body, or None) matched."""
    return sidecar is not None and sidecar["summary"].get("verified") is True


def write_verified(files, name, summary, key, where):
    """Write the sealed ``verified.json`` of recording ``name``: how its last replay ended.

    ``summary`` (JSON) says it with ``"verified"``: true when every result matched.  A later
    replay that did not match overwrites it, so the recording is listed as verified no more.
    """
    validate_name(name)
    try:
        manifest = files.read(files.path(name, MANIFEST))
    except FileNotFoundError:
        raise RecordingNotFoundError(f"No recording '{name}' in {where}.") from None
    body = {
        "format": FORMAT,
        "name": name,
        "verified_at": now(),
        "manifest_sha256": sha256_hex(manifest),
        "summary": summary,
        "key_id": integrity.key_id(key),
    }
    files.write(files.path(name, VERIFIED), integrity.seal(body, key))


def put_blob(files, data, sha256=None, size=None):
    """Store ``data`` once per store; return its SHA-256 and size.

    ``data`` is bytes, a file path or an iterable of byte chunks (a stream: ``sha256``
    and ``size`` are then required). Files and streams are never held whole in memory.
    With ``sha256`` known, a blob the store already holds is not read again, and the
    bytes are hashed while they are written: a blob whose bytes do not hash to
    ``sha256`` is never committed (``IntegrityError``, nothing left behind).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        sha, size = sha256_hex(data), len(data)
        if sha256 is not None and sha != sha256:
            raise IntegrityError(f"data of {size} bytes has SHA-256 {sha[:12]}…, expected {sha256[:12]}….")
        target = files.path(BLOBS, sha)
        if files.size(target) != size:
            files.write(target, data)
        return sha, size
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if sha256 is None:
            size, sha256 = file_digest(path)
        if size is None:
            size = os.path.getsize(path)
        with open(path, "rb") as f:
            return _put_stream(files, integrity.read_chunks(f), sha256, size, f"file {path}")
    if sha256 is None or size is None:
        raise ValueError("a stream of chunks is stored under its known SHA-256 and size: pass sha256= and size=")
    return _put_stream(files, data, sha256, size, f"a stream of {size} bytes")


def _put_stream(files, chunks, sha, size, where):
    """Write ``chunks`` as blob ``sha`` unless the store holds it; checked before it appears."""
    target = files.path(BLOBS, sha)
    try:
        if files.size(target) != size:
            files.write_chunks(target, checked(chunks, sha, where, size))
    finally:
        getattr(chunks, "close", lambda: None)()   # a stream not consumed (blob already stored) is let go
    return sha, size


def file_digest(path):
    """``(size, sha256 hex)`` of a local file, streamed (as :func:`put_blob` hashes it)."""
    with open(path, "rb") as f:
        sha, size = integrity.hash_stream(integrity.read_chunks(f))
    return size, sha


def checked(chunks, sha, where, size=None):
    """Pass ``chunks`` through, raising ``IntegrityError`` at the end if their SHA-256 is not ``sha``.

    With ``size``, more bytes than that raise at once (a file growing while it is copied).
    """
    h = hashlib.sha256()
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if size is not None and seen > size:
            raise IntegrityError(f"{where} changed while it was being copied (more than {size} bytes).")
        h.update(chunk)
        yield chunk
    if h.hexdigest() != sha:
        raise IntegrityError(f"{where} changed while it was being copied (SHA-256 {h.hexdigest()[:12]}…, expected {sha[:12]}…).")


def flush_to_disk(paths):
    """Put the local files ``paths`` (and their folders' entries) on stable storage, with one flush.

    Linux's ``syncfs`` flushes the whole file system holding them in one call: far
    cheaper than an ``fsync`` a file (ext4 here: 0.02 ms against 0.1-1 ms a file
    when thousands are flushed). Elsewhere, each file and folder is ``fsync``-ed.
    """
    if _syncfs is not None:
        fd = os.open(os.path.dirname(paths[0]), os.O_RDONLY)
        try:
            if _syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    folders = sorted({os.path.dirname(p) for p in paths}) if os.name == "posix" else []   # renames made durable
    for path in [*paths, *folders]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _find_syncfs():
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError, TypeError):   # not Linux
        return None


_syncfs = _find_syncfs()


class RecordingWriter:
    """Appends steps and blobs to a new recording; :meth:`close` seals it.

    Every step is on storage, atomically and chained, before :meth:`add_step`
    returns, so a writer killed at any moment leaves an ``incomplete``
    recording that opens with all the steps added before. Inside
    :meth:`batch`, the steps reach stable storage together, after it ends, in
    the writer's flush thread. A manifest is sealed when it is asked for and
    written once the steps it signs are on stable storage: :meth:`update_meta`
    leaves that to the flush thread, :meth:`close` waits for it (and raises
    what the flush thread failed with). Thread-safe.

    No secret is written: every step's data and the manifest's meta go through
    :meth:`scrub` (credentials in text, values under secret names, and every value
    known to be secret, wherever it appears: :attr:`secrets`). A step whose data it
    changed lists the changed fields in its ``redacted``. Parts are opaque: the
    caller asks :meth:`secret_in` of each before it adds it.

    Parameters
    ----------
    store : Store
        Gives ``files``, ``key`` and ``info(name)``.
    manifest : dict
        The body :func:`new_manifest` made, already claimed in the store.
    """

    #: Names of the format's own fields that look secret but are not: a Dask key, rules by name.
    FIELD_NAMES = frozenset({"key", "key_rules"})
    #: Fields whose maps are keyed by data (Dask keys, node ids, addresses, labels), not by names.
    KEYED_BY_DATA = frozenset({"fingerprints", "descriptions", "values", "results", "workers", "wheels",
                               "headlines"})
    #: Fields whose maps' values are hex digests: never a secret (10k of them in a big graph step).
    DIGESTS = frozenset({"fingerprints"})

    def __init__(self, store, manifest):
        self.store = store
        self.name = manifest["name"]
        self._manifest = manifest
        self._prev = integrity.chain_start(self.name, manifest["created"])
        self._pending_blobs = {}  # blobs added since the last step, listed in the next entry
        self._lock = threading.Lock()
        self._batches = 0         # batches open (nested ones count)
        self._unsynced = []       # files written in the open batch, not yet on stable storage
        self._folders = set()     # folders known to exist (made once a batch)
        self._flusher = None      # the flush thread (made at the first batch)
        self._flushing = []       # what was handed to it, not yet waited for
        self.closed = False
        self.secrets = redaction.Secrets()   # known to be secret: never written, wherever they appear
        self._refresh_secrets()
        meta = self._scrub(manifest["meta"])
        if meta is not manifest["meta"]:   # the claim wrote it as it came: rewritten at once
            manifest["meta"] = meta
            self._write_manifest()

    def __repr__(self):
        return f"<RecordingWriter {self.name!r} steps={self._manifest['steps']}>"

    def _check_open(self):
        if self.closed:
            raise RecordingError(f"Recording '{self.name}' is closed; no more steps can be added.")

    # --- secrets ------------------------------------------------------------------------------
    def _refresh_secrets(self):
        """Learn the secrets the kernel holds now (a cell may have made an fsspec filesystem; under the lock).

        Once a batch (a drain's steps come in one) or a step outside: 0.05-0.2 ms each time.
        """
        for _ in range(3):
            try:
                self.secrets.update(redaction.known_secrets())
                return
            except RuntimeError:   # another thread changed the Dask config while it was read: again
                continue

    def _scrub(self, tree, names=True):
        return self.secrets.scrub(tree, self.FIELD_NAMES, self.KEYED_BY_DATA, self.DIGESTS, names=names)

    def scrub(self, value, names=True):
        """``value`` (text or a JSON tree) as a step would hold it: credentials and known secrets cut out.

        For what the caller prints or must know was changed (a replayed source); with
        ``names=False``, values under secret-looking names are kept (an environment's
        distributions: ``google-auth``), only patterns and known values are cut.
        """
        with self._lock:
            if not self._batches:
                self._refresh_secrets()
            return self._scrub(value, names)

    def secret_in(self, data):
        """Where a secret that ``data`` (a part's bytes, never unpickled) holds was found, or None.

        Known secret values (as UTF-8, as pickles hold a ``str``) and credentials in URLs.
        A part for which this is not None must not be added.
        """
        with self._lock:
            if not self._batches:
                self._refresh_secrets()
            return self.secrets.found_in(data)

    @contextlib.contextmanager
    def batch(self):
        """Make the steps added inside durable together, with one flush when the outermost batch ends.

        Inside, each step is still written and chained as :meth:`add_step`
        returns, each file appearing whole (a temporary file renamed into place):
        a process killed inside leaves an ``incomplete`` recording that opens
        with every step added before (the page cache outlives the process).
        Only the flush to stable storage waits for the end: one for the batch
        instead of two ``fsync`` calls a step, and in the flush thread, since
        Linux's ``syncfs`` also waits for whatever else the notebook wrote (a
        cell's end waited 0.6 s for 2 GB of its own output). Power lost before
        that flush may tear the batch's last entries; readers then stop before
        the first torn one (:func:`.verify.verify`). The batch is the writer's:
        steps other threads add meanwhile are flushed with it. Object stores
        publish each file durably already: there a batch changes nothing.

        >>> with writer.batch():              # doctest: +SKIP
        ...     for event in events:
        ...         writer.add_step("graph", event)
        """
        with self._lock:
            self._batches += 1
            if self._batches == 1:
                self._refresh_secrets()
        try:
            yield self
        finally:
            with self._lock:
                self._batches -= 1
                if not self._batches:
                    self._flush()

    def _write(self, path, data):
        """Write a file of a step: at once durable, or (in a batch, on a local disk) visible and flushed later."""
        files = self.store.files
        if not (self._batches and isinstance(files, LocalFiles)):
            files.write(path, data)
            return
        for folder in (os.path.dirname(path), files.path(TMP)):
            if folder not in self._folders:
                os.makedirs(folder, exist_ok=True)
                self._folders.add(folder)
        # unique while it exists: one thread of one process writes it, then renames it
        tmp = files.path(TMP, f"{os.getpid()}-{threading.get_ident()}-{os.path.basename(path)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # as mkstemp makes them
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)   # whole or not at all, even for a process killed mid-write
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._unsynced.append(path)

    def _flush(self):
        """Hand the files written in the batch to the flush thread (under the lock)."""
        if self._unsynced:
            self._in_flush_thread(flush_to_disk, self._unsynced)
            self._unsynced = []
        self._folders = set()

    def _in_flush_thread(self, function, *args):
        """``function(*args)`` in the flush thread, after what was handed to it before (under the lock)."""
        if self._flusher is None:
            self._flusher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="julius-journal-flush")
        self._flushing.append(self._flusher.submit(function, *args))

    def _wait_flushed(self):
        """Wait for the flush thread; raise the first error it met (under the lock)."""
        flushing, self._flushing = self._flushing, []
        for done in flushing:
            try:
                done.result()
            except OSError as error:
                raise RecordingError(f"Recording '{self.name}': its steps could not be put on stable storage "
                                     f"({error}); it stays incomplete.") from None

    def sync(self):
        """Wait until every step and manifest handed to the flush thread is on stable storage."""
        with self._lock:
            self._wait_flushed()

    def add_step(self, kind, data, parts=None):
        """Append a step; return its sequence number (1, 2, ...).

        Parameters
        ----------
        kind : str
            What the step is (``"cell"``, ``"remote_eval"``, ...).
        data : dict
            Plain JSON (no NaN, string keys); stored scrubbed (:meth:`scrub`).
        parts : dict of str to bytes, optional
            Named binary attachments, stored by SHA-256.
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"Recording '{self.name}': step kind must be a non-empty string, not {kind!r}.")
        if not isinstance(data, dict):
            raise ValueError(f"Recording '{self.name}': step data must be a dict, not {type(data).__name__}.")
        parts = dict(parts or {})
        for part_name, value in parts.items():
            if not isinstance(part_name, str) or not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueError(
                    f"Recording '{self.name}': part {part_name!r} must be bytes under a str name, "
                    f"not {type(value).__name__}."
                )
        files = self.store.files
        with self._lock:
            self._check_open()
            if not self._batches:
                self._refresh_secrets()
            scrubbed = self._scrub(data)
            if scrubbed is not data:   # a replay must know what it holds is not what was run
                scrubbed["redacted"] = sorted(str(k) for k in scrubbed if scrubbed[k] is not data.get(k))
                data = scrubbed
            seq = self._manifest["steps"] + 1
            body = {
                "format": FORMAT,
                "seq": seq,
                "kind": kind,
                "time": now(),
                "data": data,
                "parts": {part_name: sha256_hex(value) for part_name, value in parts.items()},
                "blobs": self._pending_blobs,
                "prev": self._prev,
                "key_id": self._manifest["key_id"],
            }
            try:   # sealed before anything is written: data that is not plain JSON leaves nothing behind
                raw, digest = integrity.seal_with_digest(body, self.store.key)
            except ValueError as error:
                raise ValueError(f"Recording '{self.name}', step {seq} ({kind}): {error}") from None
            for part_name, value in parts.items():
                sha = body["parts"][part_name]
                if sha not in self._manifest["parts"]:
                    self._write(files.path(self.name, "parts", sha), bytes(value))
                    self._manifest["parts"][sha] = len(value)
                    self._manifest["size"] += len(value)
            self._write(files.path(self.name, entry_file(seq)), raw)
            self._prev = digest
            self._pending_blobs = {}
            self._manifest["steps"] = seq
            self._manifest["journal"].append(sha256_hex(raw))
            self._manifest["size"] += len(raw)
            return seq

    def add_blob(self, data, sha256=None, size=None):
        """Store data once per store; return its SHA-256 hex.

        ``data`` is bytes, a file path or an iterable of byte chunks with its ``sha256``
        and ``size`` (see :func:`put_blob`: streamed, and checked against ``sha256``
        before the blob is committed). The blob belongs to this recording from the
        next step on (or from :meth:`close`).
        """
        with self._lock:
            self._check_open()
        sha, size = put_blob(self.store.files, data, sha256, size)
        self.add_stored_blob(sha, size)
        return sha

    def add_stored_blob(self, sha, size):
        """Make blob ``sha`` (already in the store's ``_blobs``) part of this recording from the next step on."""
        with self._lock:
            self._check_open()
            if sha not in self._manifest["blobs"]:
                self._manifest["blobs"][sha] = size
                self._pending_blobs[sha] = size
                self._manifest["size"] += size

    def update_meta(self, **fields):
        """Merge ``fields`` into the manifest's meta (e.g. ``workers=4``), and rewrite the manifest."""
        with self._lock:
            self._check_open()
            if not self._batches:
                self._refresh_secrets()
            meta = {**self._manifest["meta"], **self._scrub(fields)}
            try:
                canonical(meta)
            except ValueError as error:
                raise ValueError(f"Recording '{self.name}': meta {sorted(fields)}: {error}") from None
            self._manifest["meta"] = meta
            self._write_manifest(wait=False)

    def _write_manifest(self, wait=True):
        """Seal the manifest as it is now; write it once the steps it signs are durable: in the flush
        thread, or (``wait``) here, after it."""
        files = self.store.files
        raw = integrity.seal(self._manifest, self.store.key)
        self._flush()
        if not wait:
            self._in_flush_thread(files.write, files.path(self.name, MANIFEST), raw)
            return raw
        self._wait_flushed()
        files.write(files.path(self.name, MANIFEST), raw)
        return raw

    def close(self, status="complete"):
        """Seal the manifest (hashes of every entry, part and blob) and return the :class:`RecordingInfo`."""
        if status not in STATUSES:
            raise ValueError(f"Recording '{self.name}': status must be one of {STATUSES}, not {status!r}.")
        with self._lock:
            self._check_open()
            self._manifest.update(status=status, closed=now(), chain_head=self._prev)
            raw = self._write_manifest()
            # After the manifest: a crash in between leaves a closed recording without its marker,
            # never a marker that refuses the writer's last manifest.
            marker = {key: self._manifest[key] for key in ("format", "name", "created", "closed", "steps",
                                                           "chain_head", "key_id")}
            files = self.store.files
            files.write(files.path(self.name, CLOSED), integrity.seal(marker, self.store.key))
            self.closed = True
            if self._flusher is not None:
                self._flusher.shutdown()
        if status == "incomplete":
            self.store.files.refresh()   # its size and steps are counted from a listing
        return read_info(self.store.files, self.name, raw, None, self.store.key, ())


class Recording:
    """A verified recording: its info, steps, parts and blobs.

    Parts and blobs are hashed again when read, so bytes changed after
    :meth:`Store.open` are refused too.

    Parameters
    ----------
    store : Store
        Where its blobs are (``store.files``).
    source : verify.Source
        Where its own files are read from (the store, or an archive).
    verified : verify.Verified
        What :func:`verify.verify` established.
    """

    def __init__(self, store, source, verified):
        self.store = store
        self.name = source.name
        self._source = source
        self._files = verified.files
        self._blobs = verified.blobs
        self.manifest = verified.manifest
        self.steps = verified.steps
        self.verification = verified.verified  # the last replay's sidecar (by a trusted key), or None
        self.trusted = verified.trusted
        manifest = verified.manifest
        status = manifest["status"]
        if status == "complete" and _matched(verified.verified) and not manifest["meta"].get("partial"):
            status = "verified"
        size = manifest["size"] if status != "incomplete" else sum(
            source.tree().get(rel, 0) for rel in verified.files if rel not in (MANIFEST, VERIFIED, CLOSED))
        self.info = _info(self.name, manifest, len(self.steps), size, status, verified.signed_by_me,
                          verified.trusted)

    def __repr__(self):
        return f"<Recording {self.name!r} steps={len(self.steps)} status={self.info.status}>"

    @property
    def meta(self):
        """The manifest's meta fields (note, data_mode, cluster, workers, ...)."""
        return self.manifest["meta"]

    @property
    def blobs(self):
        """SHA-256 -> size of every blob of the recording."""
        return dict(self._blobs)

    @property
    def file_names(self):
        """Relative paths of the recording's own verified files (manifest, entries, parts, verified.json)."""
        return sorted(self._files)

    def mark_verified(self, summary):
        """Record in the store how a replay of this recording ended (``summary``: JSON with ``verified``)."""
        write_verified(self.store.files, self.name, summary, self.store.key, self.store.url)

    def entry(self, seq):
        """The body of journal entry ``seq``, re-verified against the bytes read at open."""
        raw = self._source.read(entry_file(seq))
        if sha256_hex(raw) != self._files[entry_file(seq)]:
            raise IntegrityError(f"Recording '{self.name}': journal entry {seq} was changed after it was opened.")
        return json.loads(raw)

    def part(self, step, name):
        """Return the bytes of part ``name`` of ``step`` (a :class:`Step` or its seq), re-verified."""
        seq = step.seq if isinstance(step, Step) else step
        if not isinstance(seq, int) or not 1 <= seq <= len(self.steps):
            raise RecordingError(f"Recording '{self.name}' has no step {seq!r}.")
        if name not in self.steps[seq - 1].part_names:
            raise RecordingError(
                f"Recording '{self.name}', step {seq}: no part {name!r} (has {list(self.steps[seq - 1].part_names)})."
            )
        sha = self.entry(seq)["parts"][name]
        data = self._source.read(f"parts/{sha}")
        if sha256_hex(data) != sha:
            raise IntegrityError(f"Recording '{self.name}': parts/{sha} was changed after it was opened.")
        return data

    def _blob_path(self, sha):
        if sha not in self._blobs:
            raise RecordingError(f"Recording '{self.name}' has no blob {sha!r}.")
        return self.store.files.path(BLOBS, sha)

    def blob(self, sha):
        """Return the bytes of blob ``sha``, re-verified."""
        data = self.store.files.read(self._blob_path(sha))
        if sha256_hex(data) != sha:
            raise IntegrityError(f"Recording '{self.name}': blob {sha[:12]}… was changed after it was opened.")
        return data

    def open_blob(self, sha):
        """A binary file object streaming blob ``sha`` (not re-verified: pass it through :func:`checked`)."""
        return self.store.files.open_read(self._blob_path(sha))

    def blob_to_file(self, sha, path):
        """Copy blob ``sha`` to the local file ``path`` (streamed; verified before ``path`` appears)."""
        path = os.fspath(path)
        tmp = f"{path}.{os.getpid()}.tmp"
        where = f"Recording '{self.name}': blob {sha[:12]}…"
        try:
            with self.open_blob(sha) as src, open(tmp, "wb") as dst:
                for chunk in checked(integrity.read_chunks(src), sha, where, self._blobs[sha]):
                    dst.write(chunk)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
