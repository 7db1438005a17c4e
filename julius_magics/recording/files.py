"""Atomic file operations over fsspec: the few a recording store needs.

Two implementations share one small interface, as fsspec's own backends do:
:class:`LocalFiles` (a temporary file, ``fsync``, then a rename; exclusive
writes by hard link) and :class:`ObjectFiles` (object stores and ``memory://``:
a single put publishes a file whole; exclusive writes by a conditional put).
Errors are Python's own: ``FileNotFoundError``, ``FileExistsError``.

A local folder also takes content-addressed files in one pass (:func:`write_hashed`:
read, hash and write together), and hands the processes that read input files a
:class:`BlobSink` to write them so themselves, where they can see the folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import threading
import uuid

__all__ = ["Files", "LocalFiles", "ObjectFiles", "BlobSink", "open_files", "write_hashed", "TMP"]

TMP = "_tmp"
HASHED_CHUNK = 1 << 20   # bytes read, hashed and written at a time by write_hashed (8 MB cost 2-3x the CPU, at times)
PROBE_PREFIX = "probe-"
# exclusive puts on memory:// (and other back-ends without conditional writes) check, then write
_EXCLUSIVE_LOCK = threading.Lock()


def open_files(url, **storage_options):
    """The :class:`Files` of an fsspec URL (a local folder gets :class:`LocalFiles`)."""
    # fsspec imported here, not with the module: each worker of a recorded cluster unpickles a
    # BlobSink, which writes with os alone (importing fsspec took a worker's adoption 8 - 20 ms)
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    return (LocalFiles if isinstance(fs, LocalFileSystem) else ObjectFiles)(fs, root)


class Files:
    """Files under one root folder of an fsspec file system.

    Subclasses implement :meth:`write` and :meth:`write_chunks`; the rest is shared.
    Paths are absolute paths of ``fs`` as :meth:`path` builds them.
    """

    def __init__(self, fs, root):
        self.fs = fs
        self.root = root.rstrip("/") or "/"

    def path(self, *parts):
        """``root/part/part...``"""
        return "/".join([self.root.rstrip("/"), *parts])

    def write(self, path, data, exclusive=False):
        """Write ``data`` to ``path`` atomically; with ``exclusive``, raise ``FileExistsError`` if it exists."""
        raise NotImplementedError

    def write_chunks(self, path, chunks):
        """Write an iterable of byte chunks to ``path`` so that readers see all of it or nothing."""
        raise NotImplementedError

    def read(self, path):
        """The bytes of ``path`` (``FileNotFoundError`` when missing)."""
        return self.fs.cat_file(path)

    def read_many(self, paths):
        """``{path: bytes}`` of those of ``paths`` that exist, in one batch."""
        found = self.fs.cat(list(paths), on_error="omit")
        return {path: found[path] for path in paths if path in found}

    def open_read(self, path):
        """A binary file object to stream ``path`` from."""
        return self.fs.open(path, "rb")

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
        prefix = path.rstrip("/") + "/"
        return {
            full[len(prefix):]: detail.get("size") or 0
            for full, detail in found.items()
            if detail.get("type") != "directory" and full.startswith(prefix)
        }

    def rm(self, path):
        """Remove ``path`` (a file or a folder); nothing if it does not exist."""
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def refresh(self, path=None):
        """Forget cached listings (s3fs caches them; other processes write too)."""
        self.fs.invalidate_cache(path)

    def blob_sink(self, folder):
        """A :class:`BlobSink` writing into ``folder``, or None: only a local folder can take one."""
        return None


class LocalFiles(Files):
    """A local folder: temporary files in ``root/_tmp`` renamed into place."""

    def write(self, path, data, exclusive=False):
        self._write(path, [data], exclusive)

    def write_chunks(self, path, chunks):
        self._write(path, chunks, exclusive=False)

    def _write(self, path, chunks, exclusive):
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


    def write_hashed(self, folder, source, commit=None):
        """Store the binary file ``source`` as ``folder/<its sha256>`` in one pass (:func:`write_hashed`)."""
        return write_hashed(self.root, folder, source, commit)

    def blob_sink(self, folder):
        sink = BlobSink(self.root, folder)
        self.write(sink.probe, sink.token)
        return sink


def write_hashed(root, folder, source, commit=None):
    """Store the binary file ``source`` as ``folder/<its sha256>`` in one pass, in the local store at
    ``root``; return ``(sha256, size)``.

    The bytes are read, hashed and written to a temporary file together; then the
    file is fsynced, dropped from the page cache and renamed into place, unless
    ``folder`` holds that name with that size already (the copy is dropped,
    unsynced).  ``commit``, called before the rename, may raise to drop the copy (a
    source that changed while read).
    """
    tmp_dir = os.path.join(root, TMP)
    os.makedirs(tmp_dir, exist_ok=True)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir)
    h, size = hashlib.sha256(), 0
    buffer = bytearray(HASHED_CHUNK)
    view = memoryview(buffer)
    try:
        with os.fdopen(fd, "wb") as f:
            while n := source.readinto(buffer):
                h.update(view[:n])
                f.write(view[:n])
                size += n
            sha = h.hexdigest()
            if commit is not None:
                commit()
            target = os.path.join(folder, sha)
            if _size(target) == size:
                return sha, size
            f.flush()
            os.fsync(f.fileno())
            if hasattr(os, "posix_fadvise"):   # read again at a replay, if ever: kept in memory, a
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)   # recording's pages made later writes cost 2-3x
        os.replace(tmp, target)
        return sha, size
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


class BlobSink:
    """Where a process that read an input file stores it, straight into a local store (picklable).

    Workers of any deployment get one; each checks that it sees the store before it
    writes there (:meth:`visible`: the probe the kernel wrote reads back identically),
    never assuming so from host names.  :meth:`close` takes the probe away.
    """

    def __init__(self, root, folder):
        self.root, self.folder = root, folder
        self.token = uuid.uuid4().hex.encode()
        self.probe = os.path.join(root, TMP, f"{PROBE_PREFIX}{self.token.decode()}")

    def __repr__(self):
        return f"BlobSink({self.folder!r})"

    def visible(self) -> bool:
        """Whether this process sees the store: the probe reads back as the kernel wrote it."""
        try:
            with open(self.probe, "rb") as f:
                return f.read(len(self.token) + 1) == self.token
        except OSError:
            return False

    def holds(self, sha256, size) -> bool:
        """Whether the store holds the blob ``sha256`` of ``size`` bytes already (an earlier recording's)."""
        return _size(os.path.join(self.folder, sha256)) == size

    def put(self, source, commit=None):
        """Store the binary file ``source`` as a blob in one pass (:func:`write_hashed`)."""
        return write_hashed(self.root, self.folder, source, commit)

    def close(self):
        """Take the probe away (after the last snapshot)."""
        try:
            os.unlink(self.probe)
        except OSError:
            pass


class ObjectFiles(Files):
    """An object store (or ``memory://``): a file appears whole when its put completes."""

    def write(self, path, data, exclusive=False):
        if not exclusive:
            self.fs.pipe_file(path, data)
            return
        with _EXCLUSIVE_LOCK:
            try:
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                raise FileExistsError(path) from None
            except OSError as error:
                # s3fs turns S3's "412 Precondition Failed" (If-None-Match: *) into EINVAL
                if error.errno == errno.EINVAL and (self.refresh(path) or self.exists(path)):
                    raise FileExistsError(path) from None
                raise

    def write_chunks(self, path, chunks):
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
