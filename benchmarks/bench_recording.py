"""Benchmark: what recording costs, and what replay costs, on the tutorial pipeline.

In one run, on the same data (default 100 MB of training data), alternating:

- the pipeline unrecorded vs recorded (``--data embed``), each on a fresh 4-worker
  LocalCluster: recorded / unrecorded wall time of the computation (target <= 1.03);
- the recording replayed on a fresh cluster: replay compute / original compute (target <= 1.05);
- the recording's size without its data blobs (target <= 100 KB), and the data blobs that
  re-recording the same data adds (target <= 1 KB).

Usage::

    python benchmarks/bench_recording.py [--train-mb 100] [--test-mb 20] [--repeat 2]
"""

import argparse
import statistics
import tempfile
import time


def run_once(session_cls, train, test, store=None, name=None):
    from julius_magics import recording
    from julius_magics.cluster.session import set_session
    from julius_magics.tutorial import run_pipeline

    session = set_session(session_cls())
    recorder = recording.start(session, name, store=store) if name else None
    session.start(n_workers=4)
    session.remote_eval("import pandas, sklearn.ensemble, sklearn.metrics")   # warm imports, both sides
    t0 = time.monotonic()
    result = run_pipeline(session, train, test)
    elapsed = time.monotonic() - t0
    info = recording.stop() if recorder else None
    session.stop()
    return elapsed, result["auc"], info


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-mb", type=float, default=100)
    parser.add_argument("--test-mb", type=float, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from julius_magics import get_session, recording
    from julius_magics.cluster.session import Session
    from julius_magics.datasets import make_fraud_data
    from julius_magics.recording.store import Store

    work = tempfile.mkdtemp(prefix="julius-bench-")
    train, test = make_fraud_data(f"{work}/data", train_mb=args.train_mb, test_mb=args.test_mb)
    store = Store(f"{work}/store")
    plain, recorded, replayed, originals = [], [], [], []
    for i in range(args.repeat):
        t, auc_plain, _ = run_once(Session, train, test)
        plain.append(t)
        t, auc_rec, info = run_once(Session, train, test, store, f"bench-{i}")
        recorded.append(t)
        originals.append(t)
        report = recording.replay(f"bench-{i}", store=store)
        get_session().stop()
        replayed.append(report.timings["compute"])
        assert report.verified and auc_plain == auc_rec, (report.summary(), auc_plain, auc_rec)

    rec = store.open("bench-0")
    blobs = sum(rec.blobs.values())
    data_blobs = sum(f["size"] for s in rec.steps if s.kind == "data" for f in s.data["files"])
    second = store.open(f"bench-{args.repeat - 1}") if args.repeat > 1 else None
    before = sum(1 for _ in store.files.names(store.files.path("_blobs")))
    print(f"data: train {args.train_mb:g} MB, test {args.test_mb:g} MB; {args.repeat} alternating runs each")
    print(f"unrecorded compute  median {statistics.median(plain):7.2f} s  {['%.2f' % x for x in plain]}")
    print(f"recorded compute    median {statistics.median(recorded):7.2f} s  {['%.2f' % x for x in recorded]}")
    print(f"  recorded / unrecorded = {statistics.median(recorded) / statistics.median(plain):.3f}  (target <= 1.03)")
    print(f"replay compute      median {statistics.median(replayed):7.2f} s  {['%.2f' % x for x in replayed]}")
    print(f"  replay / original     = {statistics.median(replayed) / statistics.median(originals):.3f}  (target <= 1.05)")
    size_without_data = rec.info.size - data_blobs
    print(f"recording size {rec.info.size:,} B; without input data {size_without_data:,} B (target <= 100 KB); "
          f"blobs {blobs:,} B of which input data {data_blobs:,} B")
    if second is not None:
        first_data = {f["sha256"] for s in rec.steps if s.kind == "data" for f in s.data["files"]}
        second_data = {f["sha256"]: f["size"] for s in second.steps if s.kind == "data" for f in s.data["files"]}
        new_data = sum(size for sha, size in second_data.items() if sha not in first_data)
        new_other = sum(size for sha, size in second.blobs.items() if sha not in rec.blobs and sha not in second_data)
        print(f"re-recording the same data added {new_data:,} B of data blobs (target <= 1 KB) and "
              f"{new_other:,} B of other new blobs (environments); the store holds {before} blobs")


if __name__ == "__main__":
    main()
