"""Recording a plain Dask notebook costs <= 5 % over not recording it; its replay serves every file.

Usage::

    python benchmarks/bench_plain_recording.py [--csv-mb 120] [--parquet-mb 90] [--tasks 20000] [--rounds 1]
        [--skip-futures] [--hashed] [--again] [--cold]

Two notebooks that never call julius, each with its own ``LocalCluster`` (2 worker
processes, 1 thread each), run side by side in one process, unrecorded and recorded
(``recording.start`` / ``recording.stop``, ``--data embed``: the input bytes are
snapshotted), alternating in both orders (plain first, then recorded first), after
one unrecorded run that is not counted, each recorded round into a fresh store and
from a fresh ``HOME`` (no hash known from an earlier recording; the environment's
metadata read once per environment, as for any recording after a user's first: ``--cold``
adds a side from an empty ``HOME``, ``--again`` one that records the same files again,
into the last recorded side's store):

- **files**: ``dd.read_csv`` and ``dd.read_parquet`` over >= 200 MB of CSV and Parquet
  (generated in a temporary folder outside the checkout), read by the workers, with a
  few reductions over them (every CSV file is read twice); the notebook's time runs from
  its first line to its last (cluster start and close included) plus, when recorded,
  ``%record start`` and ``%record stop`` and the drains at its cells' ends; the files are
  snapshotted (read once, hashed and stored) in the background by the processes that read
  them, from their first read on, and the cluster's close waits for those not done;
- **futures**: N tiny tasks (``client.map`` of half, a ``client.submit`` loop of the
  other half), gathered once.

Then the files are deleted and the last files recording is replayed: every file is served
from the recording.  Prints recorded / unrecorded per workload, replay / original compute,
what the drains blocked the cells' ends for, and the snapshot's own time (the readers'
background seconds, and its passes over the files) beside hashing and storing the same
bytes once.
"""

import argparse
import glob
import hashlib
import os
import shutil
import statistics
import tempfile
import time

CLUSTER_LINES = """
import dask, dask.dataframe as dd
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
"""
FILES_LINES = """
csv = dd.read_csv(f"{data}/csv/*.csv", blocksize="32MB")
table = dd.read_parquet(f"{data}/parquet")
means, total, rows = dask.compute(csv.groupby("g").x.mean(), table.y.sum(), table.shape[0])
spread = float((csv.x - csv.y).abs().max().compute())   # the CSV files read a second time
"""
FILES_CELL = CLUSTER_LINES + "t0 = time.monotonic()" + FILES_LINES + "seconds = time.monotonic() - t0\n"

FUTURES_CELL = """
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
t0 = time.monotonic()
mapped = client.map(inc, range(tasks // 2))
looped = [client.submit(inc, i, key=f"inc-loop-{i}") for i in range(tasks - tasks // 2)]
total = sum(client.gather(mapped + looped))
seconds = time.monotonic() - t0
"""

CLOSE_CELL = """
client.close()
cluster.close()
"""


def inc(x):
    return x + 1


