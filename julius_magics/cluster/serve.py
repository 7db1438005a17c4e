"""Serving recorded input files on replay, in the process that reads them.

A replay may run on another machine, from another folder, on workers that
cannot see the kernel's disk.  For every recorded input, each worker (and the
kernel) checks its own view: the file at its recorded absolute path, or, for a
relative path, at the recorded working directory joined with it.  A file that
is missing or changed there is served from the recording: the kernel copies
the blob (verified, streamed) into ``~/.julius/cache`` of its host, named by
its SHA-256, and pushes it through Dask to one worker per host whose workers do
not see that copy (another host); an opener patched into every process
(``open``, ``io.open``, ``os.open``, fsspec's local files, and the ``open`` that
NumPy's text readers and ``bz2`` took at their import: :data:`HELD_OPENS`) then reads the copy
instead, ``sqlite3.connect`` opens a private copy of a recorded database, with its
recorded write-ahead log (SQLite writes its journal even to read), and the libraries that open files in C (pyarrow, HDF5, netCDF4)
are steered alike (:mod:`.native`; a folder pyarrow reads becomes a folder of links to the recorded
files; a file opened to update is a sandboxed copy of what the recording read); ``os.stat`` sees the
served files too (pandas' ``read_hdf`` checks that its file exists).  Relative paths resolve
against the recorded working directory, so a replay from any folder reads what
the recording read.

Replay never writes into the user's files: :func:`install_output_sandbox`
(:class:`OutputSandbox` on workers) sends writes of the recorded outputs, and of
any relative path, into a per-replay folder; :func:`compare_outputs` hashes what
landed there against the recorded hashes.

Kernel-facing API::

    plan = check_inputs(client, files)          # {abspath: {worker or "kernel": status}}
    served = serve_inputs(client, files, read_blob, embedded=True, copy_blob=recording.blob_to_file)
    # -> [{"path", "abspath", "status", "where"}]; DataChangedError when a file
    #    changed or is missing and the recording holds only its hash

    use_versions({abspath: entry}); client.register_plugin(ServedVersions(chosen))   # a file in several
    #    versions (cells rewrote it between graphs): reads get this one from now on
    client.register_plugin(OutputSandbox(outputs, folder)); install_output_sandbox(outputs, folder)
    compare_outputs(client, outputs)            # [{"path", "sandbox", "recorded", "replayed", "same"}]
    stop_serving([client])                      # the replay is over: own files again, here and there

``files`` are recorded input entries: ``{"path", "abspath", "cwd", "size", "sha256"}``.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import json
import os
import pathlib
import shutil
import socket
import sqlite3
import tempfile
import threading
import urllib.parse

from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import DataChangedError
from . import native
from .inputs import database_path, file_sha256, output_content

__all__ = ["cache_dir", "file_status", "check_inputs", "serve_inputs", "ServeInputs", "install_redirect",
           "resolve", "remote_status", "serve_remote", "install_remote_redirect", "ServeRemote", "sandboxed",
           "install_output_sandbox", "compare_outputs", "recorded_fingerprint", "OutputSandbox", "written_by_a_task", "stop_serving",
           "use_versions", "ServedVersions"]

_REDIRECT = {"files": {}, "relative": {}, "ordered": [], "choice": {}, "folders": {}, "installed": False,
             "remote": {}, "remote_installed": False, "databases": {}, "databases_dir": None,
             "versions": {}}   # abspath -> the recorded version reads get now (:func:`use_versions`)
_lock = threading.RLock()


def cache_dir() -> str:
    """``~/.julius/cache`` of this host: served copies, named by their SHA-256."""
    path = os.path.join(os.path.expanduser("~"), ".julius", "cache")
    os.makedirs(path, exist_ok=True)
    return path


def _candidates(entry) -> list[str]:
    """Where this process may find a recorded file: its absolute path, or the recorded cwd joined."""
    path = entry["path"]
    if os.path.isabs(path):
        return [entry["abspath"]]
    return list(dict.fromkeys([entry["abspath"], os.path.join(entry["cwd"], path)]))


def file_status(entry) -> str:
    """``"unchanged"``, ``"changed"`` or ``"missing"`` for a recorded input, in this process's view."""
    status = "missing"
    for candidate in _candidates(entry):
        try:
            st = _raw_stat(candidate)
        except OSError:
            continue
        if st.st_size == entry["size"] and file_sha256(candidate, st) == entry["sha256"]:
            return "unchanged"
        status = "changed"
    return status


