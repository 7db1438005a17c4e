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
import hashlib
import random
import threading
import traceback

import numpy as np

from ..errors import NodeError
from .graph import expand, paused_gc
from .atoms import ApplyFn
from .node import NodeRef, bind_remote_globals

__all__ = ["evaluate", "compile_steps", "run_steps", "node_seed", "rng", "Slot"]

_node = threading.local()


def node_seed(session_seed, node_id):
    """The seed of a node: a stable hash of the session seed and the node id (never ``hash()``)."""
    digest = hashlib.blake2b(f"{session_seed}:{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _enter_node(seed):
    """Seed Python's ``random`` and NumPy's global generator for the node about to run."""
    low = seed & 0xFFFFFFFF        # a 32-bit seed: Python's random.seed is twice as fast as with 64
    random.seed(low)
    np.random.seed(low)
    _node.seed = seed
    _node.rng = None


def rng():
    """The running node's own ``numpy.random.Generator`` (seeded from its id)."""
    gen = getattr(_node, "rng", None)
    if gen is None:
        gen = _node.rng = np.random.default_rng(getattr(_node, "seed", 0))
    return gen


class Slot:
    """Stands for a dependency's value in a compiled step's inputs."""

    __slots__ = ("id",)

    def __init__(self, nid):
        self.id = nid

    def __reduce__(self):
        return (Slot, (self.id,))

    def __repr__(self):
        return f"Slot({self.id})"


def _slotted(value):
    """An input with its node references replaced by slots (nothing else of the graph travels)."""
    t = type(value)
    if t is NodeRef:
        return Slot(value.id)
    if t is list or t is tuple:
        return t(_slotted(v) for v in value)
    if t is dict:
        return {k: _slotted(v) for k, v in value.items()}
    return value


def substitute(value, values):
    """Replace slots in an input (also inside lists, tuples, dicts) by their values."""
    t = type(value)
    if t is Slot:
        return values[value.id]
    if t is list or t is tuple:
        return t(substitute(v, values) for v in value)
    if t is dict:
        return {k: substitute(v, values) for k, v in value.items()}
    return value


class Steps:
    """Compiled steps ``(id, atom, inputs, dep ids, rule key, label)``, in dependency order.

    Not a list: Dask passes it to the task as one opaque argument instead of walking
    every tuple in it looking for futures.
    """

    __slots__ = ("items",)

    def __init__(self, items=None):
        self.items = items if items is not None else []

    def __reduce__(self):
        return (Steps, (self.items,))

    def __len__(self):
        return len(self.items)


def compile_steps(nodes, order):
    """The nodes in ``order`` as ``Steps``.

    A key job's task carries its steps, so the worker evaluates them without
    expanding the graph again; plain tuples pickle fast.
    """
    steps = []
    for nid in order:
        node = nodes[nid]
        inputs = node.app.inputs
        if all(type(v) is NodeRef for v in inputs):
            inputs = tuple(Slot(v.id) for v in inputs)
        else:
            inputs = tuple(_slotted(v) for v in inputs)
        steps.append((nid, node.app.atom, inputs, tuple(d.id for d in node.deps), node.ref.key, node.ref.label))
    return Steps(steps)


def run_steps(steps, known=None, seed=0, on_node=None):
    """Run compiled steps in order; return the value of the last one.

    ``known`` gives the values of dependencies outside the steps.  Values are dropped
    as soon as no remaining step needs them, so a long chain keeps only its frontier
    in memory.  A failing atom raises ``NodeError`` naming the node, with its traceback.
    """
    steps = steps.items if isinstance(steps, Steps) else steps
    values = dict(known or {})
    pending = {}
    for step in steps:
        for dep in step[3]:
            pending[dep] = pending.get(dep, 0) + 1
    keep = steps[-1][0]
    with paused_gc():
        for count, (nid, atom, inputs, deps, key, label) in enumerate(steps, 1):
            args = [values[v.id] if type(v) is Slot else substitute(v, values) for v in inputs]
            bind_remote_globals(type(atom).run)
            if type(atom) is ApplyFn:
                bind_remote_globals(atom.params[0])
            _enter_node(node_seed(seed, nid))
            try:
                values[nid] = atom.run(*args)
            except Exception as e:
                name = f"{label} ({key})" if label else key
                raise NodeError(
                    f"node {name}, id {nid}, failed: {type(e).__name__}: {e}",
                    node_id=nid, label=label or key, remote_traceback=traceback.format_exc(),
                ) from None
            if on_node is not None:
                on_node(nid)
            for dep in deps:
                left = pending[dep] = pending[dep] - 1
                if left == 0 and dep != keep:
                    values.pop(dep, None)
            if count % 10_000 == 0:
                gc.collect(0)   # short-lived cycles made by atoms, while full collections are paused
    return values[keep]


def evaluate(target, rule_of, known=None, seed=0, on_node=None):
    """Compute ``target`` in this process, reusing the values in ``known`` (``{node id: value}``)."""
    known = known or {}
    if target.id in known:
        return known[target.id]
    nodes, order = expand([target], rule_of, stop=known)
    return run_steps(compile_steps(nodes, order), known, seed, on_node)
