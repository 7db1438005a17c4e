"""Benchmark: ``%cluster start -n 4`` through the session API, until the workers are ready.

Each run starts a fresh LocalCluster with the session, checks that every worker
answers a ``remote_eval``, and stops it; start and stop are timed separately.
For comparison each run also starts a plain ``LocalCluster`` + ``Client`` of the
same shape (what julius adds: the worker plugin, scheduler plugins, history).

Usage::

    python benchmarks/bench_cluster_start.py [--runs 5] [--workers 4]
"""

import argparse
import statistics
import sys
import time


def plain_start(n_workers):
    """Seconds to start a plain LocalCluster and Client until all workers are there."""
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            client.wait_for_workers(n_workers)
            return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)

    import julius_magics as jm

    session = jm.get_session()
    starts, readies, stops, plains = [], [], [], []
    for run in range(args.runs):
        plains.append(plain_start(args.workers))
        t0 = time.perf_counter()
        session.start(n_workers=args.workers, threads_per_worker=1)
        t1 = time.perf_counter()
        outputs = session.remote_eval("x = 1")
        t2 = time.perf_counter()
        if len(outputs) != args.workers:
            raise AssertionError(f"expected {args.workers} workers to answer, got {len(outputs)}")
        session.stop()
        t3 = time.perf_counter()
        starts.append(t1 - t0)
        readies.append(t2 - t0)
        stops.append(t3 - t2)
        print(f"run {run + 1}: start {t1 - t0:.2f} s, ready (first remote_eval answered) {t2 - t0:.2f} s, "
              f"stop {t3 - t2:.2f} s; plain LocalCluster + Client {plains[-1]:.2f} s", flush=True)
    print(f"median start {statistics.median(starts):.2f} s, ready {statistics.median(readies):.2f} s, "
          f"stop {statistics.median(stops):.2f} s over {args.runs} runs of {args.workers} workers; "
          f"plain LocalCluster + Client {statistics.median(plains):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
