"""Fingerprints: equal values agree across processes, tiny changes differ, big frames are fast."""

import json
import os
import subprocess
import sys
import time
from collections import OrderedDict, namedtuple

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from julius_magics.fingerprint import content_fingerprint, describe, fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Point = namedtuple("Point", "x y")


class Plain:
    def __init__(self, a, b):
        self.a, self.b = a, b


def _values():
    """The same values, built the same way, in this process and in a subprocess."""
    rng = np.random.default_rng(0)
    X = rng.random((60, 3))
    y = (X[:, 0] > 0.5).astype(int)
    frame = pd.DataFrame({
        "i": np.arange(5), "f": [0.5, np.nan, 2.0, 3.0, -0.0], "s": ["a", None, "ccc", "é", ""],
        "o": [1, "x", (2, 3), None, 4.5], "cat": pd.Categorical(list("abcab")),
        "I": pd.array([1, None, 3, 4, 5], dtype="Int64"), "t": pd.date_range("2024-01-01", periods=5, tz="UTC"),
    }, index=pd.Index(list("vwxyz"), name="idx"))
    return {
        "none": None, "true": True, "int": 12345678901234567890, "float": 0.1 + 0.2, "complex": 1 + 2j,
        "str": "héllo", "bytes": b"\x00\x01", "list": [1, [2, 3]], "tuple": (1, "a"),
        "dict": {"b": 2, "a": [1, 2]}, "set": {3, 1, 2}, "frozenset": frozenset({"x"}),
        "array": np.arange(12, dtype=np.float32).reshape(3, 4), "scalar": np.int16(7),
        "frame": frame, "series": frame["f"], "index": frame.index,
        "multi": frame.set_index(["i", "s"]),
        "model": RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y),
        "logreg": LogisticRegression().fit(X, y),
        "namedtuple": Point(1, 2), "plain": Plain(1, [2]),
    }


def test_fingerprints_match_in_another_process():
    here = {name: fingerprint(v) for name, v in _values().items()}
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "import tests.test_fingerprint as t; from julius_magics.fingerprint import fingerprint;"
        "print(json.dumps({n: fingerprint(v) for n, v in t._values().items()}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str-hash salt must not matter
    out = subprocess.run([sys.executable, "-c", code, ROOT],
                         capture_output=True, text=True, env=env, check=True)
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert there == here
    assert all(len(fp) == 64 and int(fp, 16) >= 0 for fp in here.values())
    assert len(set(here.values())) == len(here)  # distinct values, distinct fingerprints


def test_equal_values_equal_fingerprints():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({1, 2, 3}) == fingerprint({3, 2, 1})
    assert fingerprint(float("nan")) == fingerprint(-float("nan"))  # x86 computes 0/0 as -nan
    df = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    assert fingerprint(df) == fingerprint(df.copy())
    assert fingerprint(df) == fingerprint(pd.concat([df.iloc[:1], df.iloc[1:]]))  # layout does not matter
    assert fingerprint(pd.Series([1, 2])) == fingerprint(pd.Series([1, 2], index=pd.Index([0, 1])))
    nan_twice = np.array([np.nan, 1.0])
    with np.errstate(invalid="ignore"):
        computed_nan = np.array([0.0, 1.0]) / np.array([0.0, 1.0])
    assert fingerprint(nan_twice) == fingerprint(computed_nan)
    arrow = pd.Series(["a", None, "bé"], dtype=pd.StringDtype("pyarrow", na_value=np.nan))
    python = pd.Series(["a", None, "bé"], dtype=pd.StringDtype("python", na_value=np.nan))
    assert fingerprint(arrow) == fingerprint(python)
    assert fingerprint(arrow.iloc[1:]) == fingerprint(python.iloc[1:])


@pytest.mark.parametrize("a, b", [
    (1, True), (1, 1.0), (0.0, -0.0), (1.0, 1.0000000000000002), ("a", b"a"), ([1, 2], (1, 2)),
    ([1, 2], [2, 1]), ({"a": 1}, {"a": 2}), ({1}, frozenset({1})), (None, "None"),
    (np.array([1, 2], dtype=np.int64), np.array([1, 2], dtype=np.int32)),
    (np.zeros((2, 3)), np.zeros((3, 2))), (np.int64(1), 1), (Point(1, 2), (1, 2)),
    (OrderedDict(a=1), {"a": 1}), (len, max),
])
def test_different_values_differ(a, b):
    assert fingerprint(a) != fingerprint(b)