def _statuses(files) -> dict:
    return {"host": socket.gethostname(), "status": {f["abspath"]: file_status(f) for f in files}}


def check_inputs(client, files) -> dict:
    """``{abspath: {"kernel" | worker address: status}}`` of every recorded input, in each process's view."""
    views = {"kernel": _statuses(files)}
    if client is not None:
        views.update(client.run(_statuses, files))
    return {f["abspath"]: {who: view["status"][f["abspath"]] for who, view in views.items()} for f in files}


def serve_inputs(client, files, read_blob, embedded=True, progress=None, copy_blob=None) -> list[dict]:
    """Make every recorded input readable as recorded, in the kernel and on every worker.

    Parameters
    ----------
    client : distributed.Client or None
    files : list of dict
        Recorded inputs (``path, abspath, cwd, size, sha256``).
    read_blob : callable
        ``read_blob(sha256) -> bytes`` from the (verified) recording.
    embedded : bool or callable
        Whether the recording holds a file's bytes (``--data hash`` holds only hashes);
        a callable is asked per entry.
    progress : callable, optional
        ``progress(entry)`` for each file served.
    copy_blob : callable, optional
        ``copy_blob(sha256, path)`` writes a blob to a local file, streamed and verified before
        ``path`` appears (``Recording.blob_to_file``): the kernel's copy never sits whole in memory.

    Returns
    -------
    list of dict
        ``{"path", "abspath", "status", "where"}`` per file: ``status`` "unchanged" or
        "missing: served from recording" / "changed: served from recording"; ``where`` the
        processes that read the copy.

    Raises
    ------
    DataChangedError
        A file missing or changed somewhere, whose bytes the recording does not hold.
    """
    plan = check_inputs(client, files)
    hosts = client.run(socket.gethostname) if client is not None else {}
    here = socket.gethostname()
    report, todo = [], []
    for entry in files:
        views = plan[entry["abspath"]]
        bad = {who: status for who, status in views.items() if status != "unchanged"}
        holds = embedded(entry) if callable(embedded) else embedded
        if not bad:
            report.append({"path": entry["path"], "abspath": entry["abspath"], "status": "unchanged", "where": []})
            continue
        if not holds:
            who, status = sorted(bad.items())[0]
            raise DataChangedError(
                f"input file {entry['path']}"
                + (f" ({entry['abspath']})" if entry["abspath"] != entry["path"] else "") + f" is {status} "
                f"{'in the kernel' if who == 'kernel' else 'on worker ' + who} (recorded SHA-256 "
                f"{entry['sha256'][:16]}…) and the recording holds only its hash (--data hash): restore the file to replay")
        todo.append((entry, bad))
    # one copy in this host's cache, streamed from the recording when it can be: the kernel's, and
    # that of the workers here that see the same cache
    for entry, bad in todo:
        if "kernel" in bad or any(hosts.get(who) == here for who in bad):
            _kernel_copy(entry["sha256"], read_blob, copy_blob)
    shas = [entry["sha256"] for entry, _ in todo]
    sees = client.run(_have_copies, shas) if client is not None and todo else {}
    for entry, bad in todo:   # workers that do not see a copy get the bytes through Dask, once per host
        by_host = {}
        for who in bad:
            if who != "kernel" and not sees.get(who, {}).get(entry["sha256"]):
                by_host.setdefault(hosts.get(who), who)
        if by_host:
            [future] = client.scatter([read_blob(entry["sha256"])], workers=list(by_host.values()), hash=False)
            for worker in by_host.values():
                client.submit(_store_copy, entry["sha256"], future, workers=[worker], allow_other_workers=False,
                              pure=False).result()
            del future
        status = sorted(set(bad.values()))[0]
        report.append({"path": entry["path"], "abspath": entry["abspath"], "status": f"{status}: served from recording",
                       "where": sorted(bad)})
        if progress is not None:
            progress(entry)
    install_redirect(files)
    if client is not None:
        client.register_plugin(ServeInputs(files))
    return report