def make_data(folder, csv_mb, parquet_mb):
    """CSV files of about 15 MB and Parquet files of about 15 MB (random floats: incompressible)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    os.makedirs(f"{folder}/csv")
    os.makedirs(f"{folder}/parquet")
    rows = 300_000
    for i in range(max(1, round(csv_mb / 15))):
        pd.DataFrame({"g": rng.integers(0, 50, rows), "x": rng.random(rows), "y": rng.random(rows),
                      "z": rng.normal(size=rows)}).to_csv(f"{folder}/csv/part-{i:03d}.csv", index=False)
    for i in range(max(1, round(parquet_mb / 15))):
        pd.DataFrame({"a": rng.integers(0, 1 << 40, rows), "y": rng.random(rows), "w": rng.normal(size=rows),
                      "v": rng.random(rows), "u": rng.random(rows), "t": rng.random(rows)}).to_parquet(
            f"{folder}/parquet/part-{i:03d}.parquet", compression=None)
    return sorted(glob.glob(f"{folder}/csv/*") + glob.glob(f"{folder}/parquet/*"))


def compile_package():
    """Byte-compile julius_magics, as an installed wheel is: an editable checkout has no bytecode,
    and where ``PYTHONDONTWRITEBYTECODE`` is set (this machine) each process (every worker of a
    recorded cluster) would compile julius's modules again, 15 ms of each worker's start."""
    import compileall

    import julius_magics

    compileall.compile_dir(os.path.dirname(julius_magics.__file__), quiet=1)


def run_notebook(cells, namespace, store=None, name=None, data="embed"):
    """Run ``cells`` as a notebook does; recorded into ``store`` as ``name`` (``--data data``) when given.

    Returns (notebook seconds, the cells' own compute seconds, drain seconds, snapshot stats by reader,
    CPU seconds of the kernel and the workers until the close: a cost that other loads on the machine
    change less than wall time).
    """
    from julius_magics import recording
    from julius_magics.cluster.session import Session

    drains, workers_cpu = 0.0, 0.0
    t0, cpu0 = time.monotonic(), time.process_time()
    recorder = recording.start(Session(), name, store=store, data=data) if name else None
    if recorder is not None:   # the input files' part of the drains (collecting snapshots, storing), timed apart
        recorder.watch._files = _timed(recorder.watch._files, SNAPSHOT)
        recorder._record_files = _timed(recorder._record_files, SNAPSHOT)
    for i, cell in enumerate(cells):
        if i == len(cells) - 1:   # before the close: the workers' CPU seconds, since they started
            workers_cpu = sum(namespace["client"].run(time.process_time).values())
        exec(cell, namespace)
        if recorder is not None:
            t = time.monotonic()
            recorder.add_cell(cell)   # what %record does at each cell's end: drain, hash, snapshot
            drains += time.monotonic() - t
    if recorder is not None:
        recording.stop()
    cpu = time.process_time() - cpu0 + workers_cpu
    return time.monotonic() - t0, namespace["seconds"], drains, getattr(recorder, "snapshots", None), cpu


SNAPSHOT = []   # seconds of the drains' file parts (the cells' ends wait for these, not for the snapshots)


def _timed(method, into):
    def timed(*args, **kwargs):
        t = time.monotonic()
        try:
            return method(*args, **kwargs)
        finally:
            into.append(time.monotonic() - t)
    return timed


def hash_and_store_once(files, folder):
    """The floor of a snapshot: each file's bytes hashed and written (with fsync) once; (wall, CPU) seconds."""
    os.makedirs(folder)
    t0, cpu = time.monotonic(), time.process_time()
    for path in files:
        with open(path, "rb") as src, open(os.path.join(folder, os.path.basename(path)), "wb") as dst:
            h = hashlib.sha256()
            while chunk := src.read(32 << 20):
                h.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    return time.monotonic() - t0, time.process_time() - cpu


