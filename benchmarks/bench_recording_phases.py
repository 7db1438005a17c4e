"""Where the files notebook's recording cost goes, phase by phase.

Usage::

    python benchmarks/bench_recording_phases.py [--rounds 4] [--first]

The files notebook of ``bench_plain_recording.py`` (243 MB of CSV and Parquet, its own
``LocalCluster`` of 2 worker processes, 1 thread each), cut into its cells (the cluster's
start, the compute, the close) and each cell's end (the recorder's drain, and after the last
cell ``%record stop``).  Plain and recorded rounds alternate, after one plain run and one
recording that are not counted.  By default each recording is made *again* (the files and the
environment known from that first recording, into its store); with ``--first`` each is a
first recording (a fresh store and an empty ``HOME``: every file hashed and stored, every
distribution's metadata read).  Prints each phase's mean seconds, plain and recorded.

To compare two commits side by side, run this file from outside the checkout with
``PYTHONPATH`` set to a worktree of each in turn (the editable install yields to it).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_plain_recording as files_notebook  # noqa: E402

PHASES = {"cluster": files_notebook.CLUSTER_LINES, "compute": files_notebook.FILES_LINES,
          "close": files_notebook.CLOSE_CELL}


def run(data, store=None, name=None, data_mode="embed"):
    """``{phase: seconds}`` of one run of the notebook, recorded when ``store`` is given."""
    from julius_magics import recording
    from julius_magics.cluster.session import Session

    namespace, seconds = {"data": data}, {}
    start = time.monotonic()
    recorder = recording.start(Session(), name, store=store, data=data_mode) if store is not None else None
    seconds["%record start"] = time.monotonic() - start
    for phase, cell in PHASES.items():
        t = time.monotonic()
        exec(cell, namespace)
        seconds[phase] = time.monotonic() - t
        t = time.monotonic()
        if recorder is not None:   # what %record does at a cell's end, and at the last one %record stop
            recorder.add_cell(cell)
            if phase == "close":
                recording.stop()
        seconds[f"{phase}: its end"] = time.monotonic() - t
    seconds["whole notebook"] = time.monotonic() - start
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--first", action="store_true", help="first recordings (nothing known), not recordings again")
    args = parser.parse_args()
    from julius_magics import __file__ as code
    from julius_magics.recording.store import Store

    files_notebook.compile_package()
    work = tempfile.mkdtemp(prefix="bench-phases-")
    home = os.environ["HOME"]
    try:
        data = f"{work}/data"
        files_notebook.make_data(data, 120, 90)
        print(f"code: {os.path.dirname(code)}; {'first recordings' if args.first else 'recorded again'}", flush=True)

        def recorded(i):
            os.environ["HOME"] = f"{work}/home{i if args.first else ''}"
            os.makedirs(os.environ["HOME"], exist_ok=True)
            try:
                return run(data, Store(f"{work}/store{i if args.first else ''}"), f"r{i}")
            finally:
                os.environ["HOME"] = home

        run(data)           # the page cache warm, not counted
        recorded("warm")    # the files and the environment known afterwards, not counted
        plain, rec = [], []
        for i in range(args.rounds):
            for side in ("plain", "recorded") if i % 2 == 0 else ("recorded", "plain"):
                if side == "plain":
                    plain.append(run(data))
                else:
                    rec.append(recorded(i))
        print(f"{'phase':16s} {'plain':>7s} {'recorded':>9s} {'difference':>11s}")
        for phase in rec[0]:
            p, r = statistics.mean(x[phase] for x in plain), statistics.mean(x[phase] for x in rec)
            print(f"{phase:16s} {p:6.3f}s {r:8.3f}s {r - p:+10.3f}s")
        p, r = (statistics.mean(x["whole notebook"] for x in side) for side in (plain, rec))
        print(f"recorded / plain = {r / p:.3f} (means of {args.rounds}; load {os.getloadavg()[0]:.1f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