def _cached_copy(sha) -> str | None:
    """This host's served copy of blob ``sha``, if there is one and it still holds those bytes (hashed: a
    copy is named by its SHA-256, but a file of the cache can be changed like any other)."""
    copy = os.path.join(cache_dir(), sha)
    try:
        st = _raw_stat(copy)
    except OSError:
        return None
    return copy if file_sha256(copy, st) == sha else None


def _have_copies(shas) -> dict:
    """``{sha256: whether this process sees a served copy}``: workers sharing the kernel's cache need none sent."""
    return {sha: _cached_copy(sha) is not None for sha in shas}


def _kernel_copy(sha, read_blob, copy_blob=None) -> str:
    """Blob ``sha`` in this host's cache: streamed by ``copy_blob(sha, path)`` (verified), else from its bytes."""
    target = os.path.join(cache_dir(), sha)
    if _cached_copy(sha) is not None:
        return target
    if copy_blob is None:
        return _store_copy(sha, read_blob(sha))
    copy_blob(sha, target)
    return target


def _store_copy(sha, data) -> str:
    import hashlib

    if hashlib.sha256(data).hexdigest() != sha:
        raise DataChangedError(f"served copy {sha[:12]}… does not match its SHA-256")
    target = os.path.join(cache_dir(), sha)
    if _cached_copy(sha) is None:
        tmp = f"{target}.{os.getpid()}.tmp"
        with _raw_open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    return target


# --- the redirect ------------------------------------------------------------------------
_raw_open = builtins.open
_raw_os_open = os.open
_raw_sqlite_connect = sqlite3.connect
_resolving = threading.local()


def resolve(file):
    """The file to open for ``file``: itself, the recorded file its relative path meant, the served copy,
    or, for a recorded output this replay wrote already, its copy in the sandbox."""
    if isinstance(file, int) or not (_REDIRECT["files"] or _SANDBOX["dir"]):
        return file
    try:
        text = os.fsdecode(file)
    except TypeError:
        return file
    version = _chosen_version(text)
    if version is None:
        written, _ = _output_view(text)
        if written is not None and os.path.lexists(written):
            return written
    choice = _REDIRECT["choice"]   # text -> the file to open instead, or None: the caller's own (a str, bytes or Path)
    if text not in choice:
        if getattr(_resolving, "active", False):   # hashing a candidate opens it: that open is the candidate's own
            return file
        candidates = [version] if version is not None else _recorded_inputs(text)
        choice[text] = next((found for found in map(_guarded_readable, candidates) if found is not None), None)
    return file if choice[text] is None else choice[text]


def _chosen_version(text):
    """The recorded version of ``text`` that :func:`use_versions` chose, or None."""
    versions = _REDIRECT["versions"]
    if versions:
        for entry in _recorded_inputs(text):
            if entry["abspath"] in versions:
                return versions[entry["abspath"]]
    return None


def use_versions(chosen) -> None:
    """From now on, reads of each file of ``chosen`` (``{abspath: recorded input entry}``) get that version,
    over this replay's own output of it.

    For files the recording saw in several versions, because the kernel's cells rewrote them between
    graphs: a replay does not run the cells, so it serves each graph the version that was current
    when it was sent.
    """
    with _lock:
        _REDIRECT["versions"] = dict(chosen)
        _REDIRECT["choice"], _REDIRECT["folders"] = {}, {}


def _recorded_inputs(text) -> list[dict]:
    """The recorded inputs that the path ``text`` may mean, the likeliest first."""
    if not os.path.isabs(text) and text in _REDIRECT["relative"]:
        return _REDIRECT["relative"][text]
    entry = _REDIRECT["files"].get(os.path.abspath(text))
    return [entry] if entry else []


def _guarded_readable(entry):
    _resolving.active = True
    try:
        return _readable(entry)
    finally:
        _resolving.active = False


def _readable(entry):
    for candidate in _candidates(entry):
        try:
            st = _raw_stat(candidate)
        except OSError:
            continue
        if st.st_size == entry["size"] and file_sha256(candidate, st) == entry["sha256"]:
            return candidate
    return _cached_copy(entry["sha256"])


# modules that keep an ``open`` of their own, taken when they were imported: where they hold it
HELD_OPENS = {
    "numpy.lib._datasource": (lambda module: module._file_openers._file_openers, None),   # loadtxt, genfromtxt, savetxt
    "bz2": (vars, "_builtin_open"),                                                     # bz2.open
}


