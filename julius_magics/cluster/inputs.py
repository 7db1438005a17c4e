"""Input files read by any code, seen in the process that reads them (kernel or worker).

Three doors, each cheap when not recording:

- a Python audit hook (``sys.addaudithook``, event ``"open"``): ``open()``,
  pandas, NumPy, fsspec's local files, ``dd.read_csv`` tasks;
- a wrapper of ``fsspec.spec.AbstractFileSystem.open``: remote files
  (``s3://``, ``gs://``, ``http(s)://``), recorded by ETag or version id where
  the backend gives one, else by content hash;
- wrappers of pyarrow's parquet entry points (``ParquetDataset``,
  ``ParquetFile``, ``pyarrow.dataset.dataset``), which read through Arrow's C++
  filesystem where no audit event fires.

An audit hook cannot be removed, so it is installed once per process and does
nothing but compare one string while recording is off (:data:`HOOK_ENV`
``=0`` keeps it from being installed at all).  While recording, a read is
noted with the path as the code wrote it, its absolute path, the reader's
working directory, size and modification time; hashing (SHA-256, once per
file version) waits for :func:`drain_reads`.

Left out: the Python installation (prefixes, site-packages, the standard
library), system folders (``/usr``, ``/etc``, ``/proc``...), hidden folders of
the home directory, Dask's scratch space, temporary files (``tmp*`` under the
temporary directory, and julius's own ``julius-*`` ones: wheels built for a
recording, copies of inputs), code (``.py``, ``.pyc``, ``.so``), folders given to
:func:`start_reads` (the recording's store), and files the session created:
outputs are not inputs.  A file read and later overwritten is hashed before
it is overwritten.

Kernel-facing API::

    install_hooks()                 # once per process (workers: InputsWorkerPlugin)
    start_reads(skip=[store_root])  # note reads from now on
    report = drain_reads()          # {"inputs", "outputs", "remote", "problems"}
    stop_reads()
    client.register_plugin(InputsWorkerPlugin(recording=True, skip=[...]))   # on workers
    client.run(drain_reads)         # what each worker read
    read_file_chunk(abspath, offset, size, sha256)   # bytes, on the worker that read it
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import site
import socket
import stat
import sys
import sysconfig
import tempfile
import threading

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["HOOK_ENV", "install_hooks", "start_reads", "stop_reads", "drain_reads", "reading", "file_sha256",
           "read_file_chunk", "read_remote", "InputsWorkerPlugin", "is_remote"]

HOOK_ENV = "JULIUS_OPEN_HOOK"
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".pyd", ".pth", ".dist-info")
SYSTEM_DIRS = ("/proc/", "/sys/", "/dev/", "/etc/", "/usr/", "/lib/", "/lib64/", "/bin/", "/sbin/", "/run/",
               "/var/lib/", "/var/cache/")
REMOTE_PROTOCOLS_LOCAL = {"file", "local"}
TEMP_PREFIX = "julius-"   # julius names its temporary files and folders so: never inputs


class _State:
    on = False
    installed = False
    skip: tuple = ()
    reads: dict = {}        # abspath -> note
    writes: dict = {}       # abspath -> note (persists while recording: reads of outputs are skipped)
    new_writes: dict = {}   # abspath -> note, since the last drain
    remote: dict = {}       # url -> (fs, path, note)
    hashes: dict = {}       # (abspath, size, mtime_ns) -> sha256: a file version is hashed once
    local = threading.local()


_S = _State


def _audit(event, args):
    if event == "open" and _S.on:
        _note_open(args)


def _busy():
    return getattr(_S.local, "busy", False)


def _note_open(args):
    if _busy():
        return
    path, mode, flags = args
    if path is None or isinstance(path, int):
        return
    try:
        text = os.fsdecode(path)
    except TypeError:
        return
    if isinstance(mode, str):
        writing = any(c in mode for c in "wax+")
        reading = "r" in mode or "+" in mode
    else:
        access = (flags or 0) & os.O_ACCMODE
        writing = access != os.O_RDONLY or bool((flags or 0) & (os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        reading = access in (os.O_RDONLY, os.O_RDWR) and not (flags or 0) & os.O_TRUNC
    _note_path(text, reading, writing)


def _note_path(text, reading, writing):
    absolute = os.path.abspath(text)
    if absolute.startswith(_S.skip) or absolute.endswith(CODE_SUFFIXES) or "dask-scratch-space" in absolute:
        return
    _S.local.busy = True
    try:
        if writing and absolute not in _S.writes:
            note = {"path": text, "abspath": absolute, "cwd": os.getcwd(), "existed": os.path.exists(absolute)}
            _S.writes[absolute] = _S.new_writes[absolute] = note
            read = _S.reads.get(absolute)
            if read is not None and "sha256" not in read:   # read before: keep what was read, not what is written
                _hash_note(read)
        if reading and absolute not in _S.reads and absolute not in _S.writes:
            try:
                st = os.stat(absolute)
            except OSError:
                return   # the open itself will fail
            if stat.S_ISREG(st.st_mode):
                _S.reads[absolute] = {"path": text, "abspath": absolute, "cwd": os.getcwd(),
                                      "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    finally:
        _S.local.busy = False


def _hash_note(note):
    try:
        st = os.stat(note["abspath"])
        note["sha256"] = file_sha256(note["abspath"], st)
        note["size"], note["mtime_ns"] = st.st_size, st.st_mtime_ns
    except OSError:
        pass


def file_sha256(path, st=None) -> str:
    """SHA-256 hex of a file, streamed; each version of a file (size, mtime) is hashed once per process."""
    st = st or os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    sha = _S.hashes.get(key)
    if sha is None:
        was = _busy()
        _S.local.busy = True
        try:
            with open(path, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
        finally:
            _S.local.busy = was
        _S.hashes[key] = sha
    return sha


# --- fsspec and pyarrow ---------------------------------------------------------------
def is_remote(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return not REMOTE_PROTOCOLS_LOCAL.intersection(protocol) and "memory" not in protocol


def _install_fsspec():
    try:
        from fsspec.spec import AbstractFileSystem
    except ImportError:
        return
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


def _note_dataset(dataset, written):
    try:
        import pyarrow.fs as pafs

        if isinstance(dataset.filesystem, pafs.LocalFileSystem):
            files = list(dataset.files)
            for f in files:
                shown = written if len(files) == 1 and isinstance(written, str) else f
                if os.path.abspath(shown) != os.path.abspath(f):
                    shown = f
                _note_path(shown, True, False)
    except Exception:   # a dataset of another kind (in memory): nothing to note
        pass


def _wrap(owner, name, wrapper):
    original = getattr(owner, name)
    wrapper.__julius_original__ = original
    wrapper.__doc__ = original.__doc__
    setattr(owner, name, wrapper)
    return original


def _wrap_parquet():
    from pyarrow.parquet import core

    if getattr(core.ParquetDataset.__init__, "__julius_original__", None):
        return

    def parquet_dataset_init(self, path_or_paths, *args, **kwargs):
        dataset_init(self, path_or_paths, *args, **kwargs)
        if _S.on:
            _note_dataset(self._dataset, path_or_paths)

    def parquet_file_init(self, source, *args, **kwargs):
        if _S.on and isinstance(source, (str, os.PathLike)) and "://" not in os.fspath(source):
            _note_path(os.fspath(source), True, False)
        file_init(self, source, *args, **kwargs)

    dataset_init = _wrap(core.ParquetDataset, "__init__", parquet_dataset_init)
    file_init = _wrap(core.ParquetFile, "__init__", parquet_file_init)


def _wrap_dataset():
    import pyarrow.dataset as pads

    if getattr(pads.dataset, "__julius_original__", None):
        return

    def dataset(source, *args, **kwargs):
        result = dataset_function(source, *args, **kwargs)
        if _S.on:
            _note_dataset(result, source)
        return result

    dataset_function = _wrap(pads, "dataset", dataset)


# pyarrow's parquet and dataset modules are wrapped when a process imports them (importing
# pyarrow.dataset takes seconds: a worker that never reads Parquet never pays for it)
_PYARROW = {"pyarrow.parquet": _wrap_parquet, "pyarrow.dataset": _wrap_dataset}


class _WrapOnImport:
    """A meta path finder: the module's own loader, then its wrappers (:data:`_PYARROW`)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _PYARROW or getattr(_S.local, "finding", False):
            return None
        _S.local.finding = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            _S.local.finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _WrappingLoader(spec.loader, _PYARROW[name])
        return spec


