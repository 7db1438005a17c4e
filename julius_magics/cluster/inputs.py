"""Input files read by any code, seen in the process that reads them (kernel or worker).

Three doors, each cheap when not recording:

- a Python audit hook (``sys.addaudithook``, events ``"open"`` and
  ``"sqlite3.connect"``): ``open()``, pandas, NumPy, fsspec's local files,
  ``dd.read_csv`` tasks, SQLite databases;
- a wrapper of ``fsspec.spec.AbstractFileSystem.open``: remote files
  (``s3://``, ``gs://``, ``http(s)://``), recorded by ETag or version id where
  the backend gives one, else by content hash;
- the entry points of libraries that open files in C, where no audit event fires
  (:mod:`.native`): pyarrow's readers and writers (parquet, datasets, CSV, JSON,
  Feather, ORC), HDF5's (h5py, PyTables: pandas' ``read_hdf``) and netCDF4's.

An audit hook cannot be removed, so it is installed once per process and does
nothing but compare one string while recording is off (:data:`HOOK_ENV`
``=0`` keeps it from being installed at all).  While recording, a read is
noted with the path as the code wrote it, its absolute path, the reader's
working directory, size, modification time, device and inode.

**Snapshots.**  Each file version read is snapshotted once, in a background
thread of the process that read it, from its first read on, in one pass: read,
SHA-256 and, with a sink this process can see (a
:class:`~julius_magics.recording.files.BlobSink` given to :func:`start_reads`:
the recording's local store, checked by a probe), written straight into the
store.  It runs beside the task still reading the file: storing waits on the
disk, and that time then passes while the cells compute, not at a cell's end or
at the cluster's close.  Without a sink, a file is only hashed, and the bytes
go to the store later, through Dask (:func:`read_file_chunk`).  Processes of one
host that read the same version share one snapshot: a host-wide claim (a lock
file under the temporary directory, per recording ``token``) lets one of them
do it and the others take its result.  Each process of the recording holds that
folder (a shared lock) until its last drain; the folder goes with the last one,
and one that nobody holds (its recording's processes died) goes at the next
recording's start.  :func:`drain_reads` hands out the
snapshots done so far; a later call (or one with ``wait``) the rest.  A file of
1 MB or more that this user's processes hashed before, unchanged since (its
size, times, device and inode), is not read again: by its SHA-256 from
``~/.julius/cache/hashes``, whose bytes the store holds already or the kernel
streams, checked against it.

Left out: the Python installation (prefixes, site-packages, the standard
library), system folders (``/usr``, ``/etc``, ``/proc``...), hidden folders of
the home directory, Dask's scratch space, temporary files (``tmp*`` under the
temporary directory, and julius's own ``julius-*`` ones: wheels built for a
recording, copies of inputs), code (``.py``, ``.pyc``, ``.so``), folders given to
:func:`start_reads` (the recording's store), and files the session's tasks
created, in any process of the host (each leaves a marker in the claims folder):
outputs are not inputs.  A file the kernel's own code wrote (outside any task) is
an input of the tasks that read it: a replay runs the graphs, not the cells that
made it.  A file read and later overwritten is snapshotted before it is
overwritten.  The outputs a task wrote are hashed in the background once it
ends, so the drain at the cell's end finds them hashed unless they changed since.

Kernel-facing API::

    install_hooks()                 # once per process (workers: InputsWorkerPlugin)
    start_reads(skip=[store_root], sink=sink, token=token)   # note (and snapshot) reads from now on
    report = drain_reads(wait=False)  # {"inputs", "outputs", "remote", "problems", "pending", "stats"}
    stop_reads()
    client.register_plugin(InputsWorkerPlugin(recording=True, skip=[...], sink=sink, token=token))
    client.run(watch.in_a_thread, drain_reads)   # what each worker read, in a thread of it
    end_claims()                    # after the last drain, in every process
    sweep_claims()                  # at a recording's start: the folders of dead recordings go
    read_file_chunk(abspath, offset, size, sha256)   # bytes, on the worker that read it
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import site
import socket
import stat
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.parse

from distributed.diagnostics.plugin import WorkerPlugin
from distributed.utils import thread_state

from ..fingerprint import content_fingerprint
from . import native

__all__ = ["HOOK_ENV", "install_hooks", "database_path", "start_reads", "stop_reads", "drain_reads",
           "reading", "file_sha256",
           "read_file_chunk", "read_remote", "output_content", "InputsWorkerPlugin", "is_remote", "claiming", "end_claims",
           "sweep_claims"]

HOOK_ENV = "JULIUS_OPEN_HOOK"
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".pyd", ".pth", ".dist-info")
SYSTEM_DIRS = ("/proc/", "/sys/", "/dev/", "/etc/", "/usr/", "/lib/", "/lib64/", "/bin/", "/sbin/", "/run/",
               "/var/lib/", "/var/cache/")
REMOTE_PROTOCOLS_LOCAL = {"file", "local"}
TEMP_PREFIX = "julius-"   # julius names its temporary files and folders so: never inputs
CLAIMS_PREFIX = f"{TEMP_PREFIX}claims-"
CLAIMS_USERS = "users"   # each process of a recording on the host holds a shared lock on it while it records
UNHELD_CLAIMS_SECONDS = 3600   # a claims folder without CLAIMS_USERS this old is an older julius's, left behind


class _State:
    on = False
    installed = False
    skip: tuple = ()
    reads: dict = {}        # abspath -> _Snapshot, until drained once done
    earlier: list = []      # snapshots of versions read before, superseded in ``reads`` until drained
    writes: dict = {}       # abspath -> note (persists while recording: reads of outputs are skipped)
    new_writes: dict = {}   # abspath -> note, since the last drain
    writers: dict = {}      # task key -> abspaths it wrote, until it finishes (then hashed in the background)
    output_hashes: dict = {}   # abspath -> its _OutputHash, until drained
    remote: dict = {}       # url -> (fs, path, note)
    hashes: dict = {}       # (abspath, size, mtime_ns) -> sha256: a file version is hashed once
    versions: dict = {}     # identity -> snapshot result, this recording's
    sink = None             # where snapshots store the bytes (recording.files.BlobSink), or None
    visible = None          # whether this process sees the sink (probed once)
    claims = None           # this host's claims folder of the recording, or None
    claims_held = None      # the descriptor by which this process holds it (a shared lock)
    generation = 0          # of start_reads: a snapshot of an earlier recording is dropped
    stats: dict = {"passes": 0, "bytes": 0, "seconds": 0.0, "cpu": 0.0, "shared": 0, "known": 0}
    queue = collections.deque()
    wake = threading.Condition()
    draining = threading.Lock()
    thread = None
    host = socket.gethostname()
    local = threading.local()


_S = _State


def _audit(event, args):
    if event == "open" and _S.on:
        _note_open(args)
    elif event == "sqlite3.connect" and _S.on:
        _note_database(args[0])


def _busy():
    return getattr(_S.local, "busy", False)


def _note_open(args):
    path, mode, flags = args
    if path is None or isinstance(path, int):
        return
    try:
        text = os.fsdecode(path)
    except TypeError:
        return
    if text.endswith(CODE_SUFFIXES) or _busy():   # most opens are imports': no more work for them
        return
    if isinstance(mode, str):
        writing = any(c in mode for c in "wax+")
        reading = "r" in mode or "+" in mode
    else:
        access = (flags or 0) & os.O_ACCMODE
        writing = access != os.O_RDONLY or bool((flags or 0) & (os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        reading = access in (os.O_RDONLY, os.O_RDWR) and not (flags or 0) & os.O_TRUNC
    _note_path(text, reading, writing)


def database_path(database) -> str | None:
    """The file a ``sqlite3.connect`` argument names (a path or a ``file:`` URI); None for an in-memory one."""
    if isinstance(database, (bytes, os.PathLike)):
        database = os.fsdecode(database)
    if not isinstance(database, str) or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        parts = urllib.parse.urlsplit(database)
        if "memory" in urllib.parse.parse_qs(parts.query).get("mode", ()):
            return None
        return urllib.parse.unquote(parts.path) or None
    return database


def _note_database(database):
    # SQLite opens its file in C, where no "open" event fires: a database that exists is read, a new one
    # written.  Any statement may change it, unseen: one that exists is snapshotted now, before the first,
    # with its write-ahead log (WAL mode: commits not yet copied into the database are there)
    path = None if _busy() else database_path(database)
    if path is not None:
        exists = os.path.exists(path)
        _note_path(path, reading=exists, writing=not exists)
        wal = f"{path}-wal"
        if exists and os.path.isfile(wal) and os.path.getsize(wal) > 0:
            _note_path(wal, reading=True, writing=False)
        for read in (path, wal) if exists else ():
            snapshot = _S.reads.get(os.path.abspath(read))
            if snapshot is not None:
                snapshot.run()


def _note_path(text, reading, writing):
    absolute = os.path.abspath(text)
    if absolute.startswith(_S.skip) or absolute.endswith(CODE_SUFFIXES) or "dask-scratch-space" in absolute:
        return
    _S.local.busy = True
    snapshot = None
    in_task = getattr(thread_state, "key", None) is not None   # else the kernel's own code
    try:
        written = _S.writes.get(absolute)
        # the read first: a file opened to read and write ("r+", HDF5's "a") that existed is an input too
        known = _S.reads.get(absolute)
        if reading and (known is None or _rewritten(known)) and not _kept_out(absolute, written, in_task):
            try:
                st = os.stat(absolute)
            except OSError:
                st = None   # the open itself will fail, or it makes the file
            if st is not None and stat.S_ISREG(st.st_mode):
                if known is not None:   # read again, changed since: both versions are inputs
                    _S.earlier.append(known)
                snapshot = _S.reads[absolute] = _Snapshot({
                    "path": text, "abspath": absolute, "cwd": os.getcwd(), "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns, "dev": st.st_dev, "ino": st.st_ino})
                if not writing:
                    _enqueue(snapshot)
        if writing:
            _mark_written(absolute, by_kernel=not in_task)
            if in_task:
                _S.writers.setdefault(thread_state.key, set()).add(absolute)
        if writing and (written is None or in_task and not written["in_task"]):
            existed = written["existed"] if written else os.path.exists(absolute) and not _made_in_session(absolute)
            if in_task and not existed:
                _mark_made_in_session(absolute)
            note = {"path": text, "abspath": absolute, "cwd": os.getcwd(), "existed": existed, "in_task": in_task}
            _S.writes[absolute] = _S.new_writes[absolute] = note
            read = _S.reads.get(absolute)
            if read is None:
                pass
            elif read is snapshot:   # opened to update: snapshotted now, before it is written, unless another
                if not read.run(blocking=False):   # holds its claim (their result, or "changed": partial)
                    _enqueue(read)
            else:   # read before: snapshotted before it is written
                read.run()
    finally:
        _S.local.busy = False


def _rewritten(snapshot) -> bool:
    """Whether the file of ``snapshot`` changed on disk since it was read (a cell rewrote it)."""
    try:
        return _changed(os.stat(snapshot.note["abspath"]), snapshot.note)
    except OSError:
        return False


def _kept_out(absolute, written, in_task) -> bool:
    """Whether a read of ``absolute`` is not an input: an output of the session read back.

    A file a task wrote (in any process of the host) is an output, never an input.  One the
    kernel's own code wrote is an input of the tasks that read it, even one a task wrote before
    (the kernel rewrote it since): a replay runs the graphs, not the cells that wrote it.
    """
    if written is not None and not written["in_task"]:
        return not in_task
    if written is None and not _made_in_session(absolute):
        return False
    return not (in_task and _kernel_wrote(absolute))


def _made_marker(absolute):
    return os.path.join(_S.claims, "made-" + hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:40])


def _mark_made_in_session(absolute):
    """Tell the other processes of this host that the session made ``absolute`` (an output, never an input:
    one worker writes a file, another appends to it or reads it back)."""
    if _S.claims is not None:
        with contextlib.suppress(OSError):
            os.close(os.open(_made_marker(absolute), os.O_WRONLY | os.O_CREAT, 0o600))


def _made_in_session(absolute) -> bool:
    return _S.claims is not None and os.path.exists(_made_marker(absolute))


def _kernel_marker(absolute):
    return os.path.join(_S.claims, "kernel-" + hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:40])


def _mark_written(absolute, by_kernel):
    """Tell this host's processes who wrote ``absolute`` last: the kernel's own code (its tasks then read a
    version the replay must serve, as cells are not replayed) or a task (an output again)."""
    if _S.claims is not None:
        with contextlib.suppress(OSError):
            if by_kernel:
                os.close(os.open(_kernel_marker(absolute), os.O_WRONLY | os.O_CREAT, 0o600))
            else:
                os.remove(_kernel_marker(absolute))


def _kernel_wrote(absolute) -> bool:
    return _S.claims is not None and os.path.exists(_kernel_marker(absolute))


# --- snapshots -------------------------------------------------------------------------
class _Busy(Exception):
    """Another process of this host holds the claim of a file version."""


class _Changed(Exception):
    """The file changed while its snapshot read it."""


class _Snapshot:
    """One file version read: snapshotted once (:meth:`run`), by whichever thread comes first."""

    def __init__(self, note):
        self.note = note
        self.generation = _S.generation
        self.result = None    # {"sha256", "stored"} or {"problem"}
        self.deferred = False   # claimed by another process when last tried: behind the others
        self._lock = threading.Lock()

    def run(self, blocking=True) -> bool:
        """Snapshot it unless done; False if another process holds its claim and not ``blocking``."""
        with self._lock:
            if self.result is None:
                was = _busy()
                _S.local.busy = True
                try:
                    self.result = _snapshot(self.note, blocking)
                except _Busy:
                    return False
                except Exception as error:   # never lost silently: the recording names it
                    self.result = {"problem": f"could not be snapshotted: {type(error).__name__}: {error}"}
                finally:
                    _S.local.busy = was
        return True


def _identity(note):
    return (_S.host, note["abspath"], note["size"], note["mtime_ns"], note["dev"], note["ino"])


def _changed(st, note):
    return (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino) != (note["size"], note["mtime_ns"], note["dev"],
                                                                   note["ino"])


def _snapshot(note, blocking):
    key = _identity(note)
    result = _S.versions.get(key)
    if result is None:
        with _claim(key, blocking) as claim:
            result = claim.result()
            if result is None:
                start, cpu = time.perf_counter(), time.thread_time()
                result = _one_pass(note)
                _count(seconds=time.perf_counter() - start, cpu=time.thread_time() - cpu)
                if "sha256" in result:
                    claim.publish(result)
            else:
                _count(shared=1)
        if "sha256" in result:
            _S.versions[key] = result
            _S.hashes[(note["abspath"], note["size"], note["mtime_ns"])] = result["sha256"]
    return result


def _count(**amounts):
    with _S.wake:   # snapshots run in several threads (the background one, a drain, a write)
        for name, amount in amounts.items():
            _S.stats[name] += amount


def _one_pass(note):
    """Read the file once: SHA-256, and the bytes into the sink when this process sees it."""
    try:
        f = open(note["abspath"], "rb")
    except OSError:
        return {"problem": "vanished after it was read"}
    with f:
        st = os.fstat(f.fileno())
        if _changed(st, note):
            return {"problem": "changed after it was read, before it was hashed"}

        def unchanged():
            if _changed(os.fstat(f.fileno()), note):
                raise _Changed

        if _S.visible is None:
            _S.visible = _S.sink is not None and _S.sink.visible()
        known = _known_sha256(note["abspath"], st)
        if known is not None and not _S.visible:   # the kernel streams its bytes, if wanted, checked against it
            _count(known=1)
            return {"sha256": known, "stored": False}
        if known is not None and _S.sink.holds(known, note["size"]):   # stored by an earlier recording
            _count(known=1)
            return {"sha256": known, "stored": True}
        _count(passes=1, bytes=note["size"])
        try:
            if _S.visible:
                try:
                    sha, _ = _S.sink.put(f, commit=unchanged)
                    _remember_sha256(note["abspath"], st, sha)
                    return {"sha256": sha, "stored": True}
                except OSError:   # the store refused the write: hashed only, its bytes sent through Dask
                    f.seek(0)
            sha = hashlib.file_digest(f, "sha256").hexdigest()
            unchanged()
            _remember_sha256(note["abspath"], st, sha)
            return {"sha256": sha, "stored": False}
        except _Changed:
            return {"problem": f"changed after it was read, before it was {'stored' if _S.visible else 'hashed'}"}


class _Claim:
    """A held claim of a file version: the result its first snapshot published, if any."""

    def __init__(self, path=None):
        self.path = path

    def result(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, TypeError, ValueError):
            return None

    def publish(self, result):
        if self.path is not None:
            with contextlib.suppress(OSError):
                with open(f"{self.path}.tmp", "w") as f:
                    json.dump(result, f)
                os.replace(f"{self.path}.tmp", self.path)


@contextlib.contextmanager
def _claim(key, blocking=True):
    """Hold the host-wide claim of file version ``key`` (a lock file of the recording's claims folder)."""
    folder = _S.claims
    fd = None
    if folder is not None:
        base = os.path.join(folder, hashlib.sha256(repr(key).encode()).hexdigest()[:40])
        with contextlib.suppress(OSError):   # the folder went (the recording ended): no claim
            fd = os.open(f"{base}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    if fd is None:
        yield _Claim()
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise _Busy from None
        yield _Claim(f"{base}.json")
    finally:
        os.close(fd)   # lets the claim go, also when this process dies


@contextlib.contextmanager
def claiming(path):
    """Hold the claim of the current version of ``path``, as a process snapshotting it does.

    The snapshots of that version in this host wait until it is let go (they then take
    the version as the holder published it, or snapshot it themselves).
    """
    absolute = os.path.abspath(path)
    st = os.stat(absolute)
    key = _identity({"abspath": absolute, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dev": st.st_dev,
                     "ino": st.st_ino})
    was = _busy()
    _S.local.busy = True   # the claim's own files are no inputs
    with _claim(key):
        _S.local.busy = was
        yield


def _enqueue(snapshot):
    with _S.wake:
        if _S.thread is None or not _S.thread.is_alive():
            _S.thread = threading.Thread(target=_snapshots, name="julius-snapshots", daemon=True)
            _S.thread.start()
        _S.queue.append(snapshot)
        _S.wake.notify()


def _snapshots():
    """The background thread: snapshots in the order read; one claimed elsewhere goes to the back."""
    _S.local.busy = True   # its own reads are never inputs
    while True:
        with _S.wake:
            while not _S.queue:
                _S.wake.wait()
            snapshot = _S.queue.popleft()
            blocking = snapshot.deferred and all(s.deferred for s in _S.queue)
        if snapshot.generation != _S.generation:
            continue
        if not snapshot.run(blocking=blocking):
            snapshot.deferred = True
            with _S.wake:
                _S.queue.append(snapshot)


def _hold_claims(token):
    """Hold this host's claims folder of recording ``token`` (private to this user) as ``_S.claims``,
    by a shared lock on its :data:`CLAIMS_USERS` (or hold none)."""
    folder = os.path.join(tempfile.gettempdir(), f"{CLAIMS_PREFIX}{token}")
    users = os.path.join(folder, CLAIMS_USERS)
    for _ in range(3):   # a sweep may remove the folder between its making and our hold: make it again
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            st = os.lstat(folder)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                return
            fd = os.open(users, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        fcntl.flock(fd, fcntl.LOCK_SH)
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(users)):
                _S.claims, _S.claims_held = folder, fd
                return
        os.close(fd)


def _let_go_of_claims():
    """Stop holding the claims folder; remove it if no other process holds it."""
    folder, _S.claims = _S.claims, None
    if _S.claims_held is not None:
        os.close(_S.claims_held)
        _S.claims_held = None
    if folder is not None:
        _remove_unless_held(folder)


def _remove_unless_held(folder):
    try:
        fd = os.open(os.path.join(folder, CLAIMS_USERS), os.O_RDONLY)
    except OSError:   # never held: an older julius's, or one a process is making now (empty, and new)
        with contextlib.suppress(OSError):
            if time.time() - os.stat(folder).st_mtime > UNHELD_CLAIMS_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                os.rmdir(folder)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # OSError while held: its recording goes on
        shutil.rmtree(folder, ignore_errors=True)
    except OSError:
        pass
    finally:
        os.close(fd)


def sweep_claims() -> None:
    """Remove this user's claims folders that no process holds any more: those of recordings whose
    processes died (a killed kernel, a worker gone with its host's last holder) before their last drain."""
    with contextlib.suppress(OSError), os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if (entry.name.startswith(CLAIMS_PREFIX) and entry.is_dir(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_uid == os.getuid()):
                    _remove_unless_held(entry.path)


def file_sha256(path, st=None) -> str:
    """SHA-256 hex of a file, streamed; each version of a file (size, mtime) is hashed once per process,
    a big one once for this user (:func:`_known_sha256`)."""
    st = st or os.stat(path)
    absolute = os.path.abspath(path)
    key = (absolute, st.st_size, st.st_mtime_ns)
    sha = _S.hashes.get(key)
    if sha is None:
        was = _busy()
        _S.local.busy = True
        try:
            sha = _known_sha256(absolute, st)
            if sha is None:
                with open(path, "rb") as f:
                    sha = hashlib.file_digest(f, "sha256").hexdigest()
                    if _changed(os.fstat(f.fileno()), _version_of(st)):   # written meanwhile: not that version's
                        return sha
                _remember_sha256(absolute, st, sha)
        finally:
            _S.local.busy = was
        _S.hashes[key] = sha
    return sha


def _version_of(st):
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "dev": st.st_dev, "ino": st.st_ino}


class _OutputHash:
    """An output file a finished task wrote: hashed by the background thread, so the drain at the cell's
    end finds its hash known (:func:`file_sha256`) unless the file changed since."""

    deferred = False

    def __init__(self, absolute):
        self.absolute = absolute
        self.generation = _S.generation
        self._lock = threading.Lock()   # the drain waits for a hash under way rather than hashing twice

    def run(self, blocking=True) -> bool:
        with self._lock, contextlib.suppress(OSError):   # gone or unreadable: the drain says so
            st = os.stat(self.absolute)
            if stat.S_ISREG(st.st_mode):
                file_sha256(self.absolute, st)
        return True


def hash_outputs_of(key) -> None:
    """Hash, in the background, the files task ``key`` (finished in this process) wrote that the next
    drain reports (each output is reported once)."""
    for absolute in sorted(_S.writers.pop(key, ())):
        if absolute in _S.new_writes:
            _S.output_hashes[absolute] = output = _OutputHash(absolute)
            _enqueue(output)


# --- the user's cache of big files' hashes ------------------------------------------------
KNOWN_HASH_BYTES = 1 << 20   # smaller files are hashed again: cheaper than a cache file each
RACY_NS = 2_000_000_000
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _known_path(absolute, st) -> str:
    # ctime too: a write changes it, and unlike mtime no program can set it back
    version = (_S.host, absolute, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)
    name = hashlib.sha256(repr(version).encode("utf-8", "surrogateescape")).hexdigest()[:40]
    return os.path.join(os.path.expanduser("~"), ".julius", "cache", "hashes", name)


def _known_sha256(absolute, st) -> str | None:
    """The SHA-256 that this user's processes hashed this version of a big file to before (any
    recording, replay or check of it), or None: data read by notebook after notebook is hashed once,
    as git hashes a file again only when its stat changed."""
    if st.st_size < KNOWN_HASH_BYTES:
        return None
    try:
        with open(_known_path(absolute, st), encoding="ascii") as f:
            text = f.read(65)
    except (OSError, ValueError):
        return None
    return text if _SHA256_HEX.fullmatch(text) else None


def _remember_sha256(absolute, st, sha) -> None:
    # not a version changed in the last seconds: within a file system's time granularity, another write
    # of the same size could leave the same times (git's "racy" entries)
    if st.st_size < KNOWN_HASH_BYTES or time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
        return
    path = _known_path(absolute, st)
    try:   # whole or not at all: the other processes of the host read it at once
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=TEMP_PREFIX)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(sha)
        os.replace(tmp, path)
    except OSError:
        pass


def output_content(path) -> str | None:
    """The fingerprint of what an output holds, for a format whose bytes also hold when it was written
    (:func:`~julius_magics.fingerprint.content_fingerprint`); None for the others, and for one that
    cannot be read as its format says (its SHA-256 is compared then)."""
    try:
        return content_fingerprint(path)
    except Exception:
        return None


# --- fsspec, and the libraries that open files in C -----------------------------------
def is_remote(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return not REMOTE_PROTOCOLS_LOCAL.intersection(protocol) and "memory" not in protocol


def _wrap_fsspec(spec_module):
    AbstractFileSystem = spec_module.AbstractFileSystem
    original = AbstractFileSystem.open
    if getattr(original, "__julius_original__", None):
        return

    def open(self, path, mode="rb", *args, **kwargs):
        if _S.on and "r" in mode and is_remote(self):
            _note_remote(self, path)
        return original(self, path, mode, *args, **kwargs)

    open.__julius_original__ = original
    open.__doc__ = original.__doc__
    AbstractFileSystem.open = open


def _note_remote(fs, path):
    try:
        url = fs.unstrip_protocol(fs._strip_protocol(path))
    except Exception:
        url = str(path)
    if url not in _S.remote:
        _S.remote[url] = (fs, fs._strip_protocol(path), {"url": url, "path": str(path), "cwd": os.getcwd()})


def _note_native(path, reading, writing):
    if _S.on:
        _note_path(path, reading, writing)


# --- switching -------------------------------------------------------------------------
def install_hooks() -> bool:
    """Install the audit hook (once per process) and the fsspec wrapper (once fsspec is imported: a
    worker importing it took 20 ms); False when disabled."""
    if os.environ.get(HOOK_ENV, "1") == "0":
        return False
    if not _S.installed:
        sys.addaudithook(_audit)
        _S.installed = True
    native.after_import("fsspec.spec", _wrap_fsspec)
    return True


def _skip_roots(extra) -> tuple:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values()}
    try:
        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except AttributeError:   # virtualenvs without site's functions
        pass
    home = os.path.expanduser("~")
    temp = tempfile.gettempdir()
    prefixes = {os.path.join(os.path.abspath(r), "") for r in (*roots, *extra) if r}
    prefixes.update(SYSTEM_DIRS)
    prefixes.add(os.path.join(home, "."))          # ~/.cache, ~/.config, ~/.julius, ~/.ipython...
    prefixes.add(os.path.join(temp, "tmp"))        # tempfile's names
    prefixes.add(os.path.join(temp, TEMP_PREFIX))  # julius's own: wheels built for a recording, input copies
    return tuple(sorted(prefixes))


def start_reads(skip=(), sink=None, token=None) -> bool:
    """Note (and snapshot) input files read in this process from now on. False if disabled.

    Parameters
    ----------
    skip : iterable of str
        Folders whose files are never inputs.
    sink : BlobSink, optional
        Where snapshots store the bytes, if this process sees it (else: hashed only).
    token : str, optional
        The recording's: processes of a host with the same token share snapshots.
    """
    if not install_hooks():
        return False
    native.install(note=_note_native)
    if _S.on:   # already on (a worker in the kernel's process): keep what was noted
        _S.skip = tuple(sorted({*_S.skip, *_skip_roots(skip)}))
        return True
    _S.skip = _skip_roots(skip)
    _S.reads, _S.writes, _S.new_writes, _S.remote, _S.versions, _S.earlier = {}, {}, {}, {}, {}, []
    _S.writers, _S.output_hashes = {}, {}
    _S.sink, _S.visible = sink, None
    _let_go_of_claims()   # an earlier recording's, in a process it did not reach the end of
    if token:
        _hold_claims(token)
    _S.stats = {"passes": 0, "bytes": 0, "seconds": 0.0, "cpu": 0.0, "shared": 0, "known": 0}
    with _S.wake:
        _S.generation += 1
        _S.queue.clear()
    _S.on = True
    return True


def stop_reads() -> None:
    """Stop noting reads (what was noted stays until :func:`drain_reads`)."""
    _S.on = False


def reading() -> bool:
    """Whether reads are being noted in this process."""
    return _S.on


def drain_reads(hash_remote: bool = True, wait: bool = True) -> dict:
    """What this process read (and wrote) since the last call, snapshotted; forgotten afterwards.

    Parameters
    ----------
    hash_remote : bool
        Hash remote inputs that have neither ETag nor version id.
    wait : bool
        Wait for (and help with) every snapshot not done yet; else those stay for a later call.

    Returns
    -------
    dict
        ``inputs``: ``[{path, abspath, cwd, size, sha256, stored, host, pid}]`` (``stored``: the
        bytes are in the sink's store);
        ``outputs``: files this process created or overwrote (``existed``), with their hash now;
        ``remote``: ``[{url, path, cwd, size, etag, version_id, sha256}]`` (``sha256`` only when
        the backend gives neither ETag nor version, and ``hash_remote``);
        ``problems``: ``[{path, abspath, problem}]``: files that vanished or changed between being
        read and being snapshotted (the recording cannot prove what was read);
        ``pending``: snapshots not done yet; ``stats``: ``{passes, bytes, seconds, cpu, shared}`` of
        this recording (files read through by its snapshots, their bytes, wall and CPU time,
        versions another process snapshotted).
    """
    with _S.draining:   # one drain at a time: a kernel's and a closing client's may overlap
        return _drain_reads(hash_remote, wait)


def _drain_reads(hash_remote, wait) -> dict:
    if wait:   # helps the background thread, from the other end of the queue
        for snapshot in reversed([*_S.earlier, *_S.reads.values()]):
            snapshot.run()
    done = [(a, s) for a, s in list(_S.reads.items()) if s.result is not None]
    for absolute, _ in done:
        _S.reads.pop(absolute, None)
    finished = [s for s in _S.earlier if s.result is not None]
    for snapshot in finished:   # one by one: a task may supersede another version meanwhile
        _S.earlier.remove(snapshot)
    done = [(s.note["abspath"], s) for s in finished] + done
    writes, _S.new_writes = _S.new_writes, {}
    remote, _S.remote = _S.remote, {}
    pid = os.getpid()
    inputs, outputs, problems = [], [], []
    for absolute, snapshot in done:
        note, result = snapshot.note, snapshot.result
        if "problem" in result:
            problems.append({"path": note["path"], "abspath": absolute, "problem": result["problem"]})
            continue
        entry = {k: note[k] for k in ("path", "abspath", "cwd", "size", "mtime_ns")}
        inputs.append({**entry, **result, "host": _S.host, "pid": pid})
    for absolute, note in writes.items():
        entry = {**note, "host": _S.host, "pid": pid}
        if note["in_task"] and _kernel_wrote(absolute):   # a cell rewrote it since: what the task wrote is gone
            outputs.append({**entry, "rewritten": True})
            continue
        hashing = _S.output_hashes.pop(absolute, None)
        if hashing is not None:
            hashing.run()
        try:
            st = os.stat(absolute)
            if stat.S_ISREG(st.st_mode):
                entry.update(size=st.st_size, sha256=file_sha256(absolute, st), mtime_ns=st.st_mtime_ns)
                content = output_content(absolute)
                if content is not None:
                    entry["content"] = content
        except OSError:
            entry["gone"] = True
        outputs.append(entry)
    remotes = []
    for url, (fs, path, note) in remote.items():
        entry = dict(note)
        try:
            info = fs.info(path)
            entry["size"] = info.get("size")
            entry["etag"] = info.get("ETag") or info.get("etag")
            entry["version_id"] = info.get("VersionId") or info.get("version_id")
            if not entry["etag"] and not entry["version_id"] and hash_remote:
                entry["sha256"] = hashlib.sha256(fs.cat_file(path)).hexdigest()
        except Exception as error:
            problems.append({"path": url, "abspath": url, "problem": f"could not be identified: {error}"})
            continue
        remotes.append(entry)
    return {"inputs": inputs, "outputs": outputs, "remote": remotes, "problems": problems,
            "pending": len(_S.reads) + len(_S.earlier), "stats": dict(_S.stats)}


def end_claims() -> None:
    """After the recording's last drain (in every process): its claims folder on this host goes with
    the last process that held it."""
    if not _S.on:
        _let_go_of_claims()


def read_file_chunk(abspath, offset=0, size=None, sha256=None) -> bytes:
    """Bytes of a file read in this process (run where it was read: a worker via ``client.submit``).

    With ``sha256`` and the whole file asked for, the bytes are checked against it first.
    """
    was = _busy()
    _S.local.busy = True
    try:
        with open(abspath, "rb") as f:
            f.seek(offset)
            data = f.read() if size is None else f.read(size)
    finally:
        _S.local.busy = was
    if sha256 is not None and offset == 0 and size is None and hashlib.sha256(data).hexdigest() != sha256:
        raise OSError(f"{abspath} changed since it was read (SHA-256 differs)")
    return data


def read_remote(url, **storage_options) -> bytes:
    """The bytes of a remote input (``--data embed-remote``), read with fsspec."""
    import fsspec

    with fsspec.open(url, "rb", **storage_options) as f:
        return f.read()


class InputsWorkerPlugin(WorkerPlugin):
    """Worker plugin: note the input files this worker reads while ``recording``.

    Registered again (same name) to switch; a worker that joins later gets the
    current setting.
    """

    name = "julius-inputs"

    def __init__(self, recording=False, skip=(), sink=None, token=None):
        self.recording = recording
        self.skip = tuple(skip)
        self.sink, self.token = sink, token

    def setup(self, worker):
        install_hooks()
        if self.recording:
            start_reads(skip=(*self.skip, getattr(worker, "local_directory", None) or ""), sink=self.sink,
                        token=self.token)
        else:
            stop_reads()

    def teardown(self, worker):
        pass   # the next registration decides; a replaced plugin must not switch reads off

    def transition(self, key, start, finish, **kwargs):
        if start in ("executing", "long-running") and _S.writers:
            hash_outputs_of(key)
