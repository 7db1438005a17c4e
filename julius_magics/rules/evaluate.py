"""Evaluating a sub-graph in one process, with per-node seeding.

This is the code a key job runs inside its Dask task, and the same code runs
synchronously in tests (dask's ``local.py`` model: collaborators are passed in).

>>> from julius_magics.rules.registry import RuleBook
>>> book = RuleBook()
>>> _ = book.define("t", "def one(): return ApplyFn(int, 1)()\\n"
...                      "def two(): return ApplyFn(lambda a, b: a + b)(one(), one())")
>>> evaluate(book.ref.t.two(), book.rule)
2
"""

from __future__ import annotations

import gc
import pickle
import traceback

import cloudpickle

from .. import collector
from ..errors import NodeError
from .graph import expand
from .atoms import ApplyFn, Atom
from .node import NodeRef, bind_remote_globals
from . import seeding

__all__ = ["evaluate", "CompiledJob", "compile_job", "run_job", "Slot"]


class Slot:
    """Stands for a dependency's value inside a nested input (a list of node references)."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __reduce__(self):
        return (Slot, (self.index,))

    def __repr__(self):
        return f"Slot({self.index})"


def _slotted(value, index):
    """An input with its node references replaced by slots."""
    t = type(value)
    if t is NodeRef:
        return Slot(index[value.id])
    if t is list or t is tuple:
        return t(_slotted(v, index) for v in value)
    if t is dict:
        return {k: _slotted(v, index) for k, v in value.items()}
    return value


def substitute(value, values):
    """Replace slots in an input (also inside lists, tuples, dicts) by their values."""
    t = type(value)
    if t is Slot:
        return values[value.index]
    if t is list or t is tuple:
        return t(substitute(v, values) for v in value)
    if t is dict:
        return {k: substitute(v, values) for k, v in value.items()}
    return value


class CompiledJob:
    """A key job's sub-graph compiled for evaluation in one task: flat lists, positions instead of ids.

    ``ids[:nknown]`` are the dependencies computed elsewhere (their values are passed in,
    in that order); ``ids[nknown + i]`` is step ``i``, computed by ``atoms[i]`` from
    ``inputs[i]``: a tuple of positions when every input is a node reference (the common
    case), else ``(None, inputs with Slots)``.  Plain lists of strings, ints and atoms
    pickle several times faster than node objects.
    """

    __slots__ = ("ids", "nknown", "atoms", "inputs", "keys", "labels")

    def __init__(self, ids, nknown, atoms, inputs, keys, labels):
        self.ids, self.nknown, self.atoms, self.inputs, self.keys, self.labels = ids, nknown, atoms, inputs, keys, labels

    def to_bytes(self):
        """The job as one bytes object, which Dask's scheduler passes on as it is.

        Passed as an object, the job would be unpickled and pickled again by the
        scheduler on its way to the worker.  Full collections are paused: (un)pickling
        100k small objects otherwise spends most of its time in the garbage collector.
        """
        with collector.paused():
            return cloudpickle.dumps((self.ids, self.nknown, self.atoms, self.inputs, self.keys, self.labels))

    @classmethod
    def from_bytes(cls, data):
        with collector.paused():
            return cls(*pickle.loads(data))

    def __len__(self):
        return len(self.atoms)



def compile_job(nodes, order, known_ids=()):
    """Compile the nodes in ``order`` (dependencies first), given the ids computed elsewhere."""
    ids = list(known_ids)
    index = {nid: i for i, nid in enumerate(ids)}
    atoms, inputs, keys, labels = [], [], [], []
    # equal atoms (same type, the very same params) and rule names become one object,
    # which pickles once: a rule makes a fresh ApplyFn(fn) for each of its nodes
    shared = {}
    with collector.paused():
        for nid in order:
            node = nodes[nid]
            app = node.app
            try:
                inputs.append(tuple([index[v.id] for v in app.inputs]))
            except (AttributeError, KeyError):   # a constant or a nested list among the inputs
                inputs.append((None, tuple(_slotted(v, index) for v in app.inputs)))
            index[nid] = len(ids)
            ids.append(nid)
            atom = app.atom
            if type(atom).__reduce__ is Atom.__reduce__:    # rebuilt from its params alone
                atom = shared.setdefault((type(atom), *map(id, atom.params)), atom)
            atoms.append(atom)
            key = node.ref.key
            keys.append(shared.setdefault(key, key))
            labels.append(node.ref.label)
    return CompiledJob(ids, len(known_ids), atoms, inputs, keys, labels)


def run_job(job, known_values=(), seed=0, on_node=None):
    """Run a compiled job; return the value of its last step.

    Values are dropped as soon as no later step needs them, so a long chain keeps
    only its frontier in memory.  A failing atom raises ``NodeError`` naming the
    node, with its traceback.
    """
    k = job.nknown
    values = list(known_values) + [None] * len(job.atoms)
    pending = [0] * len(values)
    for spec in job.inputs:
        for j in (spec if spec[:1] != (None,) else _slots_in(spec[1])):
            pending[j] += 1
    last = len(values) - 1
    key = seeding.session_key(seed)
    seeding.install()
    calls = {}   # id(atom) -> what computes it, remote names resolved: once per job (atoms are shared)
    with collector.paused(), seeding.nodes_running():
        for i, (atom, spec) in enumerate(zip(job.atoms, job.inputs)):
            call = calls.get(id(atom))
            if call is None:
                call = calls[id(atom)] = _prepared(atom)
            nested = spec[:1] == (None,)
            args = substitute(spec[1], values) if nested else [values[j] for j in spec]
            nid = job.ids[k + i]
            seeding.enter_node(nid, key)
            try:
                values[k + i] = call(*args)
            except Exception as e:
                rule, label = job.keys[i], job.labels[i]
                raise NodeError(
                    f"node {f'{label} ({rule})' if label else rule}, id {nid}, failed: {type(e).__name__}: {e}",
                    node_id=nid, label=label or rule, remote_traceback=traceback.format_exc(),
                ) from None
            if on_node is not None:
                on_node(nid)
            for j in (spec if not nested else _slots_in(spec[1])):
                pending[j] -= 1
                if pending[j] == 0 and j != last:
                    values[j] = None
            if i % 10_000 == 9_999:
                gc.collect(0)   # short-lived cycles made by atoms, while full collections are paused
    return values[last]


def _prepared(atom):
    """``atom.prepare()``, after binding the remote names its code uses (this process's remote namespace)."""
    bind_remote_globals(atom.params[0] if type(atom) is ApplyFn else type(atom).run)
    bind_remote_globals(type(atom).run)
    return atom.prepare()


def _slots_in(value):
    """Positions of the slots in a nested input."""
    t = type(value)
    if t is Slot:
        return [value.index]
    if t is list or t is tuple:
        return [j for v in value for j in _slots_in(v)]
    if t is dict:
        return [j for v in value.values() for j in _slots_in(v)]
    return []


def evaluate(target, rule_of, known=None, seed=0, on_node=None):
    """Compute ``target`` in this process, reusing the values in ``known`` (``{node id: value}``)."""
    known = known or {}
    if target.id in known:
        return known[target.id]
    nodes, order = expand([target], rule_of, stop=known)
    outside = list(dict.fromkeys(d.id for nid in order for d in nodes[nid].deps if d.id not in nodes))
    return run_job(compile_job(nodes, order, outside), [known[d] for d in outside], seed, on_node)