class _WrappingLoader:
    def __init__(self, loader, wrap):
        self.loader, self.wrap = loader, wrap

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.wrap()

    def __getattr__(self, name):   # resources, source, ...: the real loader's
        return getattr(self.loader, name)


def _install_pyarrow():
    for name, wrap in _PYARROW.items():
        if name in sys.modules:
            wrap()
    if not any(isinstance(finder, _WrapOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WrapOnImport())


# --- switching -------------------------------------------------------------------------
def install_hooks() -> bool:
    """Install the audit hook (once per process) and the fsspec/pyarrow wrappers; False when disabled."""
    if os.environ.get(HOOK_ENV, "1") == "0":
        return False
    if not _S.installed:
        sys.addaudithook(_audit)
        _S.installed = True
    _install_fsspec()
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


def start_reads(skip=()) -> bool:
    """Note input files read in this process from now on; ``skip``: folders left out. False if disabled."""
    if not install_hooks():
        return False
    _install_pyarrow()
    if _S.on:   # already on (a worker in the kernel's process): keep what was noted
        _S.skip = tuple(sorted({*_S.skip, *_skip_roots(skip)}))
        return True
    _S.skip = _skip_roots(skip)
    _S.reads, _S.writes, _S.new_writes, _S.remote = {}, {}, {}, {}
    _S.on = True
    return True


def stop_reads() -> None:
    """Stop noting reads (what was noted stays until :func:`drain_reads`)."""
    _S.on = False


def reading() -> bool:
    """Whether reads are being noted in this process."""
    return _S.on


def drain_reads(hash_remote: bool = True) -> dict:
    """What this process read (and wrote) since the last call, hashed; forgotten afterwards.

    Returns
    -------
    dict
        ``inputs``: ``[{path, abspath, cwd, size, sha256, host, pid}]``;
        ``outputs``: files this process created or overwrote (``existed``), with their hash now;
        ``remote``: ``[{url, path, cwd, size, etag, version_id, sha256}]`` (``sha256`` only when
        the backend gives neither ETag nor version, and ``hash_remote``);
        ``problems``: ``[{path, abspath, problem}]``: files that vanished or changed between being
        read and being hashed (the recording cannot prove what was read).
    """
    reads, _S.reads = _S.reads, {}
    writes, _S.new_writes = _S.new_writes, {}
    remote, _S.remote = _S.remote, {}
    host, pid = socket.gethostname(), os.getpid()
    inputs, outputs, problems = [], [], []
    for absolute, note in reads.items():
        entry = {**note, "host": host, "pid": pid}
        if "sha256" not in note:
            try:
                st = os.stat(absolute)
            except OSError:
                problems.append({"path": note["path"], "abspath": absolute, "problem": "vanished after it was read"})
                continue
            if (st.st_size, st.st_mtime_ns) != (note["size"], note["mtime_ns"]):
                problems.append({"path": note["path"], "abspath": absolute,
                                 "problem": "changed after it was read, before it was hashed"})
                continue
            entry["sha256"] = file_sha256(absolute, st)
        entry.pop("mtime_ns", None)
        inputs.append(entry)
    for absolute, note in writes.items():
        entry = {**note, "host": host, "pid": pid}
        try:
            st = os.stat(absolute)
            if stat.S_ISREG(st.st_mode):
                entry.update(size=st.st_size, sha256=file_sha256(absolute, st))
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
    return {"inputs": inputs, "outputs": outputs, "remote": remotes, "problems": problems}


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

    def __init__(self, recording=False, skip=()):
        self.recording = recording
        self.skip = tuple(skip)

    def setup(self, worker):
        install_hooks()
        if self.recording:
            start_reads(skip=(*self.skip, getattr(worker, "local_directory", None) or ""))
        else:
            stop_reads()

    def teardown(self, worker):
        pass   # the next registration decides; a replaced plugin must not switch reads off
