"""Built-in namespaces: ``ds`` (sources), ``dd`` (CSV blocks) and ``mr`` (map-reduce)."""

from __future__ import annotations

import math
import os

from .atoms import ApplyFn, ReadCsv, ReadCsvBlock, parse_size
from .node import NodeRef, stable_hash

__all__ = ["DDataFrame", "BUILTIN_RULES"]


# --- ds ---------------------------------------------------------------------------
def csvsrc(path, header=True):
    """The whole CSV file at ``path``."""
    return ReadCsv(path, header)()


# --- dd ---------------------------------------------------------------------------
def read_csv_blocks(path, index, blocksize):
    """Block ``index`` of the CSV at ``path``, cut every ``blocksize`` bytes on line starts."""
    return ReadCsvBlock(path, index, blocksize)()


class DDataFrame:
    """A CSV file seen as blocks: ``DDataFrame(path, blocksize="5 MB").chunks`` are node references.

    The number of blocks depends only on the file size, so the graph is the same
    wherever it is built.
    """

    def __init__(self, path, blocksize="64 MB"):
        self.path = os.fspath(path)
        self.blocksize = parse_size(blocksize)
        if self.blocksize <= 0:
            raise ValueError(f"blocksize must be positive, got {blocksize!r}")
        try:
            size = os.path.getsize(self.path)
        except OSError as e:
            raise FileNotFoundError(f"DDataFrame: cannot read {self.path!r}: {e.strerror}") from None
        self.nblocks = max(1, math.ceil(size / self.blocksize))
        name = os.path.basename(self.path)
        self.chunks = [
            NodeRef("dd", "read_csv_blocks", (self.path, i, self.blocksize), label=f"{name}[{i}]")
            for i in range(self.nblocks)
        ]

    def __repr__(self):
        return f"DDataFrame({self.path!r}, blocksize={self.blocksize}, chunks={self.nblocks})"


# --- mr ---------------------------------------------------------------------------
def mapreduce(batches, mapper, shuffler, reducer, aggfn=None):
    """Map every batch, shuffle the (key, value) pairs into buckets, reduce each bucket, aggregate.

    ``mapper``, ``shuffler`` and ``reducer`` are partial node references whose first
    argument is filled in here (``ref.prepend``).
    """
    for name, value in (("mapper", mapper), ("shuffler", shuffler), ("reducer", reducer)):
        if type(value) is not NodeRef:
            raise TypeError(f"mapreduce: {name} must be a partial node reference such as ref.ns.rule(...), "
                            f"got {value!r:.60}")
    nbuckets = shuffler.args[-1] if shuffler.args else None
    if type(nbuckets) is not int or nbuckets < 1:
        raise ValueError(f"mapreduce: shuffler must be ref.mr.shuffler(keyfunc, n) with n >= 1, got {shuffler!r}")
    shuffled = [shuffler.prepend(mapper.prepend(batch)) for batch in batches]
    reduced = [reducer.prepend(NodeRef("mr", "bucket", (j, *shuffled))) for j in range(nbuckets)]
    return ApplyFn(aggregate, aggfn)(*reduced)


def shuffler(pairs, keyfunc, n):
    """The pairs of one mapper, split into ``n`` buckets by ``stable_hash(keyfunc(pair)) % n``."""
    return ApplyFn(shuffle_pairs, keyfunc, n)(pairs)


def bucket(j, *shuffled):
    """Bucket ``j`` of every shuffled mapper output, as one list of pairs."""
    return ApplyFn(pick_bucket, j)(*shuffled)


def reducer(pairs, fn):
    """``fn(pairs)`` for the pairs of one bucket."""
    return ApplyFn(fn)(pairs)


def shuffle_pairs(keyfunc, n, pairs):
    """Split ``pairs`` into ``n`` buckets by the stable hash of their key.

    >>> shuffle_pairs(lambda p: p[0], 2, [("a", 1), ("a", 2)])[stable_hash("a") % 2]
    [('a', 1), ('a', 2)]
    """
    buckets = [[] for _ in range(n)]
    for pair in pairs:
        buckets[stable_hash(keyfunc(pair)) % n].append(pair)
    return buckets


def pick_bucket(j, *shuffled):
    return [pair for buckets in shuffled for pair in buckets[j]]


def aggregate(aggfn, *results):
    """``aggfn(*results)``, or without ``aggfn`` their concatenation (lists or pandas objects)."""
    if aggfn is not None:
        return aggfn(*results)
    if all(isinstance(r, list) for r in results):
        return [item for r in results for item in r]
    if results and all(hasattr(r, "iloc") for r in results):
        import pandas as pd

        return pd.concat(results)
    return list(results)


BUILTIN_RULES = {
    "ds": {"csvsrc": csvsrc},
    "dd": {"read_csv_blocks": read_csv_blocks},
    "mr": {"mapreduce": mapreduce, "shuffler": shuffler, "bucket": bucket, "reducer": reducer},
}
