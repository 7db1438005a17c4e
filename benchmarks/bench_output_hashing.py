"""What recording costs a notebook whose workers write its outputs, and how long its cell's end waits.

Usage::

    python benchmarks/bench_output_hashing.py [--rounds 2] [--rows 4000000]

A plain Dask notebook (its own ``LocalCluster``: 2 worker processes, 1 thread each)
writes a DataFrame of 15 float columns to Parquet (16 files, about 545 MB with the
default rows, uncompressed), unrecorded and recorded, alternating in both orders, after
one unrecorded run that is not counted.  The recording hashes each output (its SHA-256 is
compared on replay): in the background once the task that wrote it ends, else at the
drain that ends the cell.  Prints recorded / unrecorded, and that drain's seconds.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

CELL = """
import numpy as np, pandas as pd, dask.dataframe as dd
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
df = dd.from_pandas(pd.DataFrame({"x": np.arange(rows, dtype=float)}), npartitions=16)
df = df.assign(**{c: df.x * i for i, c in enumerate("abcdefghijklmn")})
df.to_parquet(target, compression=None)
"""

CLOSE_CELL = """
client.close()
cluster.close()
"""


def run_notebook(work, n, rows, recorded):
    """(notebook seconds, seconds of the drain at the writing cell's end, bytes written)."""
    from julius_magics import recording
    from julius_magics.cluster.session import Session
    from julius_magics.recording.store import Store

    namespace, drain = {"rows": rows, "target": f"{work}/out-{n}"}, 0.0
    t0 = time.monotonic()
    recorder = recording.start(Session(), f"writes-{n}", store=Store(f"{work}/store-{n}")) if recorded else None
    exec(CELL, namespace)
    if recorder is not None:
        t = time.monotonic()
        recorder.add_cell(CELL)
        drain = time.monotonic() - t
    exec(CLOSE_CELL, namespace)
    if recorder is not None:
        recorder.add_cell(CLOSE_CELL)
        recording.stop()
    seconds = time.monotonic() - t0
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(namespace["target"]) for f in fs)
    shutil.rmtree(namespace["target"])
    return seconds, drain, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (plain, recorded, recorded, plain)")
    parser.add_argument("--rows", type=int, default=4_000_000)
    args = parser.parse_args()

    import warnings
    warnings.filterwarnings("ignore", message=".*large graph.*")   # the DataFrame travels in the graph
    work = tempfile.mkdtemp(prefix="bench-writes-")   # not tempfile's tmp* names: those are never outputs
    try:
        run_notebook(work, 0, args.rows, False)   # not counted: the first run of a process imports more
        runs, n = {False: [], True: []}, 0
        for _ in range(args.rounds):
            for recorded in (False, True, True, False):
                n += 1
                runs[recorded].append(run_notebook(work, n, args.rows, recorded))
                seconds, drain, size = runs[recorded][-1]
                print(f"  {'recorded' if recorded else 'plain':8s} notebook {seconds:6.2f} s"
                      + (f", drain at the writing cell's end {drain:.2f} s" if recorded else "")
                      + f"; {size / 1e6:.0f} MB written; load {os.getloadavg()[0]:.1f}", flush=True)
        plain, recorded = (statistics.mean(r[0] for r in runs[k]) for k in (False, True))
        print(f"writes: recorded / unrecorded = {recorded / plain:.3f} (means of {len(runs[True])}); drain at the "
              f"writing cell's end {statistics.mean(r[1] for r in runs[True]):.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