def _steer_held_open(module):
    """Make ``module``'s own ``open`` the patched one, if it took Python's (imported before the patch)."""
    holder, key = HELD_OPENS[module.__name__]
    held = holder(module)
    if held.get(key) is _raw_open:
        held[key] = _open


def _open(file, *args, **kwargs):
    mode = args[0] if args else kwargs.get("mode", "r")
    if isinstance(mode, str) and any(c in mode for c in "wax+"):   # a write: never into a served copy
        if not _SANDBOX["dir"]:
            return _raw_open(file, *args, **kwargs)
        return _raw_open(_sandboxed_copy(file) if "r" in mode else sandboxed(file), *args, **kwargs)
    return _raw_open(resolve(file), *args, **kwargs)


def _steer_native(path, access):
    """What a library that opens files in C opens for ``path``: a sandboxed output (a copy of what the
    recording read, to update), or what the recording read, under its own name."""
    if access == native.UPDATE:
        return _sandboxed_copy(path)
    if access != native.READ:
        return sandboxed(path, folder=access == native.WRITE_FOLDER)
    target = resolve(path)
    if target == path:   # in place, or not a recorded file: perhaps a folder holding some
        return _served_folder(path)
    if os.path.dirname(target) != cache_dir():
        return target
    # a served copy is named by its SHA-256: pyarrow reads a file's kind (``.csv.gz``) from its name
    named = os.path.join(cache_dir(), "named", os.path.basename(target), os.path.basename(path))
    if not os.path.lexists(named):
        _raw_makedirs(os.path.dirname(named), exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.symlink(target, named)
    return named


def _served_folder(text):
    """The folder to read for ``text``: itself, or a folder of links to what the recording read under it.

    A dataset of a folder reads every file in it.  When the recorded files under it are all
    in place, under one folder, that folder is read; else a folder of links under their
    recorded names (so hive partitions keep their names), made once per host and content.
    """
    if text in _REDIRECT["folders"]:
        return _REDIRECT["folders"][text]
    inside = {}
    for entry in _REDIRECT["ordered"]:
        base = os.path.normpath(text if os.path.isabs(text) else os.path.join(entry["cwd"], text))
        if entry["abspath"].startswith(os.path.join(base, "")):
            inside.setdefault(os.path.relpath(entry["abspath"], base), (base, entry))
    links, in_place = {}, set()
    for relative, (base, entry) in inside.items():
        found = _guarded_readable(entry)
        if found is not None:
            links[relative] = found
            in_place.add(base if found == os.path.join(base, relative) else None)
    if not links:
        target = text
    elif len(in_place) == 1 and None not in in_place:
        target = in_place.pop()
    else:
        target = _link_folder(links)
    _REDIRECT["folders"][text] = target
    return target


def _link_folder(links):
    """``{relative path: file}`` as a folder of links under ``~/.julius/cache/folders``, named by its content."""
    name = hashlib.sha256(json.dumps(sorted(links.items())).encode()).hexdigest()[:32]
    folder = os.path.join(cache_dir(), "folders", name)
    if not os.path.isdir(folder):
        _raw_makedirs(os.path.dirname(folder), exist_ok=True)
        building = tempfile.mkdtemp(prefix=".building-", dir=os.path.dirname(folder))
        for relative, target in links.items():
            link = os.path.join(building, relative)
            _raw_makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(target, link)
        try:
            os.rename(building, folder)   # whole or not at all: another process may have made it first
        except OSError:
            shutil.rmtree(building, ignore_errors=True)
    return folder


def _os_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):   # never into a served copy
        return _raw_os_open(sandboxed(path) if _SANDBOX["dir"] else path, flags, *args, **kwargs)
    return _raw_os_open(resolve(path), flags, *args, **kwargs)


def _sqlite_connect(database, *args, **kwargs):
    path = database_path(database)
    target = path if path is None else _database(path)
    if target != path:
        text = os.fsdecode(database)
        query = urllib.parse.urlsplit(text).query if text.startswith("file:") else None
        database = target if query is None else f"file:{urllib.parse.quote(target)}" + (f"?{query}" if query else "")
    return _raw_sqlite_connect(database, *args, **kwargs)


