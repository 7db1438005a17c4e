"""The fraud-like tutorial data: shape, determinism, sizes, idempotence, learnability."""

import os
import time

import numpy as np
import pandas as pd
import pytest

from julius_magics import DDataFrame
from julius_magics.datasets import TARGET, fraud_block, make_fraud_data


@pytest.fixture(scope="module")
def default_files(tmp_path_factory):
    """The default files (30 MB + 10 MB), written once for the module."""
    return make_fraud_data(tmp_path_factory.mktemp("fraud"))


def test_default_files_have_requested_sizes_and_enough_chunks(default_files):
    train, test = default_files
    assert os.path.basename(train) == "train_fraud.csv" and os.path.basename(test) == "test_fraud.csv"
    assert 30e6 <= os.path.getsize(train) < 31.5e6
    assert 10e6 <= os.path.getsize(test) < 11.5e6
    assert len(DDataFrame(train, blocksize="5 MB").chunks) >= 4
    assert len(DDataFrame(test, blocksize="2.5 MB").chunks) >= 4


def test_columns_are_numeric_with_about_three_percent_fraud(default_files):
    train, test = default_files
    df = pd.read_csv(test)
    assert df.columns[-1] == TARGET
    assert {"TransactionAmt", "ProductCD", "card1", "addr1", "C1", "D1", "V1", "V20"} <= set(df.columns)
    assert all(np.issubdtype(dtype, np.number) for dtype in df.dtypes)
    assert set(df[TARGET].unique()) == {0, 1}
    assert 0.02 <= df[TARGET].mean() <= 0.04
    assert not df.isna().any().any()


def test_same_seed_gives_same_bytes_and_other_seed_other_bytes(tmp_path):
    a = make_fraud_data(tmp_path / "a", train_mb=1, test_mb=0.5, seed=3)
    b = make_fraud_data(tmp_path / "b", train_mb=1, test_mb=0.5, seed=3)
    c = make_fraud_data(tmp_path / "c", train_mb=1, test_mb=0.5, seed=4)
    for x, y, z in zip(a, b, c):
        with open(x, "rb") as fx, open(y, "rb") as fy, open(z, "rb") as fz:
            bx, by, bz = fx.read(), fy.read(), fz.read()
        assert bx == by
        assert bx != bz
    # train and test are different draws
    assert pd.read_csv(a[0]).iloc[:5].values.tolist() != pd.read_csv(a[1]).iloc[:5].values.tolist()


def test_existing_files_with_same_parameters_are_kept(tmp_path):
    train, test = make_fraud_data(tmp_path, train_mb=1, test_mb=0.5)
    stamps = (os.stat(train).st_mtime_ns, os.stat(test).st_mtime_ns)
    start = time.perf_counter()
    assert make_fraud_data(tmp_path, train_mb=1, test_mb=0.5) == (train, test)
    assert time.perf_counter() - start < 0.1
    assert (os.stat(train).st_mtime_ns, os.stat(test).st_mtime_ns) == stamps


def test_other_parameters_or_damaged_files_are_rewritten(tmp_path):
    train, test = make_fraud_data(tmp_path, train_mb=1, test_mb=0.5)
    small = os.path.getsize(train)
    make_fraud_data(tmp_path, train_mb=2, test_mb=0.5)
    assert os.path.getsize(train) >= 2e6 > small
    with open(test, "ab") as f:
        f.write(b"garbage\n")
    damaged = os.path.getsize(test)
    make_fraud_data(tmp_path, train_mb=2, test_mb=0.5)
    assert os.path.getsize(test) == damaged - len(b"garbage\n")
    assert pd.read_csv(test).shape[1] == 42


def test_a_tree_model_learns_the_fraud():
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.metrics import roc_auc_score

    train = pd.DataFrame(fraud_block(np.random.default_rng(1), 20000))
    test = pd.DataFrame(fraud_block(np.random.default_rng(2), 20000))
    model = ExtraTreesClassifier(n_estimators=30, min_samples_leaf=5, random_state=0)
    model.fit(train.drop(columns=[TARGET]), train[TARGET])
    auc = roc_auc_score(test[TARGET], model.predict_proba(test.drop(columns=[TARGET]))[:, 1])
    assert 0.83 <= auc <= 0.97


def test_writing_is_fast(tmp_path):
    start = time.perf_counter()
    make_fraud_data(tmp_path, train_mb=8, test_mb=2)
    # 10 MB; 100 MB take a few seconds (about 2 s for the 40 MB default here)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_mb": 0}, "train_mb must be a positive number"),
        ({"test_mb": "10"}, "test_mb must be a positive number"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": 1.5}, "seed must be a non-negative integer"),
    ],
)
def test_bad_parameters_are_refused_with_a_clear_message(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_fraud_data(tmp_path, **kwargs)
    assert not os.path.exists(tmp_path / "train_fraud.csv")
