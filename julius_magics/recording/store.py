"""The recording store: journals of steps and content-addressed blobs on any fsspec file system.

Layout of a store (see ``docs/format.md``)::

    <store>/_blobs/<sha256>                  data, shared by every recording of the store
    <store>/_tmp/                            temporary files of local writes (renamed into place)
    <store>/<name>/manifest.json             sealed manifest (written at create, rewritten at close)
    <store>/<name>/journal/000001.json       one sealed JSON entry per step, chained
    <store>/<name>/parts/<sha256>            binary parts of steps (opaque bytes)
    <store>/<name>/verified.json             sealed sidecar written by ``mark_verified``

Every write is atomic: a temporary file renamed into place on a local disk,
a single put on an object store. The store knows nothing of Dask or pickles:
steps are JSON dicts, parts and blobs are bytes.
"""

import datetime
import hashlib
import json
import os
import re
import tempfile
import threading
import zipfile
import zlib
from dataclasses import asdict, dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

from julius_magics.errors import (
    IntegrityError,
    JuliusError,
    RecordingError,
    RecordingExistsError,
    RecordingNotFoundError,
    UntrustedRecordingError,
)
from julius_magics.recording import integrity
from julius_magics.recording.integrity import FORMAT, canonical, sha256_hex

STORE_ENV = "JULIUS_STORE"
DEFAULT_STORE = "~/.julius/recordings"
EXPORT_FORMAT = "julius-export/1"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
ENTRY_PATTERN = re.compile(r"journal/[0-9]{6,}\.json\Z")
PART_PATTERN = re.compile(r"parts/[0-9a-f]{64}\Z")
KNOWN_FILE = re.compile(r"(manifest\.json|verified\.json|journal/[0-9]{6,}\.json|parts/[0-9a-f]{64})\Z")
SHA_PATTERN = re.compile(r"[0-9a-f]{64}\Z")
MANIFEST, VERIFIED, BLOBS, TMP = "manifest.json", "verified.json", "_blobs", "_tmp"
STATUSES = ("complete", "incomplete")
# exclusive puts on memory:// (and other back-ends without conditional writes) check, then write
_EXCLUSIVE_LOCK = threading.Lock()


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


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _entry_file(seq):
    return f"journal/{seq:06d}.json"


