"""``julius demo``: the README's main job.

Generates the tutorial data, runs the tutorial pipeline on a fresh cluster while
recording, replays the recording in another fresh cluster and prints the
verification.  Exits 0 only when the replay verified.
"""

from __future__ import annotations

import os
import time

from . import get_session, recording
from .datasets import make_fraud_data
from .tutorial import run_pipeline

__all__ = ["run_demo"]


def run_demo(workers=4, replay_workers=2, store=None, data_dir=None, train_mb=30, test_mb=10):
    data_dir = data_dir or os.path.join(os.path.expanduser("~"), ".julius", "demo-data")
    store = recording.Store.coerce(store)
    name = time.strftime("fraud-demo-%Y%m%d-%H%M%S")

    print(f"1/4 tutorial data in {data_dir} ({train_mb:g} MB train, {test_mb:g} MB test)")
    train, test = make_fraud_data(data_dir, train_mb=train_mb, test_mb=test_mb)

    print(f"2/4 recording {name!r} into {store.url}: {workers}-worker LocalCluster, tutorial pipeline")
    session = get_session()
    recording.start(session, name, store=store, note="julius demo: fraud detection tutorial pipeline")
    try:
        session.start(n_workers=workers)
        t0 = time.monotonic()
        result = run_pipeline(session, train, test)
        elapsed = time.monotonic() - t0
    finally:
        info = recording.stop()
        session.stop()
    print(f"    AUC {result['auc']:.6f} in {elapsed:.1f}s; recording {info.status}: {info.steps} steps, "
          f"{info.size:,} bytes with data")

    print(f"3/4 replaying {name!r} in a fresh {replay_workers}-worker LocalCluster")
    report = recording.replay_with_progress(name, store=store, n_workers=replay_workers, keep=True)
    with report.session as replayed:
        replayed_auc = replayed.getdata(result["score"])

    print("4/4 verification")
    print(report.summary())
    print(f"    AUC recorded {result['auc']:.6f}, replayed {replayed_auc:.6f}")
    return 0 if report.verified and replayed_auc == result["auc"] else 1
