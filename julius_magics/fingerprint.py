"""Value fingerprints: a SHA-256 of a canonical serialization of a value.

Equal values have equal fingerprints in every process, session and machine;
different values have different ones.  Verification compares the fingerprint
of each recorded result with the fingerprint of its replayed value, so big
values never need to be stored or moved to compare them.

The serialization is a stream of tagged, length-prefixed fields fed into one
``hashlib.sha256``:

- scalars (None, bool, int, float, complex, str, bytes) are written exactly;
  floats bit-exact except that every NaN is written as the same NaN (x86
  computes ``0/0`` as a NaN with the sign bit set, NumPy's ``nan`` has it
  clear, and both are "the same missing value");
- lists and tuples item by item, dicts as (key, value) pairs sorted by the
  key's own digest (insertion order does not matter, as for ``==``), sets by
  sorted item digests;
- NumPy arrays and scalars as dtype, shape and raw bytes (C order);
- pandas objects column by column: dtype, name, index and values, so the
  memory layout (consolidated blocks or not) does not matter; a ``RangeIndex``
  is hashed as its integer values, as ``DataFrame.equals`` sees it;
- scikit-learn estimators and other objects by class name and the state that
  pickle would save (``__reduce_ex__``), walked with the same rules;
- functions and classes by module and qualified name when importable, else by
  their cloudpickle bytes.

NumPy, pandas and cloudpickle are imported only when a value needs them.
"""

from __future__ import annotations

import hashlib
import math
import struct
import sys
import types

__all__ = ["fingerprint", "describe"]

_CANONICAL_NAN = struct.pack("<d", float("nan"))
# State entries that say which library wrote an object, not what it holds.
_IGNORED_STATE = frozenset({"_sklearn_version"})


def fingerprint(value) -> str:
    """Return the SHA-256 hex digest of the canonical serialization of ``value``.

    Parameters
    ----------
    value : object
        Any value: Python scalars and containers, NumPy arrays, pandas
        objects, scikit-learn estimators, or any picklable object.

    Returns
    -------
    str
        64 hexadecimal characters.

    Examples
    --------
    >>> fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    True
    >>> fingerprint(1.0) == fingerprint(1.0000000000000002)
    False
    """
    h = hashlib.sha256()
    _Feeder(h).feed(value)
    return h.hexdigest()


def _digest(value) -> bytes:
    h = hashlib.sha256()
    _Feeder(h).feed(value)
    return h.digest()


