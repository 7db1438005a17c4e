"""Libraries that open local files in C, seen by capture and steered by replay.

pyarrow (Arrow's C++ filesystem), HDF5 (h5py, and PyTables, which pandas' ``read_hdf``
and ``to_hdf`` use) and netCDF4 open their files in C: no audit event fires and no
patched ``open`` is called.  So their public entry points that take a local path
(:data:`ENTRY_POINTS`) are wrapped, in each process that imports them (importing
``pyarrow.dataset`` takes seconds: a worker that never reads Arrow files never
pays for it), and every local path they are given goes through this process's
two hooks:

- ``steer(path, access) -> path``, set by replay (:mod:`.serve`): the file or
  folder to open instead, a served copy of an input or a sandboxed output;
- ``note(path, reading, writing)``, set by capture (:mod:`.inputs`): each file read
  or written, a folder's files as pyarrow found them (``dataset.files``,
  ``write_dataset``'s ``file_visitor``).

``access`` is :data:`READ`, :data:`WRITE`, :data:`WRITE_FOLDER` or :data:`UPDATE`
(read and written in place: HDF5's ``"a"`` and ``"r+"``, the mode pandas' ``HDFStore``
opens by default), for an entry point whose mode says it, by its mode.

A path is local when it is a ``str`` or ``os.PathLike`` without ``://`` and the
``filesystem`` given is none, pyarrow's ``LocalFileSystem`` or fsspec's (which
pyarrow swaps for its own).  File objects, buffers and remote filesystems are
left alone: they are opened through Python, where the other doors see them.
A Cython class has no signature to read: :data:`SIGNATURES` holds the ones
wrapped.  A wrapped entry point whose arguments do not bind is called as it is, unseen.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import threading

__all__ = ["install", "after_import", "ENTRY_POINTS", "READ", "WRITE", "WRITE_FOLDER", "UPDATE"]

READ, WRITE, WRITE_FOLDER, UPDATE, BY_MODE = "read", "write", "write folder", "update", "by its mode"

# module -> [(object, argument, what it does with the path)]; an object is a function of the
# module or a class, whose __init__ is wrapped (a Cython class, which cannot be changed, is
# replaced in the module by a subclass that steers its construction: ``pa.OSFile``, which
# pandas writes Parquet through, and ``netCDF4.Dataset``, which xarray opens)
ENTRY_POINTS = {
    "pyarrow": [("OSFile", "path", BY_MODE), ("memory_map", "path", BY_MODE), ("input_stream", "source", READ),
                ("output_stream", "source", WRITE)],
    "pyarrow.dataset": [("dataset", "source", READ), ("write_dataset", "base_dir", WRITE_FOLDER)],
    "pyarrow.parquet": [("ParquetFile", "source", READ), ("ParquetDataset", "path_or_paths", READ),
                        ("ParquetWriter", "where", WRITE)],
    "pyarrow.csv": [("read_csv", "input_file", READ), ("open_csv", "input_file", READ),
                    ("write_csv", "output_file", WRITE)],
    "pyarrow.json": [("read_json", "input_file", READ)],
    "pyarrow.feather": [("read_table", "source", READ), ("read_feather", "source", READ),
                        ("write_feather", "dest", WRITE)],
    "pyarrow.orc": [("ORCFile", "source", READ), ("ORCWriter", "where", WRITE)],
    "h5py": [("File", "name", BY_MODE)],
    "tables": [("open_file", "filename", BY_MODE)],
    "netCDF4": [("Dataset", "filename", BY_MODE)],
}


def _parameters(*names_and_defaults):
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(name, kind, **({"default": d[0]} if d else {}))
                              for name, *d in names_and_defaults] +
                             [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


# the constructors of the Cython classes wrapped, which have no signature to read (their first
# arguments; the rest pass through as keywords)
SIGNATURES = {
    ("pyarrow", "OSFile"): _parameters(("path",), ("mode", "r"), ("memory_pool", None)),
    ("netCDF4", "Dataset"): _parameters(("filename",), ("mode", "r"), ("clobber", True), ("format", "NETCDF4")),
}


def access_of(mode) -> str:
    """What opening a file in ``mode`` does to it: ``"r"``/``"rb"`` read, ``"w"``/``"x"``/``"w-"`` write,
    ``"a"``/``"r+"`` update (the file's earlier content stays part of it)."""
    mode = mode or "r"
    if "+" in mode or "a" in mode:
        return UPDATE
    return READ if mode.startswith("r") else WRITE


class _Hooks:
    steer = None
    note = None
    local = threading.local()   # inside a wrapped call: the inner ones (dataset in ParquetDataset) pass


def install(steer=None, note=None) -> None:
    """Set this process's hook(s) and wrap the entry points, now or when their module is imported."""
    if steer is not None:
        _Hooks.steer = steer
    if note is not None:
        _Hooks.note = note
    for name in ENTRY_POINTS:
        after_import(name, _wrap_module)


_AFTER_IMPORT: dict = {}   # module name -> the functions called with it once it is imported


def after_import(name, function) -> None:
    """Call ``function(module)`` once the module ``name`` is imported: now if it is, else right after
    it is (an import hook), so that a process that never imports it never pays for importing it.
    ``function`` must be idempotent: it may be called again for a module it saw."""
    functions = _AFTER_IMPORT.setdefault(name, [])
    if function not in functions:
        functions.append(function)
    if name in sys.modules:
        function(sys.modules[name])
    if not any(isinstance(finder, _WrapOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WrapOnImport())


# --- which paths are local ---------------------------------------------------------------
def _local_filesystem(filesystem) -> bool:
    if filesystem is None:
        return True
    kind = type(filesystem)
    return (kind.__module__, kind.__name__) in {("pyarrow._fs", "LocalFileSystem"),
                                                ("fsspec.implementations.local", "LocalFileSystem")}


def _local_path(value):
    """``value`` as a local path string, or None (a file object, a buffer, a URI)."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if isinstance(text, str) and "://" not in text:
            return text
    return None


def _steered(value, access):
    """``value`` (a path, or a list of them) with each local path steered."""
    if isinstance(value, (list, tuple)):
        return type(value)(_steered(v, access) for v in value)
    text = _local_path(value)
    if text is None or _Hooks.steer is None:
        return value
    target = _Hooks.steer(text, access)
    return value if target == text else target


def _noted(value, reading, writing):
    for v in value if isinstance(value, (list, tuple)) else [value]:
        text = _local_path(v)
        if text is not None and not os.path.isdir(text):
            _Hooks.note(text, reading, writing)


def _note_dataset(dataset, source):
    """The files a dataset found on the local filesystem, each as the code wrote it where it named it."""
    try:
        if not _local_filesystem(dataset.filesystem):
            return
        files = list(dataset.files)
    except AttributeError:   # not a file system dataset (in memory)
        return
    written = _local_path(source)
    for f in files:
        same = written is not None and len(files) == 1 and os.path.abspath(written) == os.path.abspath(f)
        _Hooks.note(written if same else f, True, False)


# --- the wrappers ------------------------------------------------------------------------
def _wrapper(original, argument, action, is_init, signature=None):
    signature = signature or inspect.signature(original)

    def wrapper(*args, **kwargs):
        if getattr(_Hooks.local, "inside", False):
            return original(*args, **kwargs)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:   # the original says what is wrong
            return original(*args, **kwargs)
        arguments = bound.arguments
        if argument not in arguments or not _local_filesystem(arguments.get("filesystem")):
            return original(*args, **kwargs)
        given = arguments[argument]
        access = access_of(arguments.get("mode")) if action == BY_MODE else action
        if _Hooks.note is not None:
            if access == WRITE_FOLDER:
                _chain_file_visitor(arguments)
            elif access != READ or not (isinstance(given, (list, tuple)) or _is_folder(given)):
                _noted(given, access != WRITE, access != READ)   # a folder read: the files the dataset found
        arguments[argument] = _steered(given, access)
        _Hooks.local.inside = True
        try:
            result = original(*bound.args, **bound.kwargs)
        finally:
            _Hooks.local.inside = False
        if _Hooks.note is not None and access == READ:
            _note_dataset(getattr(args[0], "_dataset", None) if is_init else result, given)
        return result

    wrapper.__julius_original__ = original
    wrapper.__doc__, wrapper.__name__, wrapper.__qualname__ = original.__doc__, original.__name__, original.__qualname__
    return wrapper


def _is_folder(value) -> bool:
    text = _local_path(value)
    return text is not None and os.path.isdir(text)


def _chain_file_visitor(arguments):
    """``write_dataset``'s files are noted as pyarrow writes them, and the user's visitor still called."""
    theirs = arguments.get("file_visitor")

    def visitor(written_file):
        _Hooks.note(written_file.path, False, True)
        if theirs is not None:
            theirs(written_file)

    arguments["file_visitor"] = visitor


def _wrap_module(module):
    for name, argument, action in ENTRY_POINTS[module.__name__]:
        owner = getattr(module, name, None)
        if owner is None or getattr(owner, "__julius_original__", None):
            continue
        signature = SIGNATURES.get((module.__name__, name))
        if not isinstance(owner, type):
            setattr(module, name, _wrapper(owner, argument, action, False))
        elif signature is not None:   # a Cython class: its __init__ cannot be set
            setattr(module, name, _steering_subclass(owner, argument, action, signature))
        elif not getattr(owner.__init__, "__julius_original__", None):
            owner.__init__ = _wrapper(owner.__init__, argument, action, True)


def _steering_subclass(cython_class, argument, action, signature):
    """``cython_class`` under its own name, constructed through the hooks (its instances are its instances).

    Cython runs ``__cinit__`` in ``__new__`` (pyarrow opens there), then ``__init__`` (netCDF4
    opens there): each is given the steered arguments (steering is the same twice; nothing is
    kept on the instance, whose class may own ``__setattr__``: netCDF4's writes file attributes).
    """
    steer = _wrapper(lambda *args, **kwargs: (args, kwargs), argument, action, False, signature)

    def __new__(cls, *args, **kwargs):
        args, kwargs = steer(*args, **kwargs)
        return cython_class.__new__(cls, *args, **kwargs)

    def __init__(self, *args, **kwargs):
        if cython_class.__init__ is not object.__init__:
            args, kwargs = steer(*args, **kwargs)
            cython_class.__init__(self, *args, **kwargs)

    return type(cython_class.__name__, (cython_class,), {
        "__new__": __new__, "__init__": __init__, "__doc__": cython_class.__doc__,
        "__module__": cython_class.__module__, "__qualname__": cython_class.__qualname__,
        "__julius_original__": cython_class})


class _WrapOnImport:
    """A meta path finder: the module's own loader, then the functions :func:`after_import` gave."""

    finding = threading.local()

    def find_spec(self, name, path=None, target=None):
        if name not in _AFTER_IMPORT or getattr(self.finding, "active", False):
            return None
        self.finding.active = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.finding.active = False
        if spec is not None and spec.loader is not None:
            spec.loader = _WrappingLoader(spec.loader)
        return spec


class _WrappingLoader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        for function in _AFTER_IMPORT[module.__name__]:
            function(module)

    def __getattr__(self, name):   # resources, source, ...: the real loader's
        return getattr(self.loader, name)
