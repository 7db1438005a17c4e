"""What journaling a drain of many small graphs costs, a step at a time against one batch, and opening it.

Usage::

    python benchmarks/bench_drain.py [--graphs 3000] [--map 0] [--rounds 1] [--open-steps 10000] [--profile]

A recorder (``recording.start``) adopts a ``LocalCluster`` (2 worker processes); each
round submits N tiny futures in a loop (N captured graphs; with ``--map M``, one
``client.map`` of M tasks first, as ``bench_plain_recording.py`` does), gathers them, then drains
them as a cell's end does (``Recorder.add_cell``), timed: once as the recorder does it
today, once with the drain inside ``writer.batch()`` (the one-line change proposed for
``Recorder._drain``), in alternating order. The scheduler's part (the ``drain_capture``
call, run specs pickled there) is timed apart. Then a recording of ``--open-steps`` graph
steps (each with a 700-byte part) is written and opened (every byte verified).

Run it against another checkout with ``PYTHONPATH=that/checkout`` from outside this one:
a version without ``batch`` measures the step-at-a-time side only.
"""

import argparse
import cProfile
import os
import pstats
import shutil
import tempfile
import time


def inc(x):
    return x + 1


def drain_in_a_batch(recorder):
    """``Recorder._drain`` wrapped in ``with self.writer.batch():``, as the proposed change does."""
    original = type(recorder)._drain

    def _drain(final=False):
        with recorder.writer.batch():
            return original(recorder, final)

    return _drain


def timed_drain(recorder, client, n, batch, salt, profile=False, mapped=0):
    from julius_magics.cluster import capture, watch

    futures = client.map(inc, range(mapped), key=[f"map-{salt}-{i}" for i in range(mapped)]) if mapped else []
    futures += [client.submit(inc, i, key=f"inc-{salt}-{i}") for i in range(n)]
    client.gather(futures)
    scheduler = []
    real = capture.drain_capture

    def drain_capture(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            scheduler.append(time.perf_counter() - t)

    watch.capture.drain_capture = drain_capture
    if batch:
        recorder._drain = drain_in_a_batch(recorder)
    profiler = cProfile.Profile() if profile else None
    try:
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        recorder.add_cell(f"futures {salt}")
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - t0
    finally:
        watch.capture.drain_capture = real
        recorder.__dict__.pop("_drain", None)
    del futures
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(14)
    return elapsed, sum(scheduler)


def write_and_open(store, steps, batch):
    """Seconds to write a recording of ``steps`` graph steps, and to open it."""
    writer = store.create(f"open-{steps}-{'batch' if batch else 'steps'}")
    data = {"address": "tcp://127.0.0.1:35459", "client": "Client-8745a39d-ee1f-11f1-96ce-02fc00000001",
            "kind": "graph", "ntasks": 1, "pending": [], "scattered": [], "time": 1796195463.5683239}
    t0 = time.perf_counter()
    with writer.batch() if batch else _nothing():
        for i in range(steps):
            key = f"inc-loop-{i}"
            writer.add_step("graph", {**data, "seq": i, "keys": [key], "descriptions": {key: f"int {i + 1}"},
                                      "fingerprints": {key: f"{i:064x}"}}, {"specs": os.urandom(700)})
    writer.close()
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = store.open(writer.name)
    assert len(rec.steps) == steps
    return written, time.perf_counter() - t0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graphs", type=int, default=3000, help="futures submitted (graphs captured) a drain")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (step at a time, batch), alternating")
    parser.add_argument("--map", type=int, default=0, help="tasks of one client.map graph submitted too")
    parser.add_argument("--open-steps", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile of each drain")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-drain-")
    os.environ["JULIUS_KEY_FILE"] = os.path.join(work, "key")

    from distributed import Client, LocalCluster

    from julius_magics import recording
    from julius_magics.cluster import capture
    from julius_magics.cluster.session import Session
    from julius_magics.recording.store import Store

    store = Store(f"{work}/store")
    recorder = recording.start(Session(), "drains", store=store)
    has_batch = hasattr(recorder.writer, "batch")
    modes = (False, True) if has_batch else (False,)
    print(f"julius_magics from {os.path.dirname(recording.__file__)}; batch: {has_batch}; "
          f"load {os.getloadavg()}", flush=True)
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            recorder.add_cell("client = Client(cluster)")   # adopts the cluster: its steps are not timed
            timed_drain(recorder, client, 100, False, "warm-up")
            results = {mode: [] for mode in modes}
            for r in range(args.rounds):
                for batch in (modes if r % 2 == 0 else modes[::-1]):
                    pickled = capture.capture_stats(client)["serialize_seconds_total"]
                    elapsed, scheduler = timed_drain(recorder, client, args.graphs, batch, f"{r}-{batch}",
                                                     args.profile, args.map)
                    pickled = capture.capture_stats(client)["serialize_seconds_total"] - pickled
                    results[batch].append(elapsed)
                    print(f"round {r} {'batch        ' if batch else 'step by step '} drain of {args.graphs} graphs "
                          f"{elapsed:6.2f} s = {elapsed / args.graphs * 1e3:.3f} ms/graph (scheduler's part "
                          f"{scheduler / args.graphs * 1e3:.3f} ms/graph, of which pickling run specs "
                          f"{pickled / args.graphs * 1e3:.3f}); load {os.getloadavg()[0]:.2f}", flush=True)
        recording.stop()
        t0 = time.perf_counter()
        rec = store.open("drains")
        opened = time.perf_counter() - t0
        print(f"open the recording ({len(rec.steps)} steps): {opened:.2f} s = "
              f"{opened / len(rec.steps) * 1e3:.3f} ms/step")
        if has_batch:
            mean = {mode: sum(times) / len(times) for mode, times in results.items()}
            print(f"batch / step by step = {mean[True] / mean[False]:.3f}")
        if args.open_steps:
            written, opened = write_and_open(store, args.open_steps, has_batch)
            print(f"recording of {args.open_steps} graph steps: written in {written:.2f} s "
                  f"({'one batch' if has_batch else 'step by step'}), opened (every byte verified) in "
                  f"{opened:.2f} s = {opened / args.open_steps * 1e3:.3f} ms/step; load {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
