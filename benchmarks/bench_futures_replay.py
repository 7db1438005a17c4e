"""Replay keeps the recorded concurrency: N futures sleeping S seconds, submitted in a loop, gathered once.

Usage::

    python benchmarks/bench_futures_replay.py [--futures 500] [--sleep 0.1] [--workers 2]

The notebook makes its own ``LocalCluster`` (processes, one thread per worker) while
recording, so every future is a captured graph; the replay builds a cluster of the same
shape and replays the graphs.  Prints the original submit-to-gather time, the replay's
time from its first submit to its last result, and the ratio (target <= 1.10; one graph at a time would
be about futures x sleep / workers... times the worker count slower).
"""

import argparse
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--futures", type=int, default=500)
    parser.add_argument("--sleep", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from julius_magics import recording
    from julius_magics.cluster.session import Session
    from julius_magics.recording.store import Store

    with tempfile.TemporaryDirectory(prefix="bench-futures-") as folder:
        store = Store(folder)
        recording.start(Session(), "futures", store=store)
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            started = time.monotonic()
            futures = [client.submit(time.sleep, args.sleep, key=f"nap-{i}") for i in range(args.futures)]
            client.gather(futures)
            original = time.monotonic() - started
        recording.stop()
        report = recording.replay("futures", store=store)
        computed = report.timings["compute"]   # the replayed graphs, first submit to last result
        whole = report.timings["replay"] - report.timings["cluster"]
        print(f"{args.futures} futures x {args.sleep} s on {args.workers} workers")
        print(f"original (submit loop to gather): {original:.2f} s")
        print(f"replay, first submit to last result: {computed:.2f} s, verified={report.verified}, "
              f"results={report.results}")
        print(f"replay / original: {computed / original:.3f} (target <= 1.10)")
        print(f"whole replay without its cluster start ({report.timings['cluster']:.2f} s), with opening and "
              f"checking the recording, comparing environments, closing: {whole:.2f} s ({whole / original:.3f})")

if __name__ == "__main__":
    main()
