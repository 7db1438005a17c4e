"""Atomic file operations over fsspec: the few a recording store needs.

Two implementations share one small interface, as fsspec's own backends do:
:class:`LocalFiles` (a temporary file, ``fsync``, then a rename; exclusive
writes by hard link) and :class:`ObjectFiles` (object stores and ``memory://``:
a single put publishes a file whole; exclusive writes by a conditional put).
Errors are Python's own: ``FileNotFoundError``, ``FileExistsError``; and
``IntegrityError`` for what a store never holds: a JSON document larger than
:data:`DOC_LIMIT`, or, in a local folder (which can come from anyone), a symbolic
link or special file (FIFO, device) below the root, which readers refuse rather
than follow (the root itself may be a link).

A local folder also takes content-addressed files in one pass (:func:`write_hashed`:
read, hash and write together), and hands the processes that read input files a
:class:`BlobSink` to write them so themselves, where they can see the folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import sys
import tempfile
import threading
import uuid

from ..errors import IntegrityError

__all__ = ["Files", "LocalFiles", "ObjectFiles", "BlobSink", "open_files", "write_hashed", "TMP", "DOC_LIMIT"]

TMP = "_tmp"
# The most bytes a JSON document (a name ending .json: manifest, journal entry, sidecar) is read whole with. The
# largest real ones are manifests, listing every part and blob: 100k of them make ~10 MB.
DOC_LIMIT = 64 << 20
DEPTH_LIMIT = 8   # folders below a recording's (its own hold files, or one level: journal/, parts/)
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

    def read(self, path, limit=None):
        """The bytes of ``path`` (``FileNotFoundError`` when missing).

        A file larger than ``limit`` bytes is refused (``IntegrityError``) before it
        is read; by default a JSON document's is :data:`DOC_LIMIT`, a part's or a
        blob's none (their sizes are listed, and checked, by the manifest).
        """
        limit = _limit(path, limit)
        if limit is None:
            return self.fs.cat_file(path)
        try:
            data = self.fs.cat_file(path, start=0, end=limit + 1)   # one ranged read, never more than the limit
        except FileNotFoundError:
            raise
        except OSError:   # S3 answers a range of an empty object with 416: read it whole
            data = self.fs.cat_file(path)
        if len(data) > limit:
            raise IntegrityError(_too_large(self._where(path), None, limit))
        return data

    def read_many(self, paths, refused=None):
        """``{path: bytes}`` of those of ``paths`` that exist, in one batch (JSON documents: capped as :meth:`read`).

        A file refused (``IntegrityError``) goes into the dict ``refused`` as ``{path: error}``
        when one is given, so that one bad file does not stop the others; else it raises.
        """
        paths = list(paths)
        limits = {_limit(path, None) for path in paths}
        ranged = {"start": 0, "end": DOC_LIMIT + 1} if limits == {DOC_LIMIT} else {}
        found = self.fs.cat(paths, on_error="return", **ranged)
        result = {}
        for path in paths:
            data = found.get(path)
            if ranged and isinstance(data, OSError) and not isinstance(data, FileNotFoundError):
                try:   # S3 answers a range of an empty object with 416: read it whole
                    data = self.fs.cat_file(path)
                except Exception:
                    continue
            if data is None or isinstance(data, BaseException):
                continue   # missing or unreadable: left out
            limit = _limit(path, None)
            if limit is not None and len(data) > limit:
                error = IntegrityError(_too_large(self._where(path), None, limit))
                if refused is None:
                    raise error
                refused[path] = error
                continue
            result[path] = data
        return result

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

    def _where(self, path):
        """How a message names ``path``: ``Recording 'x': journal/000003.json``, ``Store ROOT: _blobs/<sha>``."""
        prefix = self.root.rstrip("/") + "/"
        rel = path[len(prefix):] if path.startswith(prefix) else path
        top, _, inner = rel.partition("/")
        if not top or top.startswith("_"):   # _blobs, _tmp: the store's own folders
            return f"Store {self.root}: {rel}"
        return f"Recording '{top}': {inner}" if inner else f"Recording '{top}': its folder"


def _limit(path, limit):
    """The size cap of a whole-file read of ``path``: ``limit``, else :data:`DOC_LIMIT` for a JSON document."""
    if limit is None and path.endswith(".json"):
        return DOC_LIMIT
    return limit


def _too_large(where, size, limit):
    """The refusal of a document too large (``size`` bytes, or ``None``: more than ``limit``, not read further)."""
    if size is None:
        return f"{where} is larger than {limit} bytes, the most a document may have; refusing to read it."
    return f"{where} is {size} bytes, larger than the {limit} a document may have; refusing to read it."


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"),
          (stat.S_ISREG, "a regular file"))


def _kind(mode):
    """``"a FIFO"``, ``"a symbolic link"``, ...: what a file of ``mode`` is."""
    return next((text for test, text in _KINDS if test(mode)), "a special file")


# A folder below a local store's root, and a file in it, are opened without following a symbolic link (O_NOFOLLOW:
# the open itself refuses one, so a link put in place after any check is refused too); a FIFO opens at once
# (O_NONBLOCK), then fstat says what was opened.
_ROOT = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_FOLDER = _ROOT | _NOFOLLOW
_FILE = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_READ_AT_ONCE = 1 << 30   # bytes asked of one os.read (Linux gives at most ~2 GB a call)
_NOT_NAMES = frozenset(("", ".", ".."))


class LocalFiles(Files):
    """A local folder: temporary files in ``root/_tmp`` renamed into place.

    A store folder can come from anyone (a shared folder, an unpacked download): below
    the root, every file is read only if it is a regular file reached through folders
    that are no symbolic links, opened one folder at a time (``openat``). A link, a FIFO,
    a device is refused (``IntegrityError``, one line naming it) and never followed, read
    or deleted through; a JSON document larger than :data:`DOC_LIMIT` is refused unread.
    """

    def write(self, path, data, exclusive=False):
        self._write(path, [data], exclusive)

    def write_chunks(self, path, chunks):
        self._write(path, chunks, exclusive=False)

    def _write(self, path, chunks, exclusive):
        # both folders made, and reached, without following links: never into one a link leads to
        tmp_dir = self._walk_to([TMP], 1, "write", create=True)
        try:
            folder, name = self._parent(path, "write", create=True)
        except BaseException:
            os.close(tmp_dir)
            raise
        tmp = f"tmp-{uuid.uuid4().hex}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=tmp_dir)
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if exclusive:   # fails if path exists: atomic and exclusive
                os.link(tmp, name, src_dir_fd=tmp_dir, dst_dir_fd=folder, follow_symlinks=False)
            else:
                os.replace(tmp, name, src_dir_fd=tmp_dir, dst_dir_fd=folder)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=tmp_dir)
            os.close(folder)
            os.close(tmp_dir)

    # --- reading, never through a link ------------------------------------------
    def read(self, path, limit=None):
        limit = _limit(path, limit)
        fd = self._open(path)
        try:
            size = self._regular(fd, path)
            if limit is not None and size > limit:
                raise IntegrityError(_too_large(self._where(path), size, limit))
            data = _read_all(fd, size, limit)
        finally:
            os.close(fd)
        if data is None:   # grew past the limit while read
            raise IntegrityError(_too_large(self._where(path), None, limit))
        return data

    def read_many(self, paths, refused=None):
        found = {}
        for path in paths:
            try:
                found[path] = self.read(path)
            except IntegrityError as error:
                if refused is None:
                    raise
                refused[path] = error
            except OSError:   # missing (or unreadable): left out, as fsspec's cat(on_error="omit") did
                pass
        return found

    def open_read(self, path):
        fd = self._open(path)
        try:
            self._regular(fd, path)   # a regular file ends: a stream of it never runs forever
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def size(self, path):
        """Size of the regular file ``path``, or ``None`` if it does not exist or is a link, FIFO... (which a
        write then replaces)."""
        found = self._lstat(path)
        return found.st_size if found is not None and stat.S_ISREG(found.st_mode) else None

    def _lstat(self, path, action="read"):
        """The ``stat`` of ``path`` itself (a link's own), reached without links; ``None`` when it does not exist."""
        try:
            folder, name = self._parent(path, action)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.stat(name, dir_fd=folder, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            os.close(folder)

    def names(self, path):
        try:
            fd = self._open_folder(path)
        except FileNotFoundError:   # a root under a file is an unreachable store, as before
            return []
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def tree(self, path):
        """As :meth:`Files.tree`; a link or special file under ``path`` is refused, never descended into."""
        try:
            fd = self._open_folder(path)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        found = {}
        try:
            self._walk(fd, path, "", found)
        finally:
            os.close(fd)
        return found

    def _walk(self, fd, path, prefix, found):
        with os.scandir(fd) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if rel.count("/") >= DEPTH_LIMIT:   # a store nests 2 deep; a forger's 1000 would exhaust the stack
                        raise IntegrityError(f"{self._where(f'{path}/{rel}')} is nested more than {DEPTH_LIMIT} "
                                             "folders deep; refusing to read it.")
                    sub = self._open_folder(f"{path}/{rel}")   # from the root again: a folder swapped for a link is refused
                    try:
                        self._walk(sub, path, rel + "/", found)
                    finally:
                        os.close(sub)
                    continue
                found_stat = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(found_stat.st_mode):
                    raise IntegrityError(_refusal(self._where(f"{path}/{rel}"), _kind(found_stat.st_mode),
                                                  "regular file", "read"))
                found[rel] = found_stat.st_size

    def rm(self, path):
        """Remove ``path`` (a file or a folder); nothing if it does not exist. A link is removed, never what it
        points to; one in the folders leading to ``path`` is refused."""
        if not self._rel_parts(path):   # the store itself (a link to it: the link)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
            return
        try:
            folder, name = self._parent(path, "delete")
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            try:
                found = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return
            if not stat.S_ISDIR(found.st_mode):
                os.unlink(name, dir_fd=folder)
            elif sys.version_info >= (3, 11):
                shutil.rmtree(name, dir_fd=folder)   # removes links inside, never follows them
            else:
                shutil.rmtree(path)
        finally:
            os.close(folder)

    def expect(self, path, folder=False, action="read"):
        """Whether ``path`` exists as a regular file (a folder, with ``folder``); ``IntegrityError`` if it is
        something else (a link, a FIFO...) or is reached through a link."""
        found = self._lstat(path, action)
        if found is None:
            return False
        if not (stat.S_ISDIR if folder else stat.S_ISREG)(found.st_mode):
            raise IntegrityError(_refusal(self._where(path), _kind(found.st_mode), "folder" if folder else
                                          "regular file", action))
        return True

    def _rel_parts(self, path):
        """The names leading from the root to ``path`` (none for the root itself)."""
        prefix = self.root.rstrip("/") + "/"
        if not path.startswith(prefix):
            if path.rstrip("/") == self.root.rstrip("/"):
                return []
            raise ValueError(f"{path} is not in the store {self.root}")
        parts = path[len(prefix):].split("/")
        if _NOT_NAMES.intersection(parts):
            raise ValueError(f"{path}: a path in a store is made of plain names")
        return parts

    def _walk_to(self, parts, count, action, create=False):
        """A descriptor of the folder ``parts[:count]``, opened from the root one folder at a time, each without
        following a link (the root itself may be one), made if missing with ``create``; the caller closes it."""
        if create:
            os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.root, _ROOT)
        try:
            for i in range(count):
                try:
                    if create:
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(parts[i], dir_fd=fd)
                    sub = os.open(parts[i], _FOLDER, dir_fd=fd)
                except OSError as error:
                    self._refuse_link(error, fd, parts, i, "folder", action)
                    raise
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _refuse_link(self, error, fd, parts, i, expected, action):
        """Raise ``IntegrityError`` naming ``parts[:i + 1]`` if the open that failed with ``error`` met a link
        there (O_NOFOLLOW says ELOOP, or ENOTDIR with O_DIRECTORY); else return, for the caller to raise ``error``."""
        if error.errno not in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            return
        try:
            mode = os.stat(parts[i], dir_fd=fd, follow_symlinks=False).st_mode
        except OSError:
            return
        if stat.S_ISLNK(mode):
            where = self._where(self.path(*parts[:i + 1]))
            raise IntegrityError(_refusal(where, "a symbolic link", expected, action)) from None

    def _parent(self, path, action="read", create=False):
        """``(fd of the folder holding path, path's name)``, reached without links; the caller closes the fd."""
        parts = self._rel_parts(path)
        if not parts:
            raise ValueError(f"{path} is the store's root, not a file in it")
        return self._walk_to(parts, len(parts) - 1, action, create), parts[-1]

    def _open_folder(self, path):
        """A descriptor of the folder ``path`` (the root, or a folder below it reached without links)."""
        parts = self._rel_parts(path)
        return self._walk_to(parts, len(parts), "read")

    def _open(self, path):
        """A descriptor of the file ``path``, reached and opened without links (not yet known to be a regular
        file: see :meth:`_regular`)."""
        parts = self._rel_parts(path)
        if not parts:
            raise ValueError(f"{path} is the store's root, not a file in it")
        last = len(parts) - 1
        fd = self._walk_to(parts, last, "read")
        try:
            return os.open(parts[last], _FILE, dir_fd=fd)
        except OSError as error:
            self._refuse_link(error, fd, parts, last, "regular file", "read")
            raise
        finally:
            os.close(fd)

    def _regular(self, fd, path):
        """The size of the open file ``fd`` if it is a regular file; else ``IntegrityError`` naming ``path``."""
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise IntegrityError(_refusal(self._where(path), _kind(found.st_mode), "regular file", "read"))
        return found.st_size

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


def _refusal(where, kind, expected, action):
    if kind == "a symbolic link":
        return f"{where} is a symbolic link; refusing to {action} it."
    return f"{where} is {kind}, not a {expected}; refusing to {action} it."


def _read_all(fd, size, limit):
    """The bytes of the open regular file ``fd`` that fstat found ``size`` bytes long (one read, for most), or
    ``None`` if it grows past ``limit`` while read."""
    chunks, total = [], 0
    while True:
        # one byte more than fstat said: a short read says the end is there (then, a file that grew: 1 MB reads)
        want = min(size - total + 1, _READ_AT_ONCE) if total < size else HASHED_CHUNK
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if limit is not None and total > limit:
            return None
        if total >= size and len(chunk) < want:
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _size(path):
    """Size of the regular file ``path``; ``None`` if missing, or a link (which a write then replaces)."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    return found.st_size if stat.S_ISREG(found.st_mode) else None


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