def test_tiny_changes_change_frames_and_models():
    df = pd.DataFrame({"x": np.arange(1000, dtype=float), "s": [f"r{i}" for i in range(1000)]})
    base = fingerprint(df)
    changed = df.copy()
    changed.loc[999, "x"] = np.nextafter(999.0, 1000.0)
    assert fingerprint(changed) != base
    changed = df.copy()
    changed.loc[3, "s"] = "r3 "
    assert fingerprint(changed) != base
    assert fingerprint(df.rename(columns={"x": "X"})) != base
    assert fingerprint(df.set_axis(df.index + 1)) != base
    assert fingerprint(df.astype({"x": "float32"})) != base
    assert fingerprint(df[["s", "x"]]) != base
    # strings split differently must not collide
    assert fingerprint(pd.Series(["ab", "c"])) != fingerprint(pd.Series(["a", "bc"]))
    X = np.random.default_rng(1).random((50, 2))
    y = (X[:, 1] > 0.5).astype(int)
    m1 = LogisticRegression(C=1.0).fit(X, y)
    m2 = LogisticRegression(C=1.0).fit(X, y)
    assert fingerprint(m1) == fingerprint(m2)
    assert fingerprint(LogisticRegression(C=1.0)) != fingerprint(LogisticRegression(C=1.01))
    assert fingerprint(m1) != fingerprint(LogisticRegression(C=1.0).fit(X[:-1], y[:-1]))


def test_self_referencing_value():
    a = []
    a.append(a)
    b = []
    b.append(b)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint([[]])


def test_100mb_frame_under_a_second():
    df = pd.DataFrame(np.random.default_rng(0).random((1_250_000, 10)))
    assert df.memory_usage().sum() >= 100_000_000
    started = time.perf_counter()
    fp = fingerprint(df)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"fingerprint of a 100 MB frame took {elapsed:.2f} s"
    assert fp == fingerprint(df.copy())


def test_describe():
    assert describe(pd.DataFrame(np.zeros((1234, 5)))) == "DataFrame 1,234×5"
    assert describe(0.93123) == "float 0.93123"
    assert describe(None) == "None"
    assert describe([1, 2]) == "list of 2"
    assert describe({"a": 1}) == "dict of 1"
    assert describe(pd.Series([1.0, 2.0])) == "Series 2 (float64)"
    assert describe(np.zeros((3, 4), dtype=np.int8)) == "ndarray 3×4 int8"
    assert describe("x" * 100).startswith("str 'xxx") and describe("x" * 100).endswith("(len 100)")
    assert describe(LogisticRegression()) == "LogisticRegression (not fitted)"
    assert describe(LogisticRegression().fit([[0], [1]], [0, 1])) == "LogisticRegression (fitted)"


def test_a_file_that_stamps_when_it_was_written_is_fingerprinted_by_what_it_holds(tmp_path, monkeypatch):
    """gzip, zip and HDF5 (PyTables) hold the time they were written: the same data written twice
    has other bytes, but the same content fingerprint; other data has another one."""
    import gzip
    import hashlib
    import zipfile

    monkeypatch.chdir(tmp_path)
    frame = pd.DataFrame({"k": range(20), "v": np.linspace(0, 1, 20)})

    def write(i, data):
        frame.assign(v=frame.v * data).to_hdf(f"t{i}.h5", key="t", format="table")
        with gzip.GzipFile(f"t{i}.csv.gz", "wb", mtime=time.time() + i) as f:
            f.write(frame.assign(v=frame.v * data).to_csv().encode())
        with zipfile.ZipFile(f"t{i}.zip", "w") as z:
            z.writestr(zipfile.ZipInfo("a.txt", date_time=(2020, 1, 1 + i, 0, 0, 0)), f"data {data}")

    write(0, 1)
    time.sleep(1.1)   # PyTables stamps seconds
    write(1, 1)
    write(2, 2)

    def sha(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()

    for suffix in (".h5", ".csv.gz", ".zip"):
        first, again, other = (f"t{i}{suffix}" for i in range(3))
        assert sha(first) != sha(again)
        assert content_fingerprint(first) == content_fingerprint(again)
        assert content_fingerprint(first) != content_fingerprint(other)
    frame.to_csv("plain.csv")
    assert content_fingerprint("plain.csv") is None   # its bytes are what it holds