@dataclass(frozen=True)
class RecordingInfo:
    """What a store knows about one recording without opening it.

    ``status`` is ``"complete"``, ``"incomplete"`` (its writer never closed it),
    ``"verified"`` (complete, and a replay matched it) or ``"damaged"`` (its
    manifest cannot be read; ``Store.open`` says why). The ``size`` of an
    incomplete recording counts its journal and parts only.
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


class _Files:
    """The few file operations the store needs, atomic on local disks and object stores alike."""

    def __init__(self, fs, root):
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.local = isinstance(fs, LocalFileSystem)

    def path(self, *parts):
        return "/".join([self.root.rstrip("/"), *parts])

    def read(self, path):
        return self.fs.cat_file(path)

    def open_read(self, path):
        return self.fs.open(path, "rb")

    def write(self, path, data, exclusive=False):
        """Write ``data`` to ``path`` atomically; with ``exclusive``, raise ``FileExistsError`` if it exists."""
        if self.local:
            self._write_local(path, [data], exclusive)
        elif exclusive:
            with _EXCLUSIVE_LOCK:
                try:
                    self.fs.pipe_file(path, data, mode="create")
                except OSError as error:
                    # s3fs reports a failed If-None-Match as EINVAL on some servers
                    if isinstance(error, FileExistsError) or "Precondition" in str(error):
                        raise FileExistsError(path) from None
                    raise
        else:
            self.fs.pipe_file(path, data)

    def write_chunks(self, path, chunks):
        """Write an iterable of byte chunks to ``path`` so that readers see all of it or nothing."""
        if self.local:
            self._write_local(path, chunks, exclusive=False)
        else:
            # object stores (and memory) publish a file only when it is closed
            f = self.fs.open(path, "wb")
            try:
                for chunk in chunks:
                    f.write(chunk)
            except BaseException:
                getattr(f, "discard", lambda: None)()  # s3fs: abort the upload
                f.close()
                self.rm(path)
                raise
            f.close()

    def _write_local(self, path, chunks, exclusive):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp_dir = self.path(TMP)
        os.makedirs(tmp_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if exclusive:
                os.link(tmp, path)  # fails if path exists: atomic and exclusive
            else:
                os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def exists(self, path):
        return self.fs.exists(path)

    def size(self, path):
        """Size of ``path`` in bytes, or ``None`` if it does not exist."""
        try:
            return self.fs.size(path)
        except FileNotFoundError:
            return None

    def names(self, path):
        """Names directly under the folder ``path`` (empty if it does not exist)."""
        try:
            return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []

    def tree(self, path):
        """Map each file under ``path`` (as a ``/``-separated relative path) to its size."""
        try:
            found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.fs._strip_protocol(path).rstrip("/") + "/"
        return {
            full[len(prefix):]: detail.get("size") or 0
            for full, detail in found.items()
            if detail.get("type") != "directory" and full.startswith(prefix)
        }

    def rm(self, path):
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def refresh(self, path=None):
        """Forget cached listings (s3fs caches them; other processes write too)."""
        self.fs.invalidate_cache(path)


class Store:
    """A place holding recordings: a local folder or any fsspec URL.

    Parameters
    ----------
    url : str or path-like, optional
        ``None`` means ``$JULIUS_STORE`` or ``~/.julius/recordings``. Any
        fsspec URL works: ``"s3://bucket/prefix"``, ``"memory://x"``,
        ``"file:///..."`` or a plain path.
    **storage_options
        Passed to fsspec, e.g. ``client_kwargs={"endpoint_url": ...}`` for an
        S3-compatible server. s3fs also reads the usual ``AWS_*`` variables.

    Examples
    --------
    >>> store = Store("memory://doc-example")
    >>> writer = store.create("demo", {"note": "example"})
    >>> writer.add_step("cell", {"source": "1 + 1"})
    1
    >>> store.open("demo").steps[0].data
    {'source': '1 + 1'}
    >>> store.delete("demo")
    """

    def __init__(self, url=None, **storage_options):
        url = os.fspath(url) if url is not None else os.environ.get(STORE_ENV) or DEFAULT_STORE
        if "://" not in url and "::" not in url:
            url = os.path.abspath(os.path.expanduser(url))
        self.url = url
        self.storage_options = storage_options
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.files = _Files(fs, root)
        self._key = None

    def __repr__(self):
        return f"Store({self.url!r})"

    @property
    def key(self):
        """The user's signing key (read, or created, on first use)."""
        if self._key is None:
            self._key = integrity.load_key()
        return self._key

    # --- writing ---------------------------------------------------------------
    def create(self, name, meta=None):
        """Start a new recording and return its writer.

        Parameters
        ----------
        name : str
            See :func:`validate_name`.
        meta : dict, optional
            JSON fields kept in the manifest: ``note``, ``data_mode``
            (``"embed"`` or ``"hash"``), ``cluster``, ``workers``, ...

        Raises
        ------
        ValueError
            Invalid name, or ``meta`` is not plain JSON.
        RecordingExistsError
            The store already holds a recording of that name.
        """
        validate_name(name)
        meta = dict(meta or {})
        canonical(meta)  # refuse non-JSON meta now, not at close
        body = {
            "format": FORMAT,
            "name": name,
            "created": _now(),
            "closed": None,
            "status": "incomplete",
            "meta": meta,
            "key_id": integrity.key_id(self.key),
            "steps": 0,
            "journal": [],
            "chain_head": None,
            "parts": {},
            "blobs": {},
            "size": 0,
        }
        self._claim(name, integrity.seal(body, self.key))
        return RecordingWriter(self, body)

    def _claim(self, name, manifest_bytes):
        """Write a new manifest exclusively: of two writers of one name, exactly one gets it."""
        try:
            self.files.write(self.files.path(name, MANIFEST), manifest_bytes, exclusive=True)
        except FileExistsError:
            raise RecordingExistsError(f"Recording '{name}' already exists in {self.url}.") from None
        # leftovers of a delete that crashed half-way would mix into this recording
        for leftover in ("journal", "parts", VERIFIED):
            self.files.rm(self.files.path(name, leftover))

    def _put_blob(self, data):
        """Store ``data`` (bytes or a file path) once per store; return its SHA-256 and size.

        Files are streamed, never read whole into memory.
        """
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
            sha, size = sha256_hex(data), len(data)
            target = self.files.path(BLOBS, sha)
            if self.files.size(target) != size:
                self.files.write(target, data)
            return sha, size
        path = os.fspath(data)
        with open(path, "rb") as f:
            sha, size = integrity.hash_stream(integrity.read_chunks(f))
        target = self.files.path(BLOBS, sha)
        if self.files.size(target) != size:
            with open(path, "rb") as f:
                self.files.write_chunks(target, _checked(integrity.read_chunks(f), sha, f"file {path}"))
        return sha, size

    # --- reading ---------------------------------------------------------------
    def list(self):
        """Return the :class:`RecordingInfo` of every recording, sorted by creation time.

        Reads only manifests (and, for an incomplete recording, a listing of its folder).
        """
        self.files.refresh()
        names = sorted(n for n in self.files.names(self.files.root) if NAME_PATTERN.match(n))
        if not names:
            return []
        manifests = self.files.fs.cat([self.files.path(n, MANIFEST) for n in names], on_error="omit")
        verified = self.files.fs.cat([self.files.path(n, VERIFIED) for n in names], on_error="omit")
        infos = []
        for name in names:
            raw = manifests.get(self.files.fs._strip_protocol(self.files.path(name, MANIFEST)))
            if raw is None:
                continue  # a folder without manifest: a delete in progress, or not a recording
            has_verified = self.files.fs._strip_protocol(self.files.path(name, VERIFIED)) in verified
            infos.append(self._info_from_manifest(name, raw, has_verified))
        return sorted(infos, key=lambda info: (info.created, info.name))

    def info(self, name):
        """Return the :class:`RecordingInfo` of one recording (raises ``RecordingNotFoundError``)."""
        validate_name(name)
        self.files.refresh()
        try:
            raw = self.files.read(self.files.path(name, MANIFEST))
        except FileNotFoundError:
            raise RecordingNotFoundError(f"No recording '{name}' in {self.url}.") from None
        return self._info_from_manifest(name, raw, self.files.exists(self.files.path(name, VERIFIED)))

    def _info_from_manifest(self, name, raw, has_verified):
        try:
            body, mine = integrity.unseal(raw, f"Recording '{name}': manifest.json", self.key, trust=True)
            if body["name"] != name:
                raise IntegrityError(f"Recording '{name}': its manifest belongs to {body['name']!r}.")
            meta = body["meta"]
            status = body["status"]
            steps, size = body["steps"], body["size"]
            if status == "incomplete":
                tree = self.files.tree(self.files.path(name))
                steps = sum(1 for rel in tree if ENTRY_PATTERN.match(rel))
                size = sum(size for rel, size in tree.items() if rel not in (MANIFEST, VERIFIED))
            elif has_verified:
                status = "verified"
            return RecordingInfo(
                name=name,
                created=body["created"],
                steps=steps,
                size=size,
                workers=meta.get("workers"),
                status=status,
                note=meta.get("note", ""),
                data_mode=meta.get("data_mode", "embed"),
                key_id=body["key_id"],
                signed_by_me=mine,
            )
        except (JuliusError, KeyError, TypeError, AttributeError):
            return RecordingInfo(name, "", 0, 0, None, "damaged", "", "", "", False)

    def open(self, name, trust=False):
        """Verify every byte of a recording, then return it as a :class:`Recording`.

        Parameters
        ----------
        name : str
            The recording.
        trust : bool
            Accept a recording signed with another key. Content hashes are
            still checked.

        Raises
        ------
        RecordingNotFoundError
            No recording of that name.
        IntegrityError
            A byte is changed, missing, added or out of order.
        UntrustedRecordingError
            Signed with another key and ``trust`` is false.
        """
        validate_name(name)
        self.files.refresh()
        source = _StoreSource(self, name)
        verified = _verify(source, name, self.key, trust)
        return Recording(self, source, verified)

    # --- managing --------------------------------------------------------------
    def delete(self, name):
        """Delete a recording (its blobs stay: other recordings may share them)."""
        validate_name(name)
        manifest = self.files.path(name, MANIFEST)
        if not self.files.exists(manifest):
            raise RecordingNotFoundError(f"No recording '{name}' in {self.url}.")
        self.files.rm(manifest)  # first, so the recording disappears from listings at once
        self.files.rm(self.files.path(name))

    def mark_verified(self, name, summary):
        """Record that a replay of ``name`` matched it; ``summary`` is JSON (e.g. the report)."""
        validate_name(name)
        try:
            manifest = self.files.read(self.files.path(name, MANIFEST))
        except FileNotFoundError:
            raise RecordingNotFoundError(f"No recording '{name}' in {self.url}.") from None
        body = {
            "format": FORMAT,
            "name": name,
            "verified_at": _now(),
            "manifest_sha256": sha256_hex(manifest),
            "summary": summary,
            "key_id": integrity.key_id(self.key),
        }
        self.files.write(self.files.path(name, VERIFIED), integrity.seal(body, self.key))

    def export(self, name, path):
        """Write recording ``name`` and its blobs to the single-file archive ``path`` (``.jrec``, a zip).

        The recording is verified first (with ``trust=True``: importing checks trust).
        """
        recording = self.open(name, trust=True)
        path = os.fspath(path)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                archive.writestr("julius-export.json", canonical({"format": EXPORT_FORMAT, "name": name}))
                for rel in sorted(recording._files):
                    if rel != VERIFIED:  # verification is a local fact, not part of the recording
                        archive.writestr(f"recording/{rel}", self.files.read(self.files.path(name, rel)))
                for sha in sorted(recording._blobs):
                    with self.files.open_read(self.files.path(BLOBS, sha)) as src, archive.open(
                        f"blobs/{sha}", "w", force_zip64=True
                    ) as dst:
                        for chunk in integrity.read_chunks(src):
                            dst.write(chunk)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def import_(self, path, trust=False):
        """Import an archive written by :meth:`export`; return the recording's name.

        Everything in the archive is verified, as :meth:`open` does, before
        anything is written to the store.

        Raises
        ------
        IntegrityError
            The archive is corrupt or not a julius archive.
        UntrustedRecordingError
            Signed with another key and ``trust`` is false.
        RecordingExistsError
            The store already holds a recording of that name.
        """
        path = os.fspath(path)
        where = f"Archive {path}"
        try:
            with zipfile.ZipFile(path) as archive:
                source = _ZipSource(archive, where)
                name = source.name
                verified = _verify(source, name, self.key, trust)
                if self.files.exists(self.files.path(name, MANIFEST)):
                    raise RecordingExistsError(f"Recording '{name}' already exists in {self.url}.")
                for sha, size in verified.blobs.items():
                    target = self.files.path(BLOBS, sha)
                    if self.files.size(target) != size:
                        with archive.open(f"blobs/{sha}") as src:
                            self.files.write_chunks(target, _checked(integrity.read_chunks(src), sha, where))
                self._claim(name, source.read(MANIFEST))
                for rel in verified.files:
                    if rel != MANIFEST:
                        self.files.write(self.files.path(name, rel), source.read(rel))
                return name
        except JuliusError:
            raise
        except FileNotFoundError:
            raise RecordingNotFoundError(f"{where} does not exist.") from None
        except _ARCHIVE_ERRORS as error:
            raise IntegrityError(f"{where} is not a readable julius archive: {error}") from None