class _Feeder:
    """Writes the canonical serialization of values into one hash object."""

    def __init__(self, h):
        self.h = h
        # ids of the containers being walked: a value that contains itself
        # is written as a back-reference instead of recursing forever.
        self.active: dict[int, int] = {}

    def tag(self, tag: bytes, payload: bytes = b""):
        self.h.update(tag + struct.pack("<Q", len(payload)) + payload)

    def text(self, s: str):
        self.tag(b"S", s.encode("utf-8", "surrogatepass"))

    def feed(self, v):  # noqa: C901 - one dispatch table, read top to bottom
        t = type(v)
        if v is None:
            self.tag(b"N")
        elif t is bool:
            self.tag(b"T" if v else b"F")
        elif t is int:
            self.tag(b"I", str(v).encode())
        elif t is float:
            self.tag(b"D", _float_bytes(v))
        elif t is complex:
            self.tag(b"C", _float_bytes(v.real) + _float_bytes(v.imag))
        elif t is str:
            self.text(v)
        elif t in (bytes, bytearray, memoryview):
            self.tag(b"B", bytes(v))
        else:
            self.feed_container(v)

    def feed_container(self, v):
        key = id(v)
        if key in self.active:
            self.tag(b"R", struct.pack("<Q", self.active[key]))
            return
        self.active[key] = len(self.active)
        try:
            self.feed_object(v)
        finally:
            del self.active[key]

    def feed_object(self, v):  # noqa: C901
        t = type(v)
        module = t.__module__
        if t in (list, tuple):
            self.tag(b"L" if t is list else b"U", struct.pack("<Q", len(v)))
            for item in v:
                self.feed(item)
        elif t is dict:
            self.feed_mapping(v)
        elif t in (set, frozenset):
            self.tag(b"E" if t is set else b"Z", struct.pack("<Q", len(v)))
            for d in sorted(_digest(item) for item in v):
                self.h.update(d)
        elif module.startswith("numpy") and _is_numpy(v):
            self.feed_numpy(v)
        elif module.startswith("pandas") and _is_pandas(v):
            self.feed_pandas(v)
        elif isinstance(v, (type, types.FunctionType, types.BuiltinFunctionType)):
            self.feed_callable(v)
        elif isinstance(v, (list, tuple, dict, set, frozenset, int, float, str, bytes)):
            # Subclasses (namedtuple, OrderedDict, IntEnum...): the class, then the plain value.
            self.tag(b"K", _qualified_name(t).encode())
            base = next(b for b in (bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset) if isinstance(v, b))
            self.feed(base(v))
        else:
            self.feed_reduced(v)

    def feed_mapping(self, mapping):
        self.tag(b"M", struct.pack("<Q", len(mapping)))
        pairs = sorted((_digest(k), k) for k in mapping)
        for d, k in pairs:
            self.h.update(d)
            self.feed(mapping[k])

    def feed_numpy(self, v):
        import numpy as np

        if isinstance(v, np.ndarray):
            self.tag(b"A", struct.pack(f"<{v.ndim + 1}Q", v.ndim, *v.shape))
            self.feed_array(v)
        else:  # NumPy scalar
            self.tag(b"a")
            self.feed_array(np.asarray(v))

    def feed_array(self, a):
        """Dtype and values of a NumPy array (any shape)."""
        import numpy as np

        self.text(_dtype_text(a.dtype))
        if a.dtype.hasobject:
            flat = a.ravel(order="C")
            if not self.feed_strings(flat):
                self.tag(b"O", struct.pack("<Q", flat.size))
                for item in flat:
                    self.feed(item)
            return
        a = np.ascontiguousarray(a)
        if a.dtype.kind in "fc" and a.size and np.isnan(a).any():
            # Every NaN becomes NumPy's own NaN (see module docstring).
            a = np.where(np.isnan(a), np.array(np.nan, dtype=a.dtype), a)
        self.tag(b"X", a.view(np.uint8).reshape(-1).data if a.size else b"")

    def feed_strings(self, flat) -> bool:
        """Write an object array of only strings and missing values fast.

        Returns False, writing nothing, when the array holds anything else.
        """
        import numpy as np
        import pandas as pd

        if pd.api.types.infer_dtype(flat, skipna=True) != "string":
            return False
        missing = pd.isna(flat)
        strings = flat[~missing] if missing.any() else flat
        self.feed_string_parts(missing, np.fromiter(map(len, strings), np.int64, strings.size), "".join(strings).encode("utf-8", "surrogatepass"))
        return True

    def feed_string_parts(self, missing, lengths, utf8):
        """Strings as (missing mask, character count of each present string, UTF-8 of all)."""
        import numpy as np

        self.tag(b"W", np.ascontiguousarray(missing, dtype=bool).view(np.uint8).data)
        self.tag(b"w", np.ascontiguousarray(lengths, dtype=np.int64).data)
        self.tag(b"s", utf8)

    def feed_arrow_strings(self, chunked) -> bool:
        """Arrow string columns, written exactly as :meth:`feed_strings` writes the same strings."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if not (pa.types.is_string(chunked.type) or pa.types.is_large_string(chunked.type)):
            return False
        arr = chunked.combine_chunks() if isinstance(chunked, pa.ChunkedArray) else chunked
        missing = arr.is_null().to_numpy(zero_copy_only=False)
        present = arr.drop_null()
        lengths = pc.utf8_length(present).to_numpy(zero_copy_only=False)
        offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
        if len(present):
            offsets = np.frombuffer(present.buffers()[1], offset_type)[present.offset:present.offset + len(present) + 1]
            utf8 = present.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]
        else:
            utf8 = b""
        self.text(_dtype_text(np.dtype(object)))  # as the object array that python storage holds
        self.feed_string_parts(missing, lengths, utf8)
        return True

    def feed_values(self, values):
        """1-D values of a pandas column or index (NumPy array or ExtensionArray)."""
        import numpy as np
        import pandas as pd

        if isinstance(values, np.ndarray):
            self.feed_array(values)
            return
        self.text(str(values.dtype))
        if isinstance(values, pd.Categorical):
            self.tag(b"c", b"o" if values.ordered else b"u")
            self.feed_index(values.categories)
            self.feed_array(np.asarray(values.codes))
        elif hasattr(values, "_mask") and hasattr(values, "_data"):  # Int64, boolean, Float64...
            mask = np.asarray(values._mask)
            self.feed_array(mask)
            data = np.asarray(values._data).copy()
            data[mask] = 0  # what lies under the mask is not a value
            self.feed_array(data)
        elif hasattr(values, "_ndarray"):  # datetimes, timedeltas, periods, python strings
            self.feed_array(np.asarray(values._ndarray))
        elif hasattr(values, "_pa_array") and self.feed_arrow_strings(values._pa_array):
            pass
        else:  # any other extension array
            self.feed_array(np.asarray(values.to_numpy(dtype=object, na_value=None), dtype=object))

    def feed_index(self, index):
        import numpy as np
        import pandas as pd

        self.tag(b"i", struct.pack("<Q", index.nlevels))
        self.feed(list(index.names))
        if isinstance(index, pd.MultiIndex):
            for level in range(index.nlevels):
                self.feed_values(index.get_level_values(level)._values)
        elif isinstance(index, pd.RangeIndex):
            self.feed_array(np.arange(index.start, index.stop, index.step, dtype=np.int64))
        else:
            self.feed_values(index._values)

    def feed_pandas(self, v):
        import pandas as pd

        if isinstance(v, pd.DataFrame):
            self.tag(b"P", struct.pack("<QQ", *v.shape))
            self.feed_index(v.columns)
            self.feed_index(v.index)
            for i in range(v.shape[1]):
                self.feed_values(v.iloc[:, i]._values)
        elif isinstance(v, pd.Series):
            self.tag(b"Q", struct.pack("<Q", len(v)))
            self.feed(v.name)
            self.feed_index(v.index)
            self.feed_values(v._values)
        elif isinstance(v, pd.Index):
            self.tag(b"J")
            self.feed_index(v)
        elif isinstance(v, pd.api.extensions.ExtensionArray):
            self.tag(b"V", struct.pack("<Q", len(v)))
            self.feed_values(v)
        else:
            self.feed_reduced(v)

    def feed_callable(self, v):
        name = _qualified_name(v)
        if _importable(v, name):
            self.tag(b"G", name.encode())
        else:  # lambdas, closures, classes made at run time
            import cloudpickle

            self.tag(b"g", cloudpickle.dumps(v, protocol=5))

    def feed_reduced(self, v):
        """Any other object: its class and the state pickle would save."""
        self.tag(b"K", _qualified_name(type(v)).encode())
        try:
            reduced = v.__reduce_ex__(4)
        except Exception:  # not picklable by the protocol: fall back on cloudpickle
            reduced = None
        if isinstance(reduced, str) or reduced is None:
            import cloudpickle

            self.tag(b"p", cloudpickle.dumps(v, protocol=5))
            return
        constructor, args, *rest = tuple(reduced) + (None,) * (5 - len(reduced))
        state, list_items, dict_items = rest[:3]
        self.feed(constructor)
        self.feed(args)
        if isinstance(state, dict):
            state = {k: s for k, s in state.items() if k not in _IGNORED_STATE}
        self.feed(state)
        self.feed(None if list_items is None else list(list_items))
        self.feed(None if dict_items is None else dict(dict_items))


def _float_bytes(x: float) -> bytes:
    return _CANONICAL_NAN if math.isnan(x) else struct.pack("<d", x)


def _dtype_text(dtype) -> str:
    # dtype.str alone loses the field names of structured dtypes.
    return dtype.str if dtype.fields is None else f"{dtype.str}{dtype.descr}"


def _is_numpy(v) -> bool:
    import numpy as np

    return isinstance(v, (np.ndarray, np.generic))


def _is_pandas(v) -> bool:
    import pandas as pd

    return isinstance(v, (pd.DataFrame, pd.Series, pd.Index, pd.api.extensions.ExtensionArray))


def _qualified_name(obj) -> str:
    return f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _importable(obj, name: str) -> bool:
    """True when ``module.qualname`` finds ``obj`` again (so the name identifies it)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    if module is None or module.__name__ == "__main__":
        return False
    target = module
    for part in obj.__qualname__.split("."):
        target = getattr(target, part, None)
        if target is None:
            return False
    return target is obj


