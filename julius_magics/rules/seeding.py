"""Per-node randomness: Python's ``random`` and NumPy's global generator, seeded from the node id.

The contract: code in a node that draws from ``random`` or ``np.random`` without a
seed sees generators seeded from the session seed and the node's id, so it draws the
same numbers in every run and replay, whatever the number of workers.

Seeding both generators costs about 9 µs (two Mersenne Twister states of 624 words),
more than most nodes of a long chain compute, and most nodes never draw.  So
``install()`` replaces the two global generators by subclasses that seed themselves
at their first draw inside a node: ``enter_node`` only notes the node.  Every draw
sees exactly the state that seeding before the node would have given.  Outside nodes
nothing is pending and the generators behave as the originals.  (The global generators
are one per process: with several threads per worker, nodes running at once share them,
as they would with eager seeding; ``rng()`` is per node and thread.)

>>> install()
>>> enter_node("1a2b3c4d5e6f70819203", session_key(0))
>>> a = (random.random(), np.random.random())
>>> enter_node("1a2b3c4d5e6f70819203", session_key(0))
>>> a == (random.random(), np.random.random())
True
"""

from __future__ import annotations

import _random
import contextlib
import hashlib
import random
import threading

import numpy as np
import numpy.random.mtrand as _mtrand

__all__ = ["install", "enter_node", "nodes_running", "node_seed", "session_key", "rng"]

_node = threading.local()          # .current: the running node; .rng: (node, its Generator), for rng()
_pending_py = None                 # (node id, session key) of the running node, until `random` draws
_pending_np = None                 # the same for NumPy's global RandomState


def session_key(session_seed):
    """A 64-bit mask derived from the session seed (a stable hash, never ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(str(session_seed).encode(), digest_size=8).digest(), "big")


def node_seed(session_seed, node_id):
    """The seed of a node: its id (already a content hash) mixed with the session key.

    >>> node_seed(0, "1a2b3c4d5e6f70819203") == node_seed(0, "1a2b3c4d5e6f70819203")
    True
    """
    return _seed_of((node_id, session_key(session_seed)))


def _seed_of(node):
    node_id, key = node
    return int(node_id[:16], 16) ^ key


def enter_node(node_id, key):
    """The node ``node_id`` runs next (``key``: the session key): generators take its seed at their next draw."""
    global _pending_py, _pending_np
    _pending_py = _pending_np = _node.current = (node_id, key)
    random._inst.gauss_next = None  # gauss() reads its cache before it draws


@contextlib.contextmanager
def nodes_running():
    """Around a run of nodes: afterwards nothing is pending, draws continue from the current state."""
    global _pending_py, _pending_np
    try:
        yield
    finally:
        _pending_py = _pending_np = _node.current = None


def rng():
    """The running node's own ``numpy.random.Generator`` (seeded from its id)."""
    current = getattr(_node, "current", None)
    cached = getattr(_node, "rng", None)
    if cached is None or cached[0] is not current:
        cached = _node.rng = (current, np.random.default_rng(_seed_of(current) if current else 0))
    return cached[1]


class _LazyRandom(random.Random):
    """``random``'s global generator: every draw goes through ``random()`` or ``getrandbits()``."""

    def _take_seed(self):
        global _pending_py
        pending, _pending_py = _pending_py, None
        # what random.seed(int) runs; a 32-bit seed, as for NumPy: seeding is twice as fast as with 64 bits
        _random.Random.seed(self, _seed_of(pending) & 0xFFFFFFFF)
        self.gauss_next = None

    def random(self):
        if _pending_py is not None:
            self._take_seed()
        return _random.Random.random(self)

    def getrandbits(self, k):
        if _pending_py is not None:
            self._take_seed()
        return _random.Random.getrandbits(self, k)

    def randbytes(self, n):
        if _pending_py is not None:
            self._take_seed()
        return super().randbytes(n)

    def getstate(self):
        if _pending_py is not None:
            self._take_seed()
        return super().getstate()

    def seed(self, a=None, version=2):
        global _pending_py
        _pending_py = None
        super().seed(a, version)

    def setstate(self, state):
        global _pending_py
        _pending_py = None
        super().setstate(state)


def _take_np_seed(state):
    global _pending_np
    pending, _pending_np = _pending_np, None
    np.random.RandomState.seed(state, _seed_of(pending) & 0xFFFFFFFF)


def _lazy_method(name):
    """The RandomState method ``name``, aware of the pending seed."""
    base = getattr(np.random.RandomState, name)
    if name in ("seed", "set_state"):      # replaces the state: nothing is pending after it

        def method(self, *args, **kwargs):
            global _pending_np
            _pending_np = None
            return base(self, *args, **kwargs)

    else:                                  # draws or reads the state: takes the pending seed first

        def method(self, *args, **kwargs):
            if _pending_np is not None:
                _take_np_seed(self)
            return base(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = base.__doc__
    return method


_LazyRandomState = type("_LazyRandomState", (np.random.RandomState,), {
    name: _lazy_method(name) for name in dir(np.random.RandomState) if not name.startswith("_")
})
_LazyRandomState.__module__ = __name__


def _rebind(modules, old, new):
    """Point the module-level functions bound to ``old`` (``random.random``, ``np.random.rand``, ...) at ``new``."""
    for module in modules:
        for name, value in list(vars(module).items()):
            if getattr(value, "__self__", None) is old:
                setattr(module, name, getattr(new, name))


def install():
    """Replace the global generators of this process by the lazily seeded ones (once)."""
    if type(random._inst) is not _LazyRandom:
        old, new = random._inst, _LazyRandom()
        new.setstate(old.getstate())
        _rebind([random], old, new)
        random._inst = new
    if type(_mtrand._rand) is not _LazyRandomState:
        old = _mtrand._rand
        new = _LazyRandomState(old._bit_generator)   # the same state: draws outside nodes continue
        _rebind([np.random, _mtrand], old, new)
        _mtrand._rand = new