def side_by_side(label, cells, namespace, work, rounds, hashed=False, again=False, cold=False):
    """Each round runs the notebook plain and recorded (and, with ``hashed``, recorded with ``--data
    hash``: the input files hashed, not stored; with ``again``, recorded again into the last recorded
    side's store: the same notebook run again on the same files), in that order and then in reverse.

    Every recorded side but ``again`` starts from a fresh ``HOME`` (so an empty cache of known
    hashes): the first recording of these files. Its cache of environments (``~/.julius/cache/
    environments``: the distributions' metadata, read once per environment) is taken from a
    recording that is not counted, except on the ``cold`` side (an empty ``HOME``: a user's very
    first recording)."""
    from julius_magics.recording.store import Store

    sides = (("plain", "recorded") + (("hashed",) if hashed else ()) + (("again",) if again else ())
             + (("cold",) if cold else ()))
    totals, computes, cpus = ({side: [] for side in sides} for _ in range(3))
    snapshots, stats, last, last_home, home = [], [], None, None, os.environ["HOME"]
    run_notebook(cells, dict(namespace))   # not counted: the first run of a process imports and reads more
    environments = f"{work}/home-{label}-warm/.julius/cache/environments"
    os.environ["HOME"] = f"{work}/home-{label}-warm"
    try:   # not counted either: the environment's cache that a user's first recording leaves
        run_notebook(cells, dict(namespace), Store(f"{work}/store-{label}-warm"), f"{label}-warm")
    finally:
        os.environ["HOME"] = home
    for r in range(rounds):
        for order in (sides, sides[::-1]):
            for side in order:
                ns = dict(namespace)
                if side == "plain":
                    total, compute, _, _, cpu = run_notebook(cells, ns)
                else:
                    count = len(totals[side])
                    if side == "again":   # the last recorded side's store and home
                        target, os.environ["HOME"] = (last[0], f"{label}-again-{count}"), last_home
                    else:
                        target = (Store(f"{work}/store-{label}-{side}-{count}"), f"{label}-{side}-{count}")
                        os.environ["HOME"] = f"{work}/home-{label}-{side}-{count}"
                        os.makedirs(os.environ["HOME"])
                        if side != "cold":
                            shutil.copytree(environments, f"{os.environ['HOME']}/.julius/cache/environments")
                    SNAPSHOT.clear()
                    try:
                        total, compute, drains, by_reader, cpu = run_notebook(
                            cells, ns, *target, data="hash" if side == "hashed" else "embed")
                    finally:
                        os.environ["HOME"] = home
                    if side == "recorded":
                        last, last_home = target, f"{work}/home-{label}-{side}-{count}"
                        snapshots.append(sum(SNAPSHOT))
                        stats.append(by_reader)
                totals[side].append(total)
                computes[side].append(compute)
                cpus[side].append(cpu)
                print(f"  {label} {side:8s} notebook {total:7.2f} s, its compute {compute:7.2f} s, CPU {cpu:6.2f} s"
                      + (f", drains at the cells' ends {drains:.2f} s, of which input files {sum(SNAPSHOT):.2f} s; "
                         f"snapshots in the readers {_seconds(by_reader)}" if side != "plain" else "")
                      + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    for side in sides[1:]:
        notebook, compute, cpu = (statistics.mean(of[side]) / statistics.mean(of["plain"]) for of in (totals, computes, cpus))
        per_round = _round_ratios(totals[side], totals["plain"])
        print(f"{label}: {side} / unrecorded = {notebook:.3f} (notebook, means of {len(totals[side])}; target "
              f"<= 1.05); compute alone {compute:.3f}; CPU seconds (kernel + workers) {cpu:.3f}"
              + (f"; round by round: median {statistics.median(per_round):.3f}, {min(per_round):.3f} - "
                 f"{max(per_round):.3f}" if len(per_round) > 1 else ""))
    return last, {"plain": computes["plain"], "recorded": computes["recorded"]}, snapshots, stats


def _round_ratios(side, plain):
    """Each round's side / plain (its two runs of each, taken in both orders): this machine drifts by
    more than 5 % within minutes, and a round's runs are next to each other."""
    return [statistics.mean(side[i:i + 2]) / statistics.mean(plain[i:i + 2]) for i in range(0, len(side) - 1, 2)]


def _seconds(by_reader):
    """``1.40 s (longest reader 0.75 s), CPU 0.40 s``: the readers' snapshot seconds, summed."""
    seconds = [s.get("seconds", 0.0) for s in (by_reader or {}).values()]
    cpu = sum(s.get("cpu", 0.0) for s in (by_reader or {}).values())
    return f"{sum(seconds):.2f} s (longest reader {max(seconds, default=0.0):.2f} s), CPU {cpu:.2f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv-mb", type=float, default=120)
    parser.add_argument("--parquet-mb", type=float, default=90)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (plain, recorded, recorded, plain)")
    parser.add_argument("--skip-futures", action="store_true")
    parser.add_argument("--hashed", action="store_true",
                        help="files: a side recorded with --data hash (hashed, not stored)")
    parser.add_argument("--again", action="store_true",
                        help="files: a side recorded again into the last recorded side's store (the files known)")
    parser.add_argument("--cold", action="store_true",
                        help="files: a side recorded from an empty HOME (nothing known: a user's very first recording)")
    args = parser.parse_args()

    import tqdm.notebook  # noqa: F401  (a kernel has IPython and ipywidgets imported: not the recording's cost)

    from julius_magics import recording

    compile_package()
    work = tempfile.mkdtemp(prefix="bench-plain-")   # not tempfile's tmp* names: those are never inputs
    try:
        data = f"{work}/data"
        files = make_data(data, args.csv_mb, args.parquet_mb)
        size = sum(os.path.getsize(f) for f in files)
        print(f"data: {len(files)} files, {size / 1e6:.0f} MB ({len(glob.glob(f'{data}/csv/*'))} CSV, "
              f"{len(glob.glob(f'{data}/parquet/*'))} Parquet); load {os.getloadavg()}", flush=True)
        (store, name), computes, snapshots, stats = side_by_side(
            "files", [FILES_CELL, CLOSE_CELL], {"data": data, "time": time}, work, args.rounds, args.hashed, args.again,
            args.cold)
        floor, floor_cpu = hash_and_store_once(files, f"{work}/floor")
        stats = [by or {} for by in stats]   # (none from a julius that snapshots at the drains)
        readers = statistics.mean(sum(s.get("seconds", 0.0) for s in by.values()) for by in stats)
        cpu = statistics.mean(sum(s.get("cpu", 0.0) for s in by.values()) for by in stats)
        passes = [sum(s.get("passes", 0) for s in by.values()) for by in stats]
        print(f"snapshot: the readers' own seconds (read, hash, store; in the background, from the first read on) "
              f"{readers:.2f} s, CPU {cpu:.2f} s vs hashing and storing the bytes once {floor:.2f} s, CPU "
              f"{floor_cpu:.2f} s: {readers / floor:.2f}x, CPU {cpu / floor_cpu:.2f}x; at the drains (the cells' "
              f"ends wait for these) {statistics.mean(snapshots):.2f} s; passes over the files {passes} for "
              f"{len(files)} files (each CSV file read twice, by either worker)")
        rec = store.open(name)
        embedded = [f for s in rec.steps if s.kind == "inputs" for f in s.data["files"]]
        print(f"recording: {len(embedded)} input files embedded, {rec.info.size / 1e6:.0f} MB")
        original = statistics.mean(computes["recorded"] + computes["plain"])
        for case in ("files in place", "files deleted: every file served from the recording"):
            if case.startswith("files deleted"):
                shutil.rmtree(data)
            t0 = time.monotonic()
            report = recording.replay(name, store=store)
            replayed = time.monotonic() - t0 - report.timings["cluster"]
            print(f"replay, {case} ({sorted({d['status'] for d in report.data})}): without its cluster start "
                  f"({report.timings['cluster']:.2f} s) {replayed:.2f} s, verified={report.verified}, "
                  f"results={report.results}; replayed graphs (first submit to last result) "
                  f"{report.timings['compute']:.2f} s / original compute (mean of all rounds {original:.2f} s) = "
                  f"{report.timings['compute'] / original:.3f} (target <= 1.05); whole replay less its cluster start / "
                  f"original compute = {replayed / original:.3f}; load {os.getloadavg()[0]:.1f}", flush=True)
        if not args.skip_futures:
            side_by_side("futures", [FUTURES_CELL, CLOSE_CELL], {"tasks": args.tasks, "inc": inc, "time": time},
                         work, args.rounds)
            print(f"load {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