# --- describe ---------------------------------------------------------------
def describe(value, width: int = 40) -> str:
    """Return a short human summary of ``value`` for mismatch reports.

    Parameters
    ----------
    value : object
        The value to summarize.
    width : int, optional
        Longest text shown for strings and reprs.

    Returns
    -------
    str

    Examples
    --------
    >>> describe(0.93123456)
    'float 0.931235'
    >>> describe([1, 2, 3])
    'list of 3'
    """
    t = type(value)
    if value is None:
        return "None"
    if t is bool:
        return f"bool {value}"
    if t is int:
        return f"int {value:,}"
    if t is float:
        return f"float {value:.6g}"
    if t is str:
        return f"str {_clip(repr(value), width)} (len {len(value):,})"
    if t in (bytes, bytearray):
        return f"bytes ({len(value):,})"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return f"{t.__name__} of {len(value):,}"
    module = t.__module__
    if module.startswith("pandas"):
        import pandas as pd

        if isinstance(value, pd.DataFrame):
            return f"DataFrame {value.shape[0]:,}×{value.shape[1]:,}"
        if isinstance(value, pd.Series):
            return f"Series {len(value):,} ({value.dtype})"
        if isinstance(value, pd.Index):
            return f"{t.__name__} {len(value):,} ({value.dtype})"
    if module.startswith("numpy"):
        import numpy as np

        if isinstance(value, np.ndarray):
            return f"ndarray {'×'.join(f'{n:,}' for n in value.shape) or 'scalar'} {value.dtype}"
        if isinstance(value, np.generic):
            return f"{value.dtype} {value.item()!r}"
    if hasattr(value, "get_params") and hasattr(value, "fit"):
        fitted = any(k.endswith("_") and not k.startswith("_") for k in vars(value))
        return f"{t.__name__} ({'fitted' if fitted else 'not fitted'})"
    return f"{t.__name__} {_clip(repr(value), width)}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def fingerprint_and_describe(value) -> tuple[str, str]:
    """``(fingerprint(value), describe(value))``: what a worker sends back instead of the value."""
    return fingerprint(value), describe(value)


