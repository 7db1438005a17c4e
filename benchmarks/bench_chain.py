"""Benchmark t008 of Julius: graph creation and evaluation of a long recursive chain.

``y_n = 0.7 * y_{n-1} + 0.3 * y_{n-2}`` on NumPy vectors of 10 values
(``y_0 = 0``, ``y_1 = 1``), written as one recursive rule, expanded and run on
a 2-worker LocalCluster; for ``n <= 10k`` the same chain written with
``dask.delayed`` (one task per element) and as a plain Dask graph dict run on
the same cluster for comparison (ratios are Dask time / julius time).
The figures are the time of ``jobdeps`` (the kernel's share: expanding the graph
and cutting it into key jobs), wall time of ``compute`` (graph creation included) and peak
resident memory of the kernel plus the cluster's processes (sampled every
20 ms with psutil). The result is checked against a plain NumPy loop.

Usage::

    python benchmarks/bench_chain.py [--n 1000 10000 100000 1000000] [--workers 2]

Targets: n = 100k in <= 3 s, n = 1M in <= 30 s, peak memory <= 4 GB.
"""

import argparse
import sys
import threading
import time

import numpy as np
import psutil

#: The ``%%remote_eval`` cell.
REMOTE_SOURCE = """\
def mix(a, b):
    return 0.7 * a + 0.3 * b
"""

#: The ``%%addrules chain`` cell: one recursive rule.
RULES_SOURCE = """\
import numpy as np


def y(n):
    if n == 0:
        return ApplyFn(np.zeros, 10)()
    if n == 1:
        return ApplyFn(np.ones, 10)()
    return ApplyFn(mix)(y(n - 1), y(n - 2))
"""

DELAYED_MAX_N = 10_000


def mix(a, b):
    return 0.7 * a + 0.3 * b


def expected(n):
    """``y_n`` by a plain loop: the same float operations in the same order."""
    prev, cur = np.zeros(10), np.ones(10)
    if n == 0:
        return prev
    for _ in range(n - 1):
        prev, cur = cur, mix(cur, prev)
    return cur


class PeakMemory:
    """Peak of the summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval=0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a process that just ended
                pass
        self.peak = max(self.peak, total)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def delayed_chain(n):
    """The chain as ``dask.delayed`` objects, one task per element."""
    import dask

    prev, cur = dask.delayed(np.zeros)(10), dask.delayed(np.ones)(10)
    for _ in range(n - 1):
        prev, cur = cur, dask.delayed(mix)(cur, prev)
    return cur


def dict_chain(n):
    """The chain as a plain Dask graph dict (linear to build); returns (graph, key of y_n)."""
    dsk = {"y-0": (np.zeros, 10), "y-1": (np.ones, 10)}
    for i in range(2, n + 1):
        dsk[f"y-{i}"] = (mix, f"y-{i - 1}", f"y-{i - 2}")
    return dsk, f"y-{n}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    import julius_magics as jm

    session = jm.get_session()
    session.start(n_workers=args.workers, threads_per_worker=1)
    try:
        session.remote_eval(REMOTE_SOURCE)
        session.add_rules("chain", RULES_SOURCE)
        # Warm up: first compute imports and connects whatever it needs.
        session.compute(jm.ref.chain.y(3))
        print(f"{'n':>9} {'jobdeps s':>9} {'julius s':>9} {'peak MB':>8} | {'delayed s':>9} {'(build)':>8} {'peak MB':>8}"
              f" {'ratio':>6} | {'dict s':>7} {'ratio':>6}")
        for n in args.n:
            # kernel side alone: expanding the graph and cutting it into key jobs
            start = time.perf_counter()
            session.jobdeps(jm.ref.chain.y(n))
            planned = time.perf_counter() - start
            with PeakMemory() as mem:
                start = time.perf_counter()
                value = session.compute(jm.ref.chain.y(n))
                seconds = time.perf_counter() - start
            if not np.array_equal(value, expected(n)):
                raise AssertionError(f"chain n={n}: julius gave {value[:3]}..., expected {expected(n)[:3]}...")
            line = f"{n:>9} {planned:>9.2f} {seconds:>9.2f} {mem.peak / 1e6:>8.0f}"
            if n <= DELAYED_MAX_N:
                # dask.delayed: each call merges its inputs' graphs, so building the chain is quadratic
                with PeakMemory() as dmem:
                    start = time.perf_counter()
                    chain = delayed_chain(n)
                    built = time.perf_counter() - start
                    dvalue = session.client.compute(chain).result()
                    dseconds = time.perf_counter() - start
                # the same graph as a plain dict: what a careful Dask user would write
                dsk, key = dict_chain(n)
                start = time.perf_counter()
                gvalue = session.client.get(dsk, key)
                gseconds = time.perf_counter() - start
                assert np.array_equal(dvalue, value) and np.array_equal(gvalue, value)
                line += (f" | {dseconds:>9.2f} {built:>8.2f} {dmem.peak / 1e6:>8.0f} {dseconds / seconds:>6.1f}"
                         f" | {gseconds:>7.2f} {gseconds / seconds:>6.1f}")
            print(line, flush=True)
    finally:
        session.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
