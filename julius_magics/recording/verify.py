"""Verification of a recording's bytes and signatures, before anything in it is used.

:func:`verify` reads a recording through a :class:`Source` (the store, or an
export archive), checks every file of it against the manifest, the chain of
journal entries and the signatures, and returns what it established as a
:class:`Verified`. The signing primitives are :mod:`.integrity`'s
(``unseal``, ``chain_start``); hashing is SHA-256 throughout.
"""

from __future__ import annotations

import json
import os
import warnings

from ..errors import IntegrityError, JuliusError, RecordingNotFoundError
from . import integrity, schema
from .files import LocalFiles
from .integrity import sha256_hex
from .journal import (BLOBS, CLOSED, ENTRY_PATTERN, KNOWN_FILE, MANIFEST, PART_PATTERN, SHA_PATTERN, VERIFIED, Step,
                      entry_file)
from .keys import trusted_fingerprints

__all__ = ["verify", "read_manifest", "check_sidecar", "Verified", "Source", "StoreSource"]


class Verified:
    """What verification established: manifest, steps, files and blobs of a recording.

    Attributes
    ----------
    manifest : dict
        The manifest's body.
    signed_by_me : bool
    steps : list of Step
    files : dict
        Relative path -> SHA-256 for parts and entries, ``None`` for the manifest and verified.json.
    blobs : dict
        SHA-256 -> size.
    verified : dict or None
        The body of verified.json when it is signed by this user's key or a trusted key.
    trusted : bool
        Signed by this user's key, a trusted key or the ``--trust-key`` given.
    """

    def __init__(self, manifest, signed_by_me, steps, files, blobs, verified, trusted=None):
        self.manifest = manifest
        self.signed_by_me = signed_by_me
        self.trusted = signed_by_me if trusted is None else trusted
        self.steps = steps
        self.files = files
        self.blobs = blobs
        self.verified = verified


class Source:
    """Where one recording's files are read from, for :func:`verify`.

    Subclasses set ``name`` and ``location`` and implement ``tree()``
    (relative path -> size), ``read(rel)`` and ``blob_sha(sha)`` (the
    SHA-256 and size of the stored blob, or ``None`` when missing).
    """

    name = location = None

    def tree(self):
        raise NotImplementedError

    def read(self, rel):
        raise NotImplementedError

    def blob_sha(self, sha, size=None):
        """``(sha256, size)`` of the stored blob, or None when missing; with ``size``, a blob of another size
        may be returned as ``(None, its size)`` unread."""
        raise NotImplementedError

    def part_sha(self, rel):
        """SHA-256 of the part at ``rel``."""
        return sha256_hex(self.read(rel))


class StoreSource(Source):
    """Reads recording ``name`` from the files of a store (in a local folder, links and special files are
    refused and JSON documents capped: :class:`.files.LocalFiles`)."""

    def __init__(self, files, name, location):
        self.files = files
        self.name = name
        self.location = location
        self._local = isinstance(files, LocalFiles)

    def tree(self):
        return self.files.tree(self.files.path(self.name))

    def read(self, rel):
        try:
            return self.files.read(self.files.path(self.name, rel))
        except FileNotFoundError:
            raise IntegrityError(f"Recording '{self.name}': {rel} disappeared while being read.") from None

    def part_sha(self, rel):
        if not self._local:   # one request (a stream costs an object store two)
            return super().part_sha(rel)
        try:
            with self.files.open_read(self.files.path(self.name, rel)) as f:
                return integrity.hash_stream(integrity.read_chunks(f))[0]
        except FileNotFoundError:
            raise IntegrityError(f"Recording '{self.name}': {rel} disappeared while being read.") from None

    def blob_sha(self, sha, size=None):
        try:
            f = self.files.open_read(self.files.path(BLOBS, sha))   # a link or a FIFO is refused here
        except FileNotFoundError:
            return None
        with f:
            stored = f.size if hasattr(f, "size") else os.fstat(f.fileno()).st_size
            if size is not None and stored != size:   # not hashed: a huge (sparse) file would take hours
                return None, stored
            return integrity.hash_stream(integrity.read_chunks(f))


