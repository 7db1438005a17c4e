"""Benchmark: the tutorial pipeline through julius rules vs the same pipeline hand-written with Dask.

Both versions do the same work on the same chunks: read the training file in
5 MB blocks and the test file in 2.5 MB blocks, downsample each training block
(all fraud rows, 5 % of the others), fit an ExtraTreesClassifier on each,
average the models' predictions on each test block, pair them with the labels
by product code, shuffle the pairs into 4 buckets, concatenate, ROC AUC.

Each repetition runs each version on a fresh LocalCluster (4 workers, 1 thread
each) whose workers have already imported pandas and scikit-learn, so neither
version profits from a cache of the other; the figure is the median wall time
of the computation (cluster start not included).

Usage::

    python benchmarks/bench_tutorial.py [--repeat 3] [--workers 4] [--data DIR] [--key-rules A,B]

Target: julius / hand-written <= 1.10.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import zlib

import numpy as np
import pandas as pd

WARMUP = "import pandas, sklearn.ensemble, sklearn.metrics"


# --- the hand-written Dask version -----------------------------------------
def _line_start(f, offset):
    """Offset of the first line that starts at or after ``offset``."""
    if offset == 0:
        return 0
    f.seek(offset - 1)
    f.readline()
    return f.tell()


def _read_block(path, index, blocksize):
    """Lines of ``path`` that start in ``[index*blocksize, (index+1)*blocksize)`` (as julius cuts them)."""
    import io

    with open(path, "rb") as f:
        header = f.readline()
        start = max(_line_start(f, index * blocksize), len(header))
        end = max(_line_start(f, (index + 1) * blocksize), len(header))
        f.seek(start)
        body = f.read(end - start)
    return pd.read_csv(io.BytesIO(header + body))


def _blocks(path, blocksize):
    import dask

    n = -(-os.path.getsize(path) // blocksize)
    return [dask.delayed(_read_block)(path, i, blocksize) for i in range(n)]


def _downsample(df, seed, target="isFraud", frac=0.05):
    return pd.concat([df[df[target] == 1], df[df[target] == 0].sample(frac=frac, random_state=seed)])


def _train(df, seed, model_options, target="isFraud"):
    from sklearn.ensemble import ExtraTreesClassifier

    return ExtraTreesClassifier(random_state=seed, **model_options).fit(df.drop(columns=[target]), df[target])


def _predict(model, df, target="isFraud"):
    return model.predict_proba(df.drop(columns=[target]))[:, 1]


def _pairs(df, *probas, target="isFraud", keycol="ProductCD"):
    frame = pd.DataFrame({"proba": np.mean(probas, axis=0), "y": df[target].to_numpy()})
    keys = df[keycol].to_numpy()
    return [(int(k), frame[keys == k].reset_index(drop=True)) for k in sorted(set(keys))]


def _bucket(n_buckets, i, *pair_lists):
    # zlib.crc32 rather than hash(): hash() of str is salted per process.
    return [p for pairs in pair_lists for p in pairs if zlib.crc32(repr(p[0]).encode()) % n_buckets == i]


def _concat_auc(*buckets):
    from sklearn.metrics import roc_auc_score

    pairs = sorted((p for b in buckets for p in b), key=lambda p: p[0])
    scored = pd.concat([frame for _, frame in pairs], ignore_index=True)
    return roc_auc_score(scored["y"], scored["proba"])


def dask_pipeline(client, train_path, test_path, options, n_buckets=4):
    """The tutorial pipeline written with dask.delayed over pandas blocks; returns the AUC."""
    import dask

    train_blocks = _blocks(train_path, 5_000_000)
    test_blocks = _blocks(test_path, 2_500_000)
    models = [
        dask.delayed(_train)(dask.delayed(_downsample)(block, seed), seed, options)
        for seed, block in enumerate(train_blocks)
    ]
    pairs = [
        dask.delayed(_pairs)(block, *[dask.delayed(_predict)(m, block) for m in models]) for block in test_blocks
    ]
    buckets = [dask.delayed(_bucket)(n_buckets, i, *pairs) for i in range(n_buckets)]
    return client.compute(dask.delayed(_concat_auc)(*buckets)).result()


# --- runs ------------------------------------------------------------------
def time_dask(train_path, test_path, options, n_workers):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.run(exec, WARMUP, {})
            start = time.perf_counter()
            auc = dask_pipeline(client, train_path, test_path, options)
            return time.perf_counter() - start, auc


def time_julius(train_path, test_path, n_workers, key_rules):
    import julius_magics as jm
    from julius_magics import tutorial

    session = jm.get_session()
    session.start(n_workers=n_workers, threads_per_worker=1)
    try:
        session.remote_eval(WARMUP)
        start = time.perf_counter()
        result = tutorial.run_pipeline(session, train_path, test_path, key_rules=key_rules)
        return time.perf_counter() - start, result["auc"]
    finally:
        session.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "julius_bench_data"))
    parser.add_argument("--only", choices=["dask", "julius"], help="run one version only")
    parser.add_argument("--key-rules", default="classifiertrain",
                        help="key rules of the julius run, comma-separated (default: the tutorial's)")
    args = parser.parse_args(argv)

    from julius_magics.datasets import make_fraud_data
    from julius_magics.tutorial import OPTIONS

    train_path, test_path = make_fraud_data(args.data)
    times = {"dask": [], "julius": []}
    for rep in range(args.repeat):
        if args.only != "julius":
            seconds, auc = time_dask(train_path, test_path, OPTIONS, args.workers)
            times["dask"].append(seconds)
            print(f"run {rep + 1} hand-written dask: {seconds:6.2f} s  AUC {auc:.4f}", flush=True)
        if args.only != "dask":
            seconds, auc = time_julius(train_path, test_path, args.workers, args.key_rules.split(","))
            times["julius"].append(seconds)
            print(f"run {rep + 1} julius rules     : {seconds:6.2f} s  AUC {auc:.4f}", flush=True)
    medians = {k: statistics.median(v) for k, v in times.items() if v}
    for name, value in medians.items():
        print(f"median {name:6s}: {value:.2f} s")
    if len(medians) == 2:
        ratio = medians["julius"] / medians["dask"]
        print(f"ratio julius / dask: {ratio:.2f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
