"""Atoms: the computations at the nodes of a graph.

A rule returns an atom applied to its dependencies: ``ApplyFn(fn, 0.05)(src)``
is an ``Application`` whose inputs are node references (or constants).  Atoms
run where the node is evaluated (a worker); heavy libraries are imported there.

>>> app = ApplyFn(max, 1)(NodeRef("ds", "csvsrc", ("a.csv",)))
>>> [d.name for d in app.deps()]
['csvsrc']
>>> app.atom.run(0)
1
"""

from __future__ import annotations

import functools
import importlib
import os

from .node import NodeRef, RemoteName, refs_in

__all__ = ["Atom", "Application", "ApplyFn", "Train", "Predict", "Score", "Alias",
           "ReadCsv", "ReadCsvBlock", "input_path", "INPUT_HOOKS", "INPUTS_READ"]


class Application:
    """An atom applied to inputs; the inputs' node references are the node's dependencies."""

    __slots__ = ("atom", "inputs")

    def __init__(self, atom, inputs):
        self.atom = atom
        self.inputs = inputs

    def deps(self):
        """Node references among the inputs (top level and inside lists/tuples/dicts), as a sequence."""
        inputs = self.inputs
        for value in inputs:
            if type(value) is not NodeRef:
                return refs_in(inputs)
        return inputs   # all of them: the tuple itself, one object less per node of a big graph

    def __repr__(self):
        return f"{self.atom!r}({', '.join(map(repr, self.inputs))})"


class Atom:
    """Base class: ``Atom(*params)(*inputs)`` is an Application; ``run(*values)`` computes.

    An atom is rebuilt from its params (``type(atom)(*atom.params)``) when it travels to a
    worker; a subclass whose ``__init__`` takes other arguments overrides ``__reduce__``.
    """

    __slots__ = ("params",)

    def __init__(self, *params):
        self.params = params

    def __reduce__(self):
        return (type(self), self.params)

    def __call__(self, *inputs):
        return Application(self, inputs)

    def run(self, *inputs):  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self):
        """What computes the value from the inputs where the atom runs (called once per key job)."""
        return self.run

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(map(_short_repr, self.params))})"


def _short_repr(value):
    text = getattr(value, "__name__", None) or repr(value)
    return text if len(text) < 40 else text[:37] + "..."


def _resolve(value):
    return value.resolve() if type(value) is RemoteName else value


class ApplyFn(Atom):
    """``ApplyFn(fn, *params)(*inputs)`` computes ``fn(*params, *inputs)``; ``fn`` may be ``remote.NAME``."""

    def __init__(self, fn, *params):
        if not callable(fn):
            raise TypeError(f"ApplyFn needs a function, got {fn!r:.60}")
        super().__init__(fn, *params)

    def run(self, *inputs):
        return self.prepare()(*inputs)

    def prepare(self):
        # remote names resolved once: in a key job, a rule's many nodes share one atom
        fn, *params = [_resolve(p) for p in self.params]
        return functools.partial(fn, *params) if params else fn


def import_object(path):
    """``"sklearn.ensemble.ExtraTreesClassifier"`` -> the class."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"{path!r} is not an import path like 'sklearn.ensemble.ExtraTreesClassifier'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {path!r}: {e}") from None


def _as_vector(y):
    """A Series, one-column DataFrame or array -> 1-D values."""
    if hasattr(y, "columns"):
        if y.shape[1] != 1:
            raise ValueError(f"expected one column, got {list(y.columns)}")
        return y.iloc[:, 0]
    return y


class Train(Atom):
    """``Train("sklearn.ensemble.ExtraTreesClassifier", {"n_estimators": 50})(X, y)`` fits the estimator."""

    def __init__(self, class_path, options=None):
        super().__init__(class_path, dict(options or {}))

    def run(self, x, y):
        class_path, options = self.params
        model = import_object(class_path)(**options)
        return model.fit(x, _as_vector(y))


class Predict(Atom):
    """``Predict()(model, X)``: a DataFrame with a ``proba`` column (positive class), indexed like X."""

    def run(self, model, x):
        import pandas as pd

        proba = model.predict_proba(x)
        return pd.DataFrame({"proba": proba[:, -1]}, index=getattr(x, "index", None))


class Score(Atom):
    """``Score()(y_true, y_score)``: the ROC AUC."""

    def run(self, y_true, y_score):
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(_as_vector(y_true), _as_vector(y_score)))


class _Identity(Atom):
    def run(self, value):
        return value

    def __repr__(self):
        return "Alias"


def Alias(target):
    """``Alias(ref)``: a node whose value is the value of ``ref``."""
    if type(target) is not NodeRef:
        raise TypeError(f"Alias needs a node reference, got {target!r:.60}")
    return Application(_Identity(), (target,))


# --- input files --------------------------------------------------------------------
#: ``resolve(abspath) -> path`` maps a recorded input to the file to read (a replay
#: serves embedded copies so); installed where nodes run.
INPUT_HOOKS = {"resolve": None}
#: Absolute paths of the inputs nodes read in this process (drained by the recorder).
INPUTS_READ = set()


def input_path(path):
    """The file a node should read for input ``path``; every input read goes through here."""
    path = os.path.abspath(os.fspath(path))
    INPUTS_READ.add(path)
    resolve = INPUT_HOOKS["resolve"]
    return resolve(path) if resolve else path


class ReadCsv(Atom):
    """``ds.csvsrc``: the whole CSV file as a DataFrame."""

    def run(self):
        import pandas as pd

        path, header = self.params
        return pd.read_csv(input_path(path), header=0 if header else None)


def _after_newline(f, offset):
    """The offset of the first line that starts at or after ``offset``."""
    if offset == 0:
        return 0
    f.seek(offset - 1)
    f.readline()
    return f.tell()


class ReadCsvBlock(Atom):
    """``dd.read_csv_blocks``: block ``index`` of a CSV file, cut on line starts.

    Block i holds the lines that start in ``[i*B, (i+1)*B)`` (the header line excluded),
    so blocks depend only on the file's bytes and every line is in exactly one block.
    """

    def run(self):
        import io

        import pandas as pd

        path, index, blocksize = self.params
        with open(input_path(path), "rb") as f:
            header = f.readline()
            start = max(_after_newline(f, index * blocksize), len(header))
            end = max(_after_newline(f, (index + 1) * blocksize), len(header))
            f.seek(start)
            body = f.read(max(end - start, 0))
        return pd.read_csv(io.BytesIO(header + body))


def parse_size(size):
    """``"5 MB"`` -> 5_000_000; ints pass through."""
    if isinstance(size, (int, float)):
        return int(size)
    text = str(size).strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1, "": 1}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            try:
                return int(float(text[: len(text) - len(unit)]) * units[unit])
            except ValueError:
                break
    raise ValueError(f"cannot read size {size!r}: use bytes or a string like '5 MB'")
