"""Capture overhead on a plain Dask graph: the same graph computed with capture off and on.

Usage::

    python benchmarks/bench_capture.py [--n 100000] [--workers 2] [--repeat 1] [--map 10000]

Each round computes a fresh ``dask.array`` reduction of about N tasks (N/2
one-element chunks, ``split_every=32``) once with capture off and once with capture
on, in alternating order, on one LocalCluster (processes).  The captured time
includes draining the journal (pickled specs and fingerprints).  Prints both
times and the ratio; the target is a ratio of at most 1.02.  Then a captured
``client.map`` of ``--map`` keys: how long the capture hook held the scheduler's
event loop for it (every key of a map is a wanted key).
"""

import argparse
import time

import dask.array as da
from distributed import Client, LocalCluster

from julius_magics.cluster.capture import capture_plugins, capture_stats, drain_capture, start_capture, stop_capture


def graph(n: int, salt: int):
    # n/2 one-element chunks: a creation task and a chunk-sum task each, plus the tree.
    # A different salt per run gives new keys, so nothing is reused between runs.
    return da.full(n // 2, salt + 1, chunks=1).sum(split_every=32)


def timed(client, n, salt, captured):
    if captured:
        start_capture(client)
    started = time.perf_counter()
    value = graph(n, salt).compute()
    events = drain_capture(client) if captured else []
    elapsed = time.perf_counter() - started
    stop_capture(client)
    assert value == (n // 2) * (salt + 1)
    if captured:
        assert len(events) == 1 and events[0]["fingerprints"], "capture missed the graph"
    return elapsed, (len(graph(n, salt).__dask_graph__()))


def map_hook_seconds(client, n):
    """Seconds the capture hook took on the scheduler's event loop for one ``client.map`` of ``n`` keys."""
    start_capture(client)
    before = capture_stats(client)["hook_seconds_total"]
    futures = client.map(_inc, range(n), key=[f"bench-map-{i}" for i in range(n)])
    assert client.gather(futures) == list(range(1, n + 1))
    seconds = capture_stats(client)["hook_seconds_total"] - before
    drain_capture(client)
    stop_capture(client)
    return seconds


def _inc(x):
    return x + 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="tasks in the graph (about)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of (off, on)")
    parser.add_argument("--map", type=int, default=10_000, help="keys of the captured client.map")
    args = parser.parse_args(argv)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      scheduler_kwargs={"plugins": capture_plugins()}) as cluster, Client(cluster) as client:
        timed(client, 1000, -1, captured=False)  # warm up imports on the workers
        off, on = [], []
        for r in range(args.repeat):
            order = (False, True) if r % 2 == 0 else (True, False)
            for captured in order:
                elapsed, ntasks = timed(client, args.n, 2 * r + captured, captured)
                (on if captured else off).append(elapsed)
                print(f"round {r}: {'captured' if captured else 'plain   '} {ntasks:,} tasks {elapsed:8.2f} s", flush=True)
        stats = capture_stats(client)
        mapped = map_hook_seconds(client, args.map)
    t_off, t_on = sum(off) / len(off), sum(on) / len(on)
    print(f"tasks per graph      {ntasks:,}")
    print(f"not captured         {t_off:8.2f} s  ({t_off / ntasks * 1e3:.3f} ms/task)")
    print(f"captured             {t_on:8.2f} s  ({t_on / ntasks * 1e3:.3f} ms/task)")
    print(f"ratio                {t_on / t_off:8.4f}  (overhead {100 * (t_on / t_off - 1):+.2f} %; target <= +2 %)")
    print(f"hook on event loop   {stats['hook_seconds_max'] * 1e3:8.1f} ms max; pickling off loop {stats['serialize_seconds_total']:.2f} s total")
    print(f"client.map of {args.map:,} keys: hook on event loop {mapped * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