def _database(path):
    """The file SQLite opens for database ``path``: a recorded input as a private copy of what the
    recording read (SQLite writes even beside a read: a served copy and the user's file stay as they
    are), an output in the sandbox, or ``path`` itself."""
    if not _recorded_inputs(path):
        return sandboxed(path)
    source = resolve(path)
    with _lock:
        copy = _REDIRECT["databases"].get(source)
        if copy is None:
            if _REDIRECT["databases_dir"] is None:
                _REDIRECT["databases_dir"] = tempfile.mkdtemp(prefix="julius-databases-")
            copy = os.path.join(_REDIRECT["databases_dir"], str(len(_REDIRECT["databases"])), os.path.basename(path))
            _raw_makedirs(os.path.dirname(copy))
            shutil.copyfile(source, copy)
            if _recorded_inputs(f"{path}-wal"):   # its write-ahead log as it was: SQLite reads it beside the copy
                shutil.copyfile(resolve(f"{path}-wal"), f"{copy}-wal")
            _REDIRECT["databases"][source] = copy
    return copy


# --- outputs go to a sandbox ---------------------------------------------------------------
# outputs: abspath -> entry; dirs: their folders (a new file there is an output too); folders: those
# folders and their parents (folders a graph makes on the way); relative: relative output paths and
# their relative folders -> the absolute path they meant when recorded
_SANDBOX = {"dir": None, "outputs": {}, "dirs": set(), "folders": set(), "relative": {}, "patched": False}


def _in_sandbox(absolute):
    return os.path.join(_SANDBOX["dir"], absolute.lstrip(os.sep))


def sandboxed(file, folder=False):
    """Where a replay writes ``file`` (or makes the folder ``file``, with ``folder``).

    Recorded outputs, new files in their folders, those folders and their parents, and any
    relative path go into the sandbox; anything else (a temporary file) is left alone.
    """
    if isinstance(file, int) or not _SANDBOX["dir"]:
        return file
    try:
        text = os.fsdecode(file)
    except TypeError:
        return file
    if os.path.abspath(text).startswith(os.path.join(_SANDBOX["dir"], "")):
        return file
    if not os.path.isabs(text):
        absolute = _SANDBOX["relative"].get(os.path.normpath(text)) or os.path.join(_SANDBOX["dir"], "cwd", text)
    else:
        absolute = os.path.abspath(text)
        known = (absolute in _SANDBOX["folders"]) if folder else (
            absolute in _SANDBOX["outputs"] or os.path.dirname(absolute) in _SANDBOX["dirs"])
        if not known:
            return file   # not something the recording wrote (a temporary file): left alone
    target = _in_sandbox(absolute)
    _raw_makedirs(os.path.dirname(target), exist_ok=True)
    return target


def _output_view(text):
    """Where this replay keeps what the recording wrote at ``text``: ``(its place in the sandbox, whether
    it is a folder)`` for an output a task wrote or a folder outputs were written in; else ``(None, False)``.
    An output that existed before the recording is not one here: its earlier version is an input."""
    if not _SANDBOX["dir"]:
        return None, False
    absolute = os.path.normpath(text) if os.path.isabs(text) else _SANDBOX["relative"].get(os.path.normpath(text))
    if absolute is None:
        return None, False
    if absolute in _SANDBOX["dirs"]:
        return _in_sandbox(absolute), True
    output = _SANDBOX["outputs"].get(absolute)
    if output is not None and not output.get("existed") and written_by_a_task(output):
        return _in_sandbox(absolute), False
    return None, False


def written_by_a_task(output) -> bool:
    """Whether a recorded output was written by a task (on a worker, or in the kernel's threads cluster),
    which a replay runs again, not by the kernel's own code, which it does not."""
    return output.get("reader") != "kernel" or bool(output.get("in_task"))