def verify(source, name, key, trust, legacy_hmac=False, trusted=None):
    """Check every byte of recording ``name`` read through ``source``; return a :class:`Verified`.

    Parameters
    ----------
    source : Source
    name : str
    key : integrity.SigningKey
        The reader's key.
    trust : collection of str, or True
        Fingerprints of the other keys whose recordings are accepted (trusted
        keys, ``--trust-key``); ``True`` accepts any key whose signature
        verifies, for pickle-free readers that show who signed.
    legacy_hmac : bool
        Read a julius-recording/1 recording sealed with the secret of ``key``'s file.
    trusted : collection of str, optional
        The keys whose verification sidecars count (default: the trusted keys).

    Raises
    ------
    RecordingNotFoundError
        ``source`` holds no file of the recording.
    IntegrityError
        A byte is changed, missing, added or out of order, a document has the
        wrong shape, or a closed recording was rolled back (one line naming the file).
    UntrustedRecordingError
        Signed with a key that ``trust`` does not accept.
    """
    where = f"Recording '{name}'"
    tree = source.tree()
    if MANIFEST not in tree:
        if not tree:
            raise RecordingNotFoundError(f"No recording '{name}' in {source.location}.")
        raise IntegrityError(f"{where}: manifest.json is missing.")
    manifest_raw = source.read(MANIFEST)
    manifest, mine = read_manifest(manifest_raw, name, key, trust, legacy_hmac)
    if trusted is None:
        trusted = trusted_fingerprints()
    try:
        complete = manifest["status"] != "incomplete"
        _check_closed(source, tree, manifest, key, legacy_hmac, where)
        count = _check_listing(tree, manifest, complete, where)
        steps, files, blobs, hashed = _check_journal(source, tree, name, manifest, count, complete, key,
                                                     legacy_hmac, where)
        if complete:
            blobs = _check_manifest_lists(tree, manifest, files, blobs, where)
        _check_contents(source, tree, files, blobs, where, hashed)
        verified = check_sidecar(source.read(VERIFIED) if VERIFIED in tree else None, name, manifest_raw, key,
                                 trusted)
        for rel in (VERIFIED, CLOSED):
            if rel in tree:
                files[rel] = None
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        # every document was validated against its schema: this is a bug, still said in one line
        raise IntegrityError(f"{where} is malformed ({type(error).__name__}: {error}).") from None
    accepted = mine or manifest["key_id"] in trusted or (trust is not True and manifest["key_id"] in trust)
    return Verified(manifest, mine, steps, files, blobs, verified, trusted=accepted)


def read_manifest(raw, name, key, trust, legacy_hmac=False):
    """Unseal and validate the manifest bytes of recording ``name``: ``(body, signed_by_me)``.

    Raises ``IntegrityError``, ``UntrustedRecordingError`` or ``RecordingError``
    (a format this version does not read), each one line.
    """
    where = f"Recording '{name}': manifest.json"
    manifest, mine = integrity.unseal(raw, where, key, trust, legacy_hmac)
    schema.check(manifest, "manifest", where)
    if manifest["name"] != name:
        raise IntegrityError(f"Recording '{name}': its manifest belongs to recording {manifest['name']!r}.")
    return manifest, mine


def check_sidecar(raw, name, manifest_raw, key, trusted):
    """The body of a verification sidecar when it is good and signed by you or a trusted key, else ``None``.

    A bad sidecar (garbage, forged, another recording's, an untrusted
    verifier's) never blocks anything: it is ignored with a warning.
    """
    if raw is None:
        return None
    where = f"Recording '{name}': verified.json"
    try:
        body, _ = integrity.unseal(raw, where, key, trusted)
        schema.check(body, "verified", where)
        if body["name"] != name or body["manifest_sha256"] != sha256_hex(manifest_raw):
            raise IntegrityError(f"{where} is about another recording or an earlier manifest.")
    except JuliusError as error:
        warnings.warn(f"{error} The verification is ignored.", UserWarning, stacklevel=2)
        return None
    return body


