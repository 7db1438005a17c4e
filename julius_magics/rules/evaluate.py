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

import hashlib
import random
import threading
import traceback

import numpy as np

from ..errors import NodeError
from .graph import expand
from .node import NodeRef

__all__ = ["evaluate", "node_seed", "rng", "substitute"]

_node = threading.local()


def node_seed(session_seed, node_id):
    """The seed of a node: a stable hash of the session seed and the node id (never ``hash()``)."""
    digest = hashlib.blake2b(f"{session_seed}:{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _enter_node(seed):
    """Seed Python's ``random`` and NumPy's global generator for the node about to run."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    _node.seed = seed
    _node.rng = None


def rng():
    """The running node's own ``numpy.random.Generator`` (seeded from its id)."""
    gen = getattr(_node, "rng", None)
    if gen is None:
        gen = _node.rng = np.random.default_rng(getattr(_node, "seed", 0))
    return gen


def substitute(value, values):
    """Replace node references in an input (also inside lists, tuples, dicts) by their values."""
    t = type(value)
    if t is NodeRef:
        return values[value.id]
    if t is list or t is tuple:
        return t(substitute(v, values) for v in value)
    if t is dict:
        return {k: substitute(v, values) for k, v in value.items()}
    return value


def evaluate(target, rule_of, known=None, seed=0, on_node=None):
    """Compute ``target``, reusing the values in ``known`` (``{node id: value}``).

    Values are dropped as soon as no remaining node needs them, so a long chain
    keeps only its frontier in memory.  A failing atom raises ``NodeError`` naming
    the node and carrying the traceback.
    """
    known = known or {}
    nodes, order = expand([target], rule_of, stop=known)
    values = dict(known)
    pending = {}
    for node in nodes.values():
        for dep in node.deps:
            pending[dep.id] = pending.get(dep.id, 0) + 1
    keep = target.id
    for nid in order:
        node = nodes[nid]
        inputs = [values[v.id] if type(v) is NodeRef else substitute(v, values) for v in node.app.inputs]
        _enter_node(node_seed(seed, nid))
        try:
            values[nid] = node.app.atom.run(*inputs)
        except Exception as e:
            raise NodeError(
                f"node {node.ref!r} ({node.ref.display()}, id {nid}) failed: {type(e).__name__}: {e}",
                node_id=nid, label=node.ref.display(), remote_traceback=traceback.format_exc(),
            ) from None
        if on_node is not None:
            on_node(nid)
        for dep in node.deps:
            left = pending[dep.id] = pending[dep.id] - 1
            if left == 0 and dep.id != keep:
                values.pop(dep.id, None)
    return values[target.id]