def _stat(path, *args, **kwargs):
    """``os.stat`` that sees what this replay's opens see: the sandbox for the recorded outputs and their
    folders (pandas checks that an output's folder exists before it writes; code may skip work whose
    output exists), and the served copy of a recorded input (pandas' ``read_hdf`` checks that its file
    exists before it opens it)."""
    if args or kwargs.get("dir_fd") is not None or isinstance(path, int):
        return _raw_stat(path, *args, **kwargs)
    try:
        written, folder = _output_view(os.fsdecode(path))
    except TypeError:
        return _raw_stat(path, **kwargs)
    if written is not None:
        if folder and not os.path.lexists(written):
            # a folder the recording wrote in existed then: it does in the sandbox, from the first look
            # (not made beforehand: write_dataset wants its folder empty, subfolders included)
            _raw_makedirs(written, exist_ok=True)
        return _raw_stat(written, **kwargs)
    return _raw_stat(resolve(path), **kwargs)


def _sandboxed_copy(file):
    """Where a replay updates ``file`` in place (HDF5's ``"a"``, ``"r+"``): in the sandbox, starting as
    a copy of what the recording read there, if it read it."""
    target = sandboxed(file)
    if target is not file and not os.path.lexists(target) and _recorded_inputs(os.fsdecode(file)):
        source = resolve(file)
        if os.path.isfile(source):
            shutil.copyfile(source, target)
    return target


def install_output_sandbox(outputs, folder) -> None:
    """Writes of the recorded ``outputs`` (and of any relative path) go under ``folder`` in this process.

    So do the folders they are written in, made by ``os.mkdir``, ``os.makedirs``,
    ``pathlib.Path.mkdir`` or fsspec.  ``outputs`` are recorded output entries
    (``path, abspath, cwd``); ``None`` for ``folder`` switches the sandbox off.
    """
    with _lock:
        _SANDBOX["dir"] = os.path.abspath(folder) if folder else None
        # a file a task wrote and a cell rewrote has an entry of each: the task's is the one replayed
        _SANDBOX["outputs"] = {o["abspath"]: o for o in sorted(outputs, key=written_by_a_task)}
        _SANDBOX["dirs"] = {os.path.dirname(o["abspath"]) for o in outputs}
        _SANDBOX["folders"] = {parent for d in _SANDBOX["dirs"] for parent in _parents(d)}
        relative = {}
        for o in outputs:
            path = o["path"]
            if os.path.isabs(path) and o.get("cwd"):   # written as absolute (dask expands globs), read as relative
                path = os.path.relpath(o["abspath"], o["cwd"])
            if not os.path.isabs(path) and not path.startswith(os.pardir):
                path, absolute = os.path.normpath(path), o["abspath"]
                while path and path != os.curdir:   # the file, then each folder it is in
                    relative.setdefault(path, absolute)
                    path, absolute = os.path.dirname(path), os.path.dirname(absolute)
        _SANDBOX["relative"] = relative
        if not _REDIRECT["installed"]:
            install_redirect([])
        if not _SANDBOX["patched"]:   # fsspec's local mkdir/makedirs call these too
            os.mkdir, os.makedirs, pathlib.Path.mkdir = _mkdir, _makedirs, _path_mkdir
            _SANDBOX["patched"] = True


def _parents(folder):
    """``folder`` and the folders above it, short of the root."""
    while os.path.dirname(folder) != folder:
        yield folder
        folder = os.path.dirname(folder)


_raw_mkdir, _raw_makedirs, _raw_path_mkdir, _raw_stat = os.mkdir, os.makedirs, pathlib.Path.mkdir, os.stat


def _mkdir(path, *args, **kwargs):
    return _raw_mkdir(sandboxed(path, folder=True), *args, **kwargs)


def _makedirs(name, *args, **kwargs):
    # os.makedirs makes missing parents by calling os.mkdir and itself: those are in the sandbox already
    return _raw_makedirs(sandboxed(name, folder=True), *args, **kwargs)


def _path_mkdir(self, *args, **kwargs):
    target = sandboxed(self, folder=True)
    # the sandbox's own Path: its exist_ok check (is_dir) looks there too
    return _raw_path_mkdir(self if target is self else type(self)(target), *args, **kwargs)


def recorded_fingerprint(output) -> str | None:
    """What a recorded output is compared by: its content's fingerprint where its format stamps the
    time it was written (gzip, zip, HDF5), else its SHA-256."""
    return output.get("content") or output.get("sha256")


def _sandbox_hashes(outputs):
    found = {}
    for o in outputs:
        target = _in_sandbox(o["abspath"]) if _SANDBOX["dir"] else None
        if target and os.path.isfile(target):
            found[o["abspath"]] = (target, output_content(target) if o.get("content") else file_sha256(target))
    return found


