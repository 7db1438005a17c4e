"""Verification of a recording's bytes and signatures, before anything in it is used.

:func:`verify` reads a recording through a :class:`Source` (the store, or an
export archive), checks every file of it against the manifest, the chain of
journal entries and the signatures, and returns what it established as a
:class:`Verified`. The signing primitives are :mod:`.integrity`'s
(``unseal``, ``chain_start``); hashing is SHA-256 throughout.
"""

from __future__ import annotations

import json

from ..errors import IntegrityError, RecordingError, RecordingNotFoundError, UntrustedRecordingError
from . import integrity
from .integrity import FORMAT, sha256_hex
from .journal import (BLOBS, ENTRY_PATTERN, KNOWN_FILE, MANIFEST, PART_PATTERN, SHA_PATTERN, VERIFIED, Step,
                      entry_file)

__all__ = ["verify", "Verified", "Source", "StoreSource"]


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
        The body of verified.json when it is signed by this user's key.
    """

    def __init__(self, manifest, signed_by_me, steps, files, blobs, verified):
        self.manifest = manifest
        self.signed_by_me = signed_by_me
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

    def blob_sha(self, sha):
        raise NotImplementedError

    def part_sha(self, rel):
        """SHA-256 of the part at ``rel``."""
        return sha256_hex(self.read(rel))


class StoreSource(Source):
    """Reads recording ``name`` from the files of a store."""

    def __init__(self, files, name, location):
        self.files = files
        self.name = name
        self.location = location

    def tree(self):
        return self.files.tree(self.files.path(self.name))

    def read(self, rel):
        try:
            return self.files.read(self.files.path(self.name, rel))
        except FileNotFoundError:
            raise IntegrityError(f"Recording '{self.name}': {rel} disappeared while being read.") from None

    def blob_sha(self, sha):
        try:
            with self.files.open_read(self.files.path(BLOBS, sha)) as f:
                return integrity.hash_stream(integrity.read_chunks(f))
        except FileNotFoundError:
            return None


def verify(source, name, key, trust):
    """Check every byte of recording ``name`` read through ``source``; return a :class:`Verified`.

    Raises
    ------
    RecordingNotFoundError
        ``source`` holds no file of the recording.
    IntegrityError
        A byte is changed, missing, added or out of order (one line naming the file).
    UntrustedRecordingError
        Signed with another key and ``trust`` is false.
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
        count = _check_listing(tree, manifest, complete, where)
        steps, files, blobs = _check_journal(source, name, manifest, count, complete, key, where)
        if complete:
            blobs = _check_manifest_lists(tree, manifest, files, blobs, where)
        _check_contents(source, tree, files, blobs, where)
        verified = _check_verified(source, tree, name, manifest_raw, key, where)
        if VERIFIED in tree:
            files[VERIFIED] = None
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        # a sealed document with the wrong shape: only a forger with the key can make one
        raise IntegrityError(f"{where} is malformed ({type(error).__name__}: {error}).") from None
    return Verified(manifest, mine, steps, files, blobs, verified)


def _check_listing(tree, manifest, complete, where):
    """Only known files, and journal entries exactly 1..n; returns n."""
    others = sorted(rel for rel in tree if not KNOWN_FILE.match(rel))
    if others:
        raise IntegrityError(f"{where}: unexpected file {others[0]}.")
    stored_entries = {rel for rel in tree if ENTRY_PATTERN.match(rel)}
    count = manifest["steps"] if complete else len(stored_entries)
    for seq in range(1, count + 1):
        if entry_file(seq) not in stored_entries:
            raise IntegrityError(f"{where}: journal entry {seq} is missing.")
    extra = sorted(stored_entries - {entry_file(seq) for seq in range(1, count + 1)})
    if extra:
        raise IntegrityError(f"{where}: unexpected {extra[0]} (the journal has {count} entries).")
    if complete and len(manifest["journal"]) != count:
        raise IntegrityError(f"{where}: manifest lists {len(manifest['journal'])} entries for {count} steps.")
    return count


def _check_journal(source, name, manifest, count, complete, key, where):
    """Each entry: hashed as the manifest says, sealed with its key, chained; returns steps, files, blobs."""
    steps, files, blobs = [], {MANIFEST: None}, {}
    prev = integrity.chain_start(name, manifest["created"])
    for seq in range(1, count + 1):
        rel = entry_file(seq)
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
    if complete and manifest["chain_head"] != prev:
        raise IntegrityError(f"{where}: the journal does not end where the manifest says.")
    return steps, files, blobs


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
    return dict(manifest["blobs"])


def _check_contents(source, tree, files, blobs, where):
    """Every part and blob exists and hashes to its name (and size)."""
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


def _check_verified(source, tree, name, manifest_raw, key, where):
    """The body of verified.json, or None when absent or signed by someone else."""
    if VERIFIED not in tree:
        return None
    # A verification is a claim by whoever replayed, not part of the recording: one
    # signed by another key (a colleague who replayed it) is ignored, not refused.
    try:
        verified, _ = integrity.unseal(source.read(VERIFIED), f"{where}: verified.json", key, False)
    except UntrustedRecordingError:
        return None
    if verified["name"] != name or verified["manifest_sha256"] != sha256_hex(manifest_raw):
        raise IntegrityError(f"{where}: verified.json belongs to another recording.")
    return verified