# what reading a damaged zip can raise, besides our own errors
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    OSError,
    EOFError,
    ValueError,
    KeyError,
    NotImplementedError,
    OverflowError,
    UnicodeDecodeError,
)


def _checked(chunks, sha, where):
    """Pass ``chunks`` through, raising ``IntegrityError`` at the end if their SHA-256 is not ``sha``."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
        yield chunk
    if h.hexdigest() != sha:
        raise IntegrityError(f"{where} changed while it was being copied (SHA-256 {h.hexdigest()[:12]}…, expected {sha[:12]}…).")


class RecordingWriter:
    """Appends steps and blobs to a new recording; :meth:`close` seals it.

    Every step is on storage, atomically and chained, before :meth:`add_step`
    returns, so a writer killed at any moment leaves an ``incomplete``
    recording that opens with all the steps added before. Thread-safe.
    """

    def __init__(self, store, manifest):
        self.store = store
        self.name = manifest["name"]
        self._manifest = manifest
        self._prev = integrity.chain_start(self.name, manifest["created"])
        self._pending_blobs = {}  # blobs added since the last step, listed in the next entry
        self._lock = threading.Lock()
        self.closed = False

    def __repr__(self):
        return f"<RecordingWriter {self.name!r} steps={self._manifest['steps']}>"

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None and not self.closed:
            self.close()

    def _check_open(self):
        if self.closed:
            raise RecordingError(f"Recording '{self.name}' is closed; no more steps can be added.")

    def add_step(self, kind, data, parts=None):
        """Append a step; return its sequence number (1, 2, ...).

        Parameters
        ----------
        kind : str
            What the step is (``"cell"``, ``"remote_eval"``, ...).
        data : dict
            Plain JSON (no NaN, string keys).
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
            seq = self._manifest["steps"] + 1
            part_shas = {}
            for part_name, value in parts.items():
                value = bytes(value)
                sha = part_shas[part_name] = sha256_hex(value)
                if sha not in self._manifest["parts"]:
                    files.write(files.path(self.name, "parts", sha), value)
                    self._manifest["parts"][sha] = len(value)
                    self._manifest["size"] += len(value)
            body = {
                "format": FORMAT,
                "seq": seq,
                "kind": kind,
                "time": _now(),
                "data": data,
                "parts": part_shas,
                "blobs": self._pending_blobs,
                "prev": self._prev,
                "key_id": self._manifest["key_id"],
            }
            try:
                raw = integrity.seal(body, self.store.key)
            except ValueError as error:
                raise ValueError(f"Recording '{self.name}', step {seq} ({kind}): {error}") from None
            files.write(files.path(self.name, _entry_file(seq)), raw)
            self._prev = json.loads(raw)["digest"]
            self._pending_blobs = {}
            self._manifest["steps"] = seq
            self._manifest["journal"].append(sha256_hex(raw))
            self._manifest["size"] += len(raw)
            return seq

    def add_blob(self, data):
        """Store data (bytes or a file path, streamed) once per store; return its SHA-256 hex.

        The blob belongs to this recording from the next step on (or from :meth:`close`).
        """
        with self._lock:
            self._check_open()
        sha, size = self.store._put_blob(data)
        with self._lock:
            if sha not in self._manifest["blobs"]:
                self._manifest["blobs"][sha] = size
                self._pending_blobs[sha] = size
                self._manifest["size"] += size
        return sha

    def update_meta(self, **fields):
        """Merge ``fields`` into the manifest's meta (e.g. ``workers=4``), and rewrite the manifest."""
        with self._lock:
            self._check_open()
            meta = {**self._manifest["meta"], **fields}
            try:
                canonical(meta)
            except ValueError as error:
                raise ValueError(f"Recording '{self.name}': meta {sorted(fields)}: {error}") from None
            self._manifest["meta"] = meta
            self._write_manifest()

    def _write_manifest(self):
        files = self.store.files
        files.write(files.path(self.name, MANIFEST), integrity.seal(self._manifest, self.store.key))

    def close(self, status="complete"):
        """Seal the manifest (hashes of every entry, part and blob) and return the :class:`RecordingInfo`."""
        if status not in STATUSES:
            raise ValueError(f"Recording '{self.name}': status must be one of {STATUSES}, not {status!r}.")
        with self._lock:
            self._check_open()
            self._manifest.update(status=status, closed=_now(), chain_head=self._prev)
            self._write_manifest()
            self.closed = True
        return self.store.info(self.name)