def _check_listing(tree, manifest, complete, where):
    """Only known files, and journal entries exactly 1..n; returns n."""
    others = sorted(rel for rel in tree if not KNOWN_FILE.match(rel))
    if others:
        raise IntegrityError(f"{where}: unexpected file {others[0]}.")
    stored_entries = {rel for rel in tree if ENTRY_PATTERN.match(rel)}
    if complete:
        count = manifest["steps"]
    else:   # up to the first gap: what a writer left when it died (a crash can lose the last entries only)
        count = next(seq for seq in range(1, len(stored_entries) + 2) if entry_file(seq) not in stored_entries) - 1
    for seq in range(1, count + 1):
        if entry_file(seq) not in stored_entries:
            raise IntegrityError(f"{where}: journal entry {seq} is missing.")
    if len(manifest["journal"]) != manifest["steps"]:
        raise IntegrityError(f"{where}: manifest lists {len(manifest['journal'])} entries for {manifest['steps']} steps.")
    if count < manifest["steps"]:   # an incomplete manifest signs the steps it had: none can be dropped
        raise IntegrityError(f"{where}: journal entry {count + 1} is missing (the manifest has {manifest['steps']}).")
    extra = sorted(stored_entries - {entry_file(seq) for seq in range(1, count + 1)})
    if extra and complete:
        raise IntegrityError(f"{where}: unexpected {extra[0]} (the journal has {count} entries).")
    if extra:
        _stop_warning(where, count + 1, "is missing", count)
    return count


def _stop_warning(where, seq, what, count):
    """One line: the journal of an incomplete recording is read up to entry ``seq``, not including it."""
    warnings.warn(f"{where}: journal entry {seq} {what} (as a writer stopped while writing it leaves it): "
                  f"read as incomplete with {count} steps, without it and any after it.", UserWarning, stacklevel=4)


def _check_closed(source, tree, manifest, key, legacy_hmac, where):
    """The signed closed marker: a closed recording can never be replaced by an earlier state of itself."""
    if CLOSED not in tree:
        return
    marker, _ = integrity.unseal(source.read(CLOSED), f"{where}: closed.json", key, True, legacy_hmac)
    schema.check(marker, "closed", f"{where}: closed.json")
    if marker["key_id"] != manifest["key_id"]:
        raise IntegrityError(f"{where}: closed.json is signed with another key than the manifest.")
    if (marker["name"], marker["created"]) != (manifest["name"], manifest["created"]):
        raise IntegrityError(f"{where}: closed.json belongs to another recording.")
    if manifest["status"] == "incomplete" and manifest["closed"] is None:
        raise IntegrityError(
            f"{where} was closed with {marker['steps']} steps, but its manifest is an earlier, incomplete one "
            "(rolled back).")
    if (marker["steps"], marker["chain_head"], marker["closed"]) != (manifest["steps"], manifest["chain_head"],
                                                                     manifest["closed"]):
        raise IntegrityError(f"{where}: closed.json says {marker['steps']} steps closed at {marker['closed']}, "
                             f"the manifest {manifest['steps']} at {manifest['closed']}.")


