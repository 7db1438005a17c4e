"""``.jrec`` export archives: one recording and its blobs in a single zip file.

``export`` verifies a recording and writes it with its blobs; ``import_``
verifies the whole archive (as ``Store.open`` verifies a store) before it
writes anything, then copies it in, under its own name or a new one
(``as_name``), refusing or replacing (``force``) a recording of that name.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib

from ..errors import IntegrityError, JuliusError, RecordingError, RecordingExistsError, RecordingNotFoundError
from . import integrity
from .integrity import canonical
from .files import DOC_LIMIT
from .journal import (BLOBS, MANIFEST, SHA_PATTERN, VERIFIED, Recording, RecordingWriter, checked, claim,
                      new_manifest, validate_name)
from .verify import Source, verify

__all__ = ["export", "import_", "EXPORT_FORMAT"]

EXPORT_FORMAT = "julius-export/1"

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


class ZipSource(Source):
    """Reads one recording from an export archive, for :func:`verify.verify`."""

    def __init__(self, archive, where):
        self.archive = archive
        self.location = where
        names = archive.namelist()
        if len(names) != len(set(names)):
            raise IntegrityError(f"{where} holds the same file twice.")
        for info in archive.infolist():   # the sizes it declares bound what reading it inflates
            if info.filename.endswith(".json") and info.file_size > DOC_LIMIT:
                raise IntegrityError(f"{where}: {info.filename} declares {info.file_size} bytes, more than the "
                                     f"{DOC_LIMIT} a document may have.")
        try:
            header = json.loads(archive.read("julius-export.json"))
            if header["format"] != EXPORT_FORMAT:
                raise ValueError(header["format"])
            self.name = validate_name(header["name"])
        except (KeyError, ValueError, TypeError):
            raise IntegrityError(f"{where} is not a julius archive (bad julius-export.json).") from None
        self.rels = {n[len("recording/"):]: n for n in names if n.startswith("recording/")}
        self.blob_names = {n[len("blobs/"):] for n in names
                           if n.startswith("blobs/") and SHA_PATTERN.match(n[len("blobs/"):])}   # blobs/<sha256> only
        unexpected = set(names) - {"julius-export.json", *self.rels.values(), *(f"blobs/{s}" for s in self.blob_names)}
        if unexpected:
            raise IntegrityError(f"{where}: unexpected file {sorted(unexpected)[0]!r}.")

    def tree(self):
        return {rel: self.archive.getinfo(name).file_size for rel, name in self.rels.items()}

    def read(self, rel):
        return self.archive.read(self.rels[rel])

    def part_sha(self, rel):   # streamed: a part can be large
        with self.archive.open(self.rels[rel]) as f:
            return integrity.hash_stream(integrity.read_chunks(f))[0]

    def blob_sha(self, sha, size=None):
        if sha not in self.blob_names:
            return None
        if size is not None and self.archive.getinfo(f"blobs/{sha}").file_size != size:
            return None, self.archive.getinfo(f"blobs/{sha}").file_size
        with self.archive.open(f"blobs/{sha}") as f:
            return integrity.hash_stream(integrity.read_chunks(f))


def export(store, name, path, legacy_hmac=False):
    """Write recording ``name`` of ``store`` and its blobs to the archive ``path`` (``.jrec``, a zip).

    The recording is verified first (whoever signed it: importing checks trust).
    """
    recording = store.open(name, any_signer=True, legacy_hmac=legacy_hmac)
    files = store.files
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        try:
            archive = zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        except OSError as error:   # named by the archive asked for, not by its temporary file
            raise RecordingError(f"Cannot write the archive {path}: {error.strerror or error}.") from None
        with archive:
            archive.writestr("julius-export.json", canonical({"format": EXPORT_FORMAT, "name": name}))
            for rel in recording.file_names:
                if rel != VERIFIED:  # verification is a local fact, not part of the recording
                    archive.writestr(f"recording/{rel}", files.read(files.path(name, rel)))
            for sha in sorted(recording.blobs):
                with files.open_read(files.path(BLOBS, sha)) as src, archive.open(
                    f"blobs/{sha}", "w", force_zip64=True
                ) as dst:
                    for chunk in integrity.read_chunks(src):
                        dst.write(chunk)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def import_(store, path, trust_key=None, as_name=None, force=False, legacy_hmac=False):
    """Import an archive written by :func:`export` into ``store``; return the recording's name.

    Everything in the archive is verified, as ``Store.open`` does, before
    anything is written to the store.

    Parameters
    ----------
    store : Store
    path : str or path-like
    trust_key : str, optional
        The fingerprint of one more key to accept (yours and your trusted keys always are).
    as_name : str, optional
        Import under this name. The recording is then written anew (same
        steps, parts, blobs and meta) and signed with this user's key.
    force : bool
        Replace a recording of the same name already in the store.

    Raises
    ------
    IntegrityError
        The archive is corrupt or not a julius archive.
    UntrustedRecordingError
        Signed with a key you do not trust.
    RecordingExistsError
        The store already holds a recording of that name (and not ``force``).
    """
    path = os.fspath(path)
    where = f"Archive {path}"
    if as_name is not None:
        validate_name(as_name)
    files = store.files
    try:
        with zipfile.ZipFile(path) as archive:
            source = ZipSource(archive, where)
            verified = verify(source, source.name, store.key, store.accepted_keys(trust_key), legacy_hmac)
            stray = sorted(source.blob_names - verified.blobs.keys())
            if stray:   # the recording does not list it: refused, as any file it does not list
                raise IntegrityError(f"{where}: unexpected file 'blobs/{stray[0]}' (the recording lists no such blob).")
            name = as_name or source.name
            if files.exists(files.path(name, MANIFEST)):
                if not force:
                    raise RecordingExistsError(
                        f"Recording '{name}' already exists in {store.url}: "
                        "import it --as another name, or --force to replace it.")
                store.delete(name)
            for sha, size in verified.blobs.items():
                target = files.path(BLOBS, sha)
                if files.size(target) != size:
                    with archive.open(f"blobs/{sha}") as src:
                        files.write_chunks(target, checked(integrity.read_chunks(src), sha, where))
            if name == source.name:
                claim(files, name, source.read(MANIFEST), store.url)
                for rel in verified.files:
                    if rel != MANIFEST:
                        files.write(files.path(name, rel), source.read(rel))
            else:
                _write_renamed(store, Recording(store, source, verified), name)
            return name
    except JuliusError:
        raise
    except FileNotFoundError:
        raise RecordingNotFoundError(f"{where} does not exist.") from None
    except _ARCHIVE_ERRORS as error:
        raise IntegrityError(f"{where} is not a readable julius archive: {error}") from None


def _write_renamed(store, recording, name):
    """Write the verified ``recording`` again as ``name``: the name is sealed into every entry's chain."""
    manifest = recording.manifest
    body = new_manifest(name, manifest["meta"], store.key)
    claim(store.files, name, integrity.seal(body, store.key), store.url)
    writer = RecordingWriter(store, body)
    for step in recording.steps:
        for sha, size in recording.entry(step.seq)["blobs"].items():
            writer.add_stored_blob(sha, size)
        writer.add_step(step.kind, step.data, {part: recording.part(step, part) for part in step.part_names})
    for sha, size in recording.blobs.items():   # blobs added after the last step
        writer.add_stored_blob(sha, size)
    writer.close("incomplete" if manifest["status"] == "incomplete" else "complete")