class _Verified:
    """What verification established: manifest, steps, files and blobs of a recording."""

    def __init__(self, manifest, signed_by_me, steps, files, blobs, verified):
        self.manifest = manifest
        self.signed_by_me = signed_by_me
        self.steps = steps
        self.files = files  # relative path -> sha256 for parts and entries, or None for JSON docs
        self.blobs = blobs  # sha -> size
        self.verified = verified


def _verify(source, name, key, trust):
    """Check every byte of a recording read through ``source``; return a :class:`_Verified`.

    ``source`` provides ``tree()`` (relative path -> size), ``read(rel)`` and
    ``blob_sha(sha)`` (SHA-256 and size of the stored blob, or ``None``).
    """
    where = f"Recording '{name}'"
    tree = source.tree()
    if MANIFEST not in tree:
        if not tree:
            raise RecordingNotFoundError(f"No recording '{name}' in {source.location}.")
        raise IntegrityError(f"{where}: manifest.json is missing.")
    manifest_raw = source.read(MANIFEST)
    manifest, mine = integrity.unseal(manifest_raw, f"{where}: manifest.json", key, trust)
    try:
        if manifest.get("format") != FORMAT:
            raise RecordingError(
                f"{where} has format {manifest.get('format')!r}; this julius_magics reads {FORMAT!r}."
            )
        if manifest["name"] != name:
            raise IntegrityError(f"{where}: its manifest belongs to recording {manifest['name']!r}.")
        complete = manifest["status"] != "incomplete"

        others = sorted(rel for rel in tree if not KNOWN_FILE.match(rel))
        if others:
            raise IntegrityError(f"{where}: unexpected file {others[0]}.")
        stored_entries = {rel for rel in tree if ENTRY_PATTERN.match(rel)}
        count = manifest["steps"] if complete else len(stored_entries)
        for seq in range(1, count + 1):
            if _entry_file(seq) not in stored_entries:
                raise IntegrityError(f"{where}: journal entry {seq} is missing.")
        extra = sorted(stored_entries - {_entry_file(seq) for seq in range(1, count + 1)})
        if extra:
            raise IntegrityError(f"{where}: unexpected {extra[0]} (the journal has {count} entries).")
        if complete and len(manifest["journal"]) != count:
            raise IntegrityError(f"{where}: manifest lists {len(manifest['journal'])} entries for {count} steps.")

        steps, files, blobs = [], {MANIFEST: None}, {}
        prev = integrity.chain_start(name, manifest["created"])
        for seq in range(1, count + 1):
            rel = _entry_file(seq)
            raw = source.read(rel)
            if complete and sha256_hex(raw) != manifest["journal"][seq - 1]:
                raise IntegrityError(f"{where}: journal entry {seq} was changed (SHA-256 differs from the manifest).")
            body, _ = integrity.unseal(raw, f"{where}: journal entry {seq}", key, trust=True)
            if body["key_id"] != manifest["key_id"]:
                raise IntegrityError(f"{where}: journal entry {seq} is signed with another key than the manifest.")
            if body["seq"] != seq or body["prev"] != prev:
                raise IntegrityError(f"{where}: journal entry {seq} is out of order (the chain is broken).")
            prev = json.loads(raw)["digest"]
            for part_name, sha in body["parts"].items():
                if not SHA_PATTERN.match(sha):
                    raise IntegrityError(f"{where}: journal entry {seq} names part {part_name!r} by a bad hash.")
                files[f"parts/{sha}"] = sha
            blobs.update(body["blobs"])
            files[rel] = sha256_hex(raw)
            steps.append(Step(seq, body["kind"], body["data"], tuple(body["parts"])))
        if complete:
            if manifest["chain_head"] != prev:
                raise IntegrityError(f"{where}: the journal does not end where the manifest says.")
            if not set(blobs) <= set(manifest["blobs"]):
                raise IntegrityError(f"{where}: journal lists blobs the manifest does not.")
            blobs = dict(manifest["blobs"])
            stored = {rel for rel in tree if PART_PATTERN.match(rel)}
            listed = {f"parts/{sha}" for sha in manifest["parts"]}
            referenced = {rel for rel in files if rel.startswith("parts/")}
            if not stored == listed == referenced:
                odd = sorted((stored ^ listed) | (listed ^ referenced))
                raise IntegrityError(f"{where}: parts do not match the manifest ({odd[0]}).")

        for rel, sha in files.items():
            if rel.startswith("parts/"):
                if rel not in tree:
                    raise IntegrityError(f"{where}: {rel} is missing.")
                if source.part_sha(rel) != sha:
                    raise IntegrityError(f"{where}: {rel} was changed (SHA-256 differs).")
        for sha, size in blobs.items():
            if not SHA_PATTERN.match(sha):
                raise IntegrityError(f"{where}: blob name {sha!r} is not a SHA-256.")
            found = source.blob_sha(sha)
            if found is None:
                raise IntegrityError(f"{where}: blob {sha[:12]}… is missing.")
            if found != (sha, size):
                raise IntegrityError(f"{where}: blob {sha[:12]}… was changed (SHA-256 or size differs).")

        verified = None
        if VERIFIED in tree:
            # A verification is a claim by whoever replayed, not part of the recording: one
            # signed by another key (a colleague who replayed it) is ignored, not refused.
            try:
                verified, _ = integrity.unseal(source.read(VERIFIED), f"{where}: verified.json", key, False)
            except UntrustedRecordingError:
                verified = None
            if verified is not None and (verified["name"] != name
                                         or verified["manifest_sha256"] != sha256_hex(manifest_raw)):
                raise IntegrityError(f"{where}: verified.json belongs to another recording.")
            files[VERIFIED] = None
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        # a sealed document with the wrong shape: only a forger with the key can make one
        raise IntegrityError(f"{where} is malformed ({type(error).__name__}: {error}).") from None
    return _Verified(manifest, mine, steps, files, blobs, verified)


