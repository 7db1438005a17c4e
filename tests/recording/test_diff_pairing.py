"""``diff`` / ``format_diff`` and ``julius diff``: results paired by node id or label, data by content."""

import subprocess
import sys

import pytest

from julius_magics.recording.summary import diff, format_diff
from julius_magics.recording.store import Store

SHA_TRAIN, SHA_TEST, SHA_OTHER = "a" * 64, "b" * 64, "c" * 64


def _record(store, name, results, files, note=""):
    """A recording with one data step and one dispatch step, written through the real ``Store``."""
    writer = store.create(name, {"note": note, "workers": 1})
    writer.add_step("data", {"files": [{"path": p, "size": 10, "sha256": sha, "embedded": False}
                                       for p, sha in files]})
    targets = [{"id": nid, "key": "ml.score", "label": r["label"]} for nid, r in results.items() if r.get("target")]
    writer.add_step("dispatch", {"targets": targets, "key_rules": [], "seed": 0, "nodes": 3, "jobs": 1,
                                 "results": results, "seconds": 0.1})
    writer.close()


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("JULIUS_KEY_FILE", str(tmp_path / "key"))
    return Store(str(tmp_path / "store"))


def test_results_pair_by_node_id_and_by_label(store):
    _record(store, "a", {"n1": {"fp": "f1", "describe": "float 0.88729", "label": "AUC", "target": True},
                         "n2": {"fp": "f2", "describe": "int 7", "label": None, "target": False},
                         "n3": {"fp": "f3", "describe": "list of 3", "label": "pairs", "target": False}},
            [("/data/train.csv", SHA_TRAIN)])
    # the same AUC under another node id (its arguments changed), n2 unchanged, n3 changed in place
    _record(store, "b", {"m1": {"fp": "g1", "describe": "float 0.886001", "label": "AUC", "target": True},
                         "n2": {"fp": "f2", "describe": "int 7", "label": None, "target": False},
                         "n3": {"fp": "g3", "describe": "list of 4", "label": "pairs", "target": False}},
            [("/data/train.csv", SHA_TRAIN)])
    d = diff("a", "b", store)
    assert d["same"] is False
    assert d["results"]["AUC"] == {"label": "AUC", "node_a": "n1", "node_b": "m1", "a": "float 0.88729",
                                   "b": "float 0.886001", "fp_a": "f1", "fp_b": "g1"}
    assert set(d["results"]) == {"AUC", "n3"}
    text = format_diff(d)
    assert "result AUC: 0.88729 \u2192 0.886001" in text
    assert "result pairs: list of 3 \u2192 list of 4" in text
    assert "absent" not in text


def test_data_compares_content_before_path(store):
    results = {"n1": {"fp": "f1", "describe": "float 0.5", "label": "AUC", "target": True}}
    _record(store, "a", results, [("/old/train.csv", SHA_TRAIN), ("/data/test.csv", SHA_TEST),
                                  ("/data/gone.csv", SHA_OTHER)])
    _record(store, "b", results, [("/new/train.csv", SHA_TRAIN), ("/data/test.csv", "d" * 64), ("/data/added.csv", "e" * 64)])
    d = diff("a", "b", store)
    by_a = {(f["a"], f["b"]): f for f in d["data"]}
    assert by_a[("/old/train.csv", "/new/train.csv")]["same_content"] is True
    assert by_a[("/data/test.csv", "/data/test.csv")]["sha_b"] == "d" * 64
    assert ("/data/gone.csv", None) in by_a and (None, "/data/added.csv") in by_a
    assert len(d["data"]) == 4   # not one "absent" line per side for the moved file
    text = format_diff(d)
    assert "data /old/train.csv \u2192 /new/train.csv: same content" in text
    assert f"data /data/test.csv: content {SHA_TEST[:16]} \u2192 {'d' * 16}" in text


def test_a_moved_file_with_the_same_bytes_alone_is_no_difference(store):
    results = {"n1": {"fp": "f1", "describe": "float 0.5", "label": "AUC", "target": True}}
    _record(store, "a", results, [("/old/train.csv", SHA_TRAIN)])
    _record(store, "b", results, [("/new/train.csv", SHA_TRAIN)])
    d = diff("a", "b", store)
    assert d["same"] is True and d["results"] == {}
    assert format_diff(d).startswith("a vs b: no differences")


def test_cli_diff_exits_1_when_recordings_differ_like_diff1(store):
    _record(store, "a", {"n1": {"fp": "f1", "describe": "float 0.88729", "label": "AUC", "target": True}}, [])
    _record(store, "a2", {"n1": {"fp": "f1", "describe": "float 0.88729", "label": "AUC", "target": True}}, [])
    _record(store, "b", {"n1": {"fp": "g1", "describe": "float 0.886001", "label": "AUC", "target": True}}, [])

    def julius(*args):
        return subprocess.run([sys.executable, "-m", "julius_magics.cli", "--store", store.url, *args],
                              capture_output=True, text=True, timeout=120)

    differ = julius("diff", "a", "b")
    assert differ.returncode == 1, differ.stderr
    assert "result AUC: 0.88729 \u2192 0.886001" in differ.stdout
    same = julius("diff", "a", "a2")
    assert same.returncode == 0 and "no differences" in same.stdout
    missing = julius("diff", "a", "nope")
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
