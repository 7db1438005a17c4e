"""Benchmark: ``%cluster start -n 4`` in a real IPython shell, until every worker answers.

A user's first start happens in a fresh kernel: each *first start* below is a
new Python process running ``%load_ext julius_magics`` and then, after a pause
(0 s: the same breath; 1 s: the next cell), ``%cluster start -n 4`` and a
``%%remote_eval`` that every worker must answer.  ``%load_ext`` starts the
process that workers are forked from; the pause lets it finish importing.
Beside each, a fresh process starts a plain ``LocalCluster`` + ``Client`` of the
same shape (the default start method: what a Dask user waits for).  Then, in one
process, *later starts* (e.g. the replay cluster after a recording).

Usage::

    python benchmarks/bench_cluster_start.py [--runs 5] [--workers 4]

Target: ``%cluster start -n 4`` until ready <= 1.5 s.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

#: A fresh process: a shell, ``%load_ext``, a pause, then the timed start.
FIRST_START = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "julius_magics")
time.sleep({pause})
start = time.perf_counter()
shell.run_line_magic("cluster", "start -n {workers}")
answered = shell.run_cell_magic("remote_eval", "", "x = 1")
ready = time.perf_counter() - start
import julius_magics
outputs = julius_magics.get_session().remote_eval("x = 2")
shell.run_line_magic("cluster", "stop")
print(json.dumps({{"ready": ready, "workers": len(outputs)}}))
"""

#: A fresh process: a plain LocalCluster and Client.
PLAIN_START = """
import json, time
start = time.perf_counter()
from distributed import Client, LocalCluster
with LocalCluster(n_workers={workers}, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
    with Client(cluster) as client:
        client.wait_for_workers({workers})
        ready = time.perf_counter() - start
print(json.dumps({{"ready": ready}}))
"""


def in_fresh_process(source):
    out = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def later_starts(runs, workers):
    """Start, check and stop ``runs`` clusters in this process after a first one."""
    import julius_magics as jm

    session = jm.get_session()
    session.start(n_workers=workers, threads_per_worker=1)
    session.stop()
    readies, stops = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.start(n_workers=workers, threads_per_worker=1)
        outputs = session.remote_eval("x = 1")
        t1 = time.perf_counter()
        if len(outputs) != workers:
            raise AssertionError(f"expected {workers} workers to answer, got {len(outputs)}")
        session.stop()
        readies.append(t1 - t0)
        stops.append(time.perf_counter() - t1)
    return readies, stops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)

    firsts = {0: [], 1: []}
    plains = []
    for run in range(args.runs):
        line = f"run {run + 1}: first %cluster start until ready"
        for pause in firsts:
            result = in_fresh_process(FIRST_START.format(pause=pause, workers=args.workers))
            if result["workers"] != args.workers:
                raise AssertionError(f"expected {args.workers} workers to answer, got {result['workers']}")
            firsts[pause].append(result["ready"])
            line += f", {pause} s after %load_ext: {result['ready']:.2f} s"
        plains.append(in_fresh_process(PLAIN_START.format(workers=args.workers))["ready"])
        print(f"{line}; plain LocalCluster + Client (fresh process) {plains[-1]:.2f} s", flush=True)
    readies, stops = later_starts(args.runs, args.workers)
    median = statistics.median
    print(f"median of {args.runs}, {args.workers} workers: first start {median(firsts[0]):.2f} s right after "
          f"%load_ext, {median(firsts[1]):.2f} s one second after; plain LocalCluster + Client "
          f"{median(plains):.2f} s; later starts {median(readies):.2f} s, stop {median(stops):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