class _StoreSource:
    """Reads one recording's files from a store, for :func:`_verify`."""

    def __init__(self, store, name):
        self.files = store.files
        self.name = name
        self.location = store.url

    def tree(self):
        return self.files.tree(self.files.path(self.name))

    def read(self, rel):
        try:
            return self.files.read(self.files.path(self.name, rel))
        except FileNotFoundError:
            raise IntegrityError(f"Recording '{self.name}': {rel} disappeared while being read.") from None

    def part_sha(self, rel):
        return sha256_hex(self.read(rel))

    def blob_sha(self, sha):
        try:
            with self.files.open_read(self.files.path(BLOBS, sha)) as f:
                return integrity.hash_stream(integrity.read_chunks(f))
        except FileNotFoundError:
            return None


class _ZipSource:
    """Reads one recording from an export archive, for :func:`_verify`."""

    def __init__(self, archive, where):
        self.archive = archive
        self.location = where
        names = archive.namelist()
        if len(names) != len(set(names)):
            raise IntegrityError(f"{where} holds the same file twice.")
        try:
            header = json.loads(archive.read("julius-export.json"))
            if header["format"] != EXPORT_FORMAT:
                raise ValueError(header["format"])
            self.name = validate_name(header["name"])
        except (KeyError, ValueError, TypeError):
            raise IntegrityError(f"{where} is not a julius archive (bad julius-export.json).") from None
        self.rels = {n[len("recording/"):]: n for n in names if n.startswith("recording/")}
        self.blob_names = {n[len("blobs/"):] for n in names if n.startswith("blobs/")}
        unexpected = set(names) - {"julius-export.json"} - set(self.rels.values()) - {f"blobs/{s}" for s in self.blob_names}
        if unexpected:
            raise IntegrityError(f"{where}: unexpected file {sorted(unexpected)[0]}.")

    def tree(self):
        return {rel: self.archive.getinfo(name).file_size for rel, name in self.rels.items()}

    def read(self, rel):
        return self.archive.read(self.rels[rel])

    def part_sha(self, rel):
        return sha256_hex(self.read(rel))

    def blob_sha(self, sha):
        if sha not in self.blob_names:
            return None
        with self.archive.open(f"blobs/{sha}") as f:
            return integrity.hash_stream(integrity.read_chunks(f))