def error_fingerprint_and_describe(error_text: str) -> tuple[str, str]:
    """A task's error (``repr`` of the exception) as its result: a replay raising the same error reproduces it."""
    return fingerprint(("raised", error_text)), describe_error(error_text)


def describe_error(error_text: str) -> str:
    return _clip(f"raised {error_text}", 60)


# --- files whose bytes stamp the time they were written -----------------------------------
_GZIP, _ZIP, _HDF5 = b"\x1f\x8b", b"PK\x03\x04", b"\x89HDF\r\n\x1a\n"
_CHUNK = 1 << 20


def content_fingerprint(path) -> str | None:
    """The fingerprint of what a file holds, for formats whose bytes also hold the time they were
    written; None for the others, whose SHA-256 says what they hold.

    Two runs that write the same data into such a file write different bytes, so an output is
    compared by this fingerprint when it has one:

    - gzip (its header's modification time; pandas' ``to_csv("x.csv.gz")``): the decompressed bytes;
    - zip (each member's date; NumPy's ``.npz``, Excel's ``.xlsx``): each member's name and bytes, in order;
    - HDF5 (objects' modification times, which PyTables keeps; pandas' ``to_hdf``): each group's and
      dataset's name, attributes and values, read with h5py (None where h5py is not installed).
    """
    with open(path, "rb") as f:
        magic = f.read(8)
    h = hashlib.sha256()
    if magic.startswith(_GZIP):
        import gzip

        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()
    if magic.startswith(_ZIP):
        import zipfile

        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                h.update(_digest(member.filename))
                with archive.open(member) as f:
                    h.update(_digest(hashlib.file_digest(f, "sha256").digest()))
        return h.hexdigest()
    if magic == _HDF5:
        return _hdf5_fingerprint(path, h)
    return None


def _hdf5_fingerprint(path, h) -> str | None:
    try:
        import h5py
        import numpy as np
    except ImportError:
        return None

    def plain(value, f):
        """A value read from the file, with object references as the names of what they point to
        (netCDF4 keeps them in compound attributes: a reference's bytes are an address in the file)."""
        if isinstance(value, h5py.Reference):
            return f[value].name if value else None
        array = np.asarray(value)
        if array.dtype.kind != "O" and array.dtype.fields is None:
            return array
        if array.dtype.fields is not None:
            return [tuple(plain(field, f) for field in record) for record in array.ravel()]
        return [plain(item, f) if isinstance(item, (h5py.Reference, np.ndarray)) else item for item in array.ravel()]

    def feed(name, item):
        attributes = sorted((k, plain(item.attrs[k], f)) for k in item.attrs)
        h.update(_digest((name, type(item).__name__, attributes)))
        if isinstance(item, h5py.Dataset):
            h.update(_digest((str(item.dtype), item.shape)))
            if not item.shape:
                h.update(_digest(plain(item[()], f)))
                return
            row = max(1, item.dtype.itemsize * (item.size // max(1, item.shape[0])))
            step = max(1, (64 << 20) // row)   # 64 MB at a time
            for start in range(0, item.shape[0], step):
                h.update(_digest(plain(item[start:start + step], f)))

    with h5py.File(path, "r") as f:
        feed("/", f)
        f.visititems(feed)
    return h.hexdigest()