def _check_journal(source, tree, name, manifest, count, complete, key, legacy_hmac, where):
    """Each entry: hashed as the manifest says, sealed with its key, chained; returns steps, files, blobs, hashed.

    In an incomplete recording, the journal ends before an entry after those the manifest
    signs that is torn (not JSON: cut short by a power loss inside a batch) or names a part
    that is missing or torn, with a warning: a crash leaves nothing worse, and whoever could
    change such an entry could as well have deleted it. ``hashed`` are the parts hashed here.
    """
    steps, files, blobs, hashed = [], {MANIFEST: None}, {}, set()
    prev = integrity.chain_start(name, manifest["created"], format=manifest["format"])
    for seq in range(1, count + 1):
        rel = entry_file(seq)
        raw = source.read(rel)
        signed = seq <= manifest["steps"]
        if signed and sha256_hex(raw) != manifest["journal"][seq - 1]:
            raise IntegrityError(f"{where}: journal entry {seq} was changed (SHA-256 differs from the manifest).")
        try:
            body, _, digest = integrity.unseal_with_digest(raw, f"{where}: journal entry {seq}", key, True,
                                                           legacy_hmac)
        except IntegrityError:
            if signed or complete or not _torn(raw):
                raise
            _stop_warning(where, seq, "is torn", seq - 1)
            break
        if body["key_id"] != manifest["key_id"]:
            raise IntegrityError(f"{where}: journal entry {seq} is signed with another key than the manifest.")
        schema.check(body, "entry", f"{where}: journal entry {seq}")
        if body["format"] != manifest["format"]:
            raise IntegrityError(f"{where}: journal entry {seq} has format {body['format']!r}, "
                                 f"the manifest {manifest['format']!r}.")
        if body["seq"] != seq or body["prev"] != prev:
            raise IntegrityError(f"{where}: journal entry {seq} is out of order (the chain is broken).")
        for part_name, sha in body["parts"].items():
            if not SHA_PATTERN.match(sha):
                raise IntegrityError(f"{where}: journal entry {seq} names part {part_name!r} by a bad hash.")
        if not (signed or complete):
            torn = [sha for sha in body["parts"].values()
                    if f"parts/{sha}" not in tree or source.part_sha(f"parts/{sha}") != sha]
            if torn:
                _stop_warning(where, seq, f"names part {torn[0][:12]}…, which is missing or torn", seq - 1)
                break
            hashed.update(f"parts/{sha}" for sha in body["parts"].values())
        prev = digest
        files.update((f"parts/{sha}", sha) for sha in body["parts"].values())
        blobs.update(body["blobs"])
        files[rel] = sha256_hex(raw)
        steps.append(schema.check_step(Step(seq, body["kind"], body["data"], tuple(body["parts"])), where))
    if complete and manifest["chain_head"] != prev:
        raise IntegrityError(f"{where}: the journal does not end where the manifest says.")
    return steps, files, blobs, hashed


def _torn(raw):
    """Whether the bytes of an entry are cut short or blank (a write torn by a power loss), not a document."""
    try:
        json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return True
    return False


def _check_manifest_lists(tree, manifest, files, blobs, where):
    """A complete recording: the manifest lists exactly the blobs and parts the journal uses."""
    if not set(blobs) <= set(manifest["blobs"]):
        raise IntegrityError(f"{where}: journal lists blobs the manifest does not.")
    stored = {rel for rel in tree if PART_PATTERN.match(rel)}
    listed = {f"parts/{sha}" for sha in manifest["parts"]}
    referenced = {rel for rel in files if rel.startswith("parts/")}
    if not stored == listed == referenced:
        odd = sorted((stored ^ listed) | (listed ^ referenced))
        raise IntegrityError(f"{where}: parts do not match the manifest ({odd[0]}).")
    for sha, size in sorted(manifest["parts"].items()):   # before any is hashed: a huge one would take hours
        if tree[f"parts/{sha}"] != size:
            raise IntegrityError(f"{where}: parts/{sha} was changed (its size differs from the manifest's).")
    return dict(manifest["blobs"])


def _check_contents(source, tree, files, blobs, where, hashed=()):
    """Every part and blob exists and hashes to its name (and size); parts in ``hashed`` were checked already."""
    for rel, sha in files.items():
        if rel.startswith("parts/") and rel not in hashed:
            if rel not in tree:
                raise IntegrityError(f"{where}: {rel} is missing.")
            if source.part_sha(rel) != sha:
                raise IntegrityError(f"{where}: {rel} was changed (SHA-256 differs).")
    for sha, size in blobs.items():
        if not SHA_PATTERN.match(sha):
            raise IntegrityError(f"{where}: blob name {sha!r} is not a SHA-256.")
        found = source.blob_sha(sha, size)
        if found is None:
            raise IntegrityError(f"{where}: blob {sha[:12]}… is missing.")
        if found != (sha, size):
            raise IntegrityError(f"{where}: blob {sha[:12]}… was changed (SHA-256 or size differs).")