class Recording:
    """A verified recording: its info, steps, parts and blobs.

    Parts and blobs are hashed again when read, so bytes changed after
    :meth:`Store.open` are refused too.
    """

    def __init__(self, store, source, verified):
        self.store = store
        self.name = source.name
        self._source = source
        self._files = verified.files
        self._blobs = verified.blobs
        self.manifest = verified.manifest
        self.steps = verified.steps
        self.verification = verified.verified  # the summary written by mark_verified, or None
        self.info = store._info_from_manifest(self.name, source.read(MANIFEST), verified.verified is not None)

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

    def part(self, step, name):
        """Return the bytes of part ``name`` of ``step`` (a :class:`Step` or its seq), re-verified."""
        seq = step.seq if isinstance(step, Step) else step
        if not isinstance(seq, int) or not 1 <= seq <= len(self.steps):
            raise RecordingError(f"Recording '{self.name}' has no step {seq!r}.")
        if name not in self.steps[seq - 1].part_names:
            raise RecordingError(
                f"Recording '{self.name}', step {seq}: no part {name!r} (has {list(self.steps[seq - 1].part_names)})."
            )
        where = f"Recording '{self.name}'"
        raw = self._source.read(_entry_file(seq))
        if sha256_hex(raw) != self._files[_entry_file(seq)]:
            raise IntegrityError(f"{where}: journal entry {seq} was changed after it was opened.")
        sha = json.loads(raw)["parts"][name]
        data = self._source.read(f"parts/{sha}")
        if sha256_hex(data) != sha:
            raise IntegrityError(f"{where}: parts/{sha} was changed after it was opened.")
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

    def blob_to_file(self, sha, path):
        """Copy blob ``sha`` to the local file ``path`` (streamed; verified before ``path`` appears)."""
        path = os.fspath(path)
        tmp = f"{path}.{os.getpid()}.tmp"
        where = f"Recording '{self.name}': blob {sha[:12]}…"
        try:
            with self.store.files.open_read(self._blob_path(sha)) as src, open(tmp, "wb") as dst:
                for chunk in _checked(integrity.read_chunks(src), sha, where):
                    dst.write(chunk)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
