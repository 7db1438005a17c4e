"""Recordings read for people: ``details``, ``diff`` and ``environment_pins``, on hand-written journals."""

import json

import pytest

from julius_magics.recording import summary
from julius_magics.recording.environment import capture_environment
from julius_magics.recording.store import Store

pytestmark = pytest.mark.usefixtures("isolated_key")  # never the user's ~/.julius


def _write(store, name, rules, fp, lr):
    writer = store.create(name, {"note": f"lr {lr}", "workers": 2})
    env = writer.add_blob(json.dumps(capture_environment(), sort_keys=True, default=str).encode())
    writer.add_step("cluster", {"mode": "start", "n_workers": 2, "threads_per_worker": 1, "memory_limit": "auto",
                                "address": "tcp://127.0.0.1:1", "seed": 0})
    writer.add_step("environment", {"kernel": env, "workers": {"tcp://w1": env}})
    writer.add_step("remote_eval", {"source": f"lr = {lr}\n", "push": [], "failed": False})
    writer.add_step("rules", {"ns": "ml", "source": rules, "rules": ["train"], "failed": False})
    writer.add_step("data", {"files": [{"path": "/data/in.csv", "size": 1234, "sha256": "e" * 64,
                                        "embedded": False}]})
    writer.add_step("dispatch", {"targets": [{"id": "n1", "key": "ml.train", "label": "model"}], "key_rules": [],
                                 "seed": 0, "nodes": 3, "jobs": 1, "seconds": 0.1,
                                 "results": {"n1": {"fp": fp, "describe": f"model {lr}", "label": "model",
                                                    "target": True}}})
    writer.close()


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store")
    _write(store, "a", "def train():\n    return 1\n", "a" * 64, 0.1)
    _write(store, "b", "def train():\n    return 2\n", "b" * 64, 0.2)
    return store


def test_details_lists_steps_environment_data_and_results(store):
    shown = summary.details("a", store)
    assert shown["info"]["name"] == "a" and shown["info"]["steps"] == 6 and shown["meta"]["note"] == "lr 0.1"
    assert [s["kind"] for s in shown["steps"]] == ["cluster", "environment", "remote_eval", "rules", "data",
                                                    "dispatch"]
    assert shown["steps"][0]["summary"] == "start cluster, 2 workers x 1 threads"
    assert shown["steps"][3]["summary"] == "ml: train"
    assert shown["steps"][5]["summary"] == "model: 3 nodes in 1 key jobs, 1 results"
    assert shown["environment"]["workers"] == 1 and shown["environment"]["workers_same_as_kernel"]
    assert shown["results"] == [{"node": "n1", "label": "model", "fp": "a" * 64, "describe": "model 0.1"}]
    text = summary.format_details(shown)
    assert text.startswith("a: complete, 6 steps") and "/data/in.csv  1,234 B" in text and "hash only" in text
    assert "model: model 0.1  [aaaaaaaaaaaa]" in text


def test_diff_names_code_rules_and_results_that_differ(store):
    d = summary.diff("a", "b", store)
    assert not d["same"] and set(d["code"]) == {"remote_eval"} and set(d["rules"]) == {"ml"}
    assert "-    return 1" in d["rules"]["ml"] and "+    return 2" in d["rules"]["ml"]
    assert d["results"]["n1"]["a"] == "model 0.1" and d["results"]["n1"]["b"] == "model 0.2"
    assert d["data"] == [] and d["environment"]["same"]
    text = summary.format_diff(d)
    assert text.startswith("a vs b: differences") and "result model: model 0.1 \u2192 model 0.2" in text
    assert summary.diff("a", "a", store)["same"]


def test_environment_pins_are_requirements(store):
    pins = summary.environment_pins("a", store).splitlines()
    assert any(line.startswith("dask==") for line in pins)