def compare_outputs(client, outputs) -> list[dict]:
    """Each recorded output as the replay wrote it in the sandbox: ``{path, sandbox, recorded, replayed, same}``."""
    seen = dict(_sandbox_hashes(outputs))
    if client is not None:
        for found in client.run(_sandbox_hashes, outputs).values():
            for absolute, value in found.items():
                seen.setdefault(absolute, value)
    report = []
    for o in outputs:
        where, sha = seen.get(o["abspath"], (None, None))
        report.append({"path": o["path"], "abspath": o["abspath"], "sandbox": where, "recorded": recorded_fingerprint(o),
                       "replayed": sha, "same": sha is not None and sha == recorded_fingerprint(o)})
    return report


class OutputSandbox(WorkerPlugin):
    """Worker plugin: :func:`install_output_sandbox` in each worker."""

    name = "julius-output-sandbox"

    def __init__(self, outputs, folder):
        self.outputs, self.folder = list(outputs), folder

    def setup(self, worker):
        install_output_sandbox(self.outputs, self.folder)


def install_redirect(files, worker=False) -> None:
    """Serve ``files`` in this process: opens of their recorded paths read what was recorded.

    A relative path recorded for several files (the kernel and the workers read it in
    other folders) means first the one that the same kind of reader read: a worker's
    ``x.txt`` is the one a worker read.
    """
    with _lock:
        _REDIRECT["files"] = {f["abspath"]: f for f in files}
        relative = {}
        same_kind_first = sorted(files, key=lambda f: (f.get("reader") == "kernel") == worker)
        for f in same_kind_first:
            if not os.path.isabs(f["path"]):
                relative.setdefault(f["path"], []).append(f)
        _REDIRECT["relative"], _REDIRECT["ordered"] = relative, same_kind_first
        _REDIRECT["choice"], _REDIRECT["folders"], _REDIRECT["versions"] = {}, {}, {}
        if _REDIRECT["databases_dir"] is not None:   # the last replay's private copies
            shutil.rmtree(_REDIRECT["databases_dir"], ignore_errors=True)
        _REDIRECT["databases"], _REDIRECT["databases_dir"] = {}, None
        if not _REDIRECT["installed"]:
            _open.__doc__ = _raw_open.__doc__
            builtins.open = io.open = _open
            for name in HELD_OPENS:
                native.after_import(name, _steer_held_open)
            os.open = _os_open
            sqlite3.connect = sqlite3.dbapi2.connect = _sqlite_connect
            _patch_fsspec()
            os.stat = _stat
            native.install(steer=_steer_native)
            _REDIRECT["installed"] = True


def _patch_fsspec():
    try:
        from fsspec.implementations.local import LocalFileSystem
    except ImportError:
        return
    for name in ("_open", "info"):
        original = getattr(LocalFileSystem, name)

        def wrapper(self, path, *args, __original=original, __name=name, **kwargs):
            mode = args[0] if args else kwargs.get("mode", "rb")
            if __name == "_open" and any(c in mode for c in "wax+"):   # a write goes to the sandbox, never to
                return __original(self, path, *args, **kwargs)       # a served copy (the opener sandboxes it)
            stripped = self._strip_protocol(path)
            resolved = resolve(stripped)
            return __original(self, resolved if resolved is not stripped else path, *args, **kwargs)

        setattr(LocalFileSystem, name, wrapper)


# --- remote inputs ----------------------------------------------------------------------
def remote_status(entry, **storage_options) -> str:
    """``"unchanged"``, ``"changed"`` or ``"missing"`` for a recorded remote input (ETag, version, or hash)."""
    import hashlib

    import fsspec

    fs, path = fsspec.core.url_to_fs(entry["url"], **storage_options)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return "missing"
    if entry.get("version_id"):
        same = (info.get("VersionId") or info.get("version_id")) == entry["version_id"]
    elif entry.get("etag"):
        same = (info.get("ETag") or info.get("etag")) == entry["etag"]
    else:
        same = hashlib.sha256(fs.cat_file(path)).hexdigest() == entry.get("sha256")
    return "unchanged" if same and info.get("size", entry.get("size")) == entry.get("size") else "changed"


def serve_remote(client, entries, read_blob=None, storage_options=None) -> list[dict]:
    """Check recorded remote inputs; serve the embedded ones that changed (``--data embed-remote``).

    An entry holds its bytes when it has ``blob`` (the SHA-256 of the embedded copy).

    Raises
    ------
    DataChangedError
        A remote input changed or vanished and the recording does not hold it, named by URL.
    """
    report, served = [], {}
    for entry in entries:
        try:
            status = remote_status(entry, **(storage_options or {}))
        except Exception as error:   # no credentials or no route here: served if embedded, else the reader says
            status = f"unreadable here ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            if not entry.get("blob") or read_blob is None:
                report.append({"path": entry["url"], "abspath": entry["url"], "status": f"not checked: {status}",
                               "where": []})
                continue
        if status == "unchanged":
            report.append({"path": entry["url"], "abspath": entry["url"], "status": status, "where": []})
            continue
        if not entry.get("blob") or read_blob is None:
            raise DataChangedError(
                f"remote input {entry['url']} is {status} (recorded "
                + (f"ETag {entry['etag']}" if entry.get("etag") else f"version {entry.get('version_id') or '?'}")
                + "); the recording holds only its identity: record with --data embed-remote to replay it")
        data = read_blob(entry["blob"])
        _store_copy(entry["blob"], data)
        if client is not None:
            hosts = {}
            for worker, host in client.run(socket.gethostname).items():
                hosts.setdefault(host, worker)
            [future] = client.scatter([data], workers=list(hosts.values()), hash=False)
            for worker in hosts.values():
                client.submit(_store_copy, entry["blob"], future, workers=[worker], allow_other_workers=False,
                              pure=False).result()
            del future
        served[entry["url"]] = entry["blob"]
        report.append({"path": entry["url"], "abspath": entry["url"], "status": f"{status}: served from recording",
                       "where": ["kernel", "workers"]})
    if served:
        install_remote_redirect(served)
        if client is not None:
            client.register_plugin(ServeRemote(served))
    return report


def install_remote_redirect(served) -> None:
    """Opens of these URLs (fsspec) read the served copies: ``{url: sha256}``."""
    from fsspec.spec import AbstractFileSystem

    _REDIRECT["remote"] = dict(served)
    if _REDIRECT["remote_installed"]:
        return
    original = AbstractFileSystem.open

    def open(self, path, mode="rb", *args, **kwargs):
        if _REDIRECT["remote"] and "r" in mode:
            try:
                url = self.unstrip_protocol(self._strip_protocol(path))
            except Exception:
                url = None
            sha = _REDIRECT["remote"].get(url)
            if sha is not None:
                return _raw_open(os.path.join(cache_dir(), sha), "rb" if "b" in mode else "r")
        return original(self, path, mode, *args, **kwargs)

    open.__doc__ = original.__doc__
    AbstractFileSystem.open = open
    _REDIRECT["remote_installed"] = True


def stop_serving(clients=()) -> None:
    """The replay is over: this process (and the workers of ``clients``, a cluster the replay hands
    on) read and write their own files again, with no served copies and no sandbox."""
    with _lock:
        install_output_sandbox([], None)
        install_redirect([])
        _REDIRECT["remote"] = {}
    for client in clients:
        for plugin in (OutputSandbox([], None), ServeInputs([]), ServedVersions({}), ServeRemote({})):   # the replay's go
            with contextlib.suppress(Exception):
                client.register_plugin(plugin)


class ServeInputs(WorkerPlugin):
    """Worker plugin: the redirect of :func:`install_redirect`, in each worker (joining ones too)."""

    name = "julius-serve-inputs"

    def __init__(self, files):
        self.files = list(files)

    def setup(self, worker):
        install_redirect(self.files, worker=True)


class ServedVersions(WorkerPlugin):
    """Worker plugin: :func:`use_versions` in each worker (joining ones too); registered again at each change."""

    name = "julius-served-versions"

    def __init__(self, chosen):
        self.chosen = dict(chosen)

    def setup(self, worker):
        use_versions(self.chosen)


class ServeRemote(WorkerPlugin):
    """Worker plugin: the redirect of :func:`install_remote_redirect`."""

    name = "julius-serve-remote"

    def __init__(self, served):
        self.served = dict(served)

    def setup(self, worker):
        install_remote_redirect(self.served)
