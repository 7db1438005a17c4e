"""The recorder, on real LocalClusters: what a recording holds, and that it survives a killed kernel."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import julius_magics as jm
from julius_magics import recording
from julius_magics.cluster.session import Session, set_session
from julius_magics.recording import steps
from julius_magics.recording.store import Store


@pytest.fixture(scope="module")
def store(recordings):
    return recordings


@pytest.fixture(scope="module")
def data(fraud_data):
    return fraud_data


def test_recording_holds_the_journal_environment_data_and_results(tutorial, store, data):
    info = tutorial["info"]
    assert info.status == "complete" and info.workers == 4 and info.note == "4 workers"
    rec = store.open("tutorial")
    kinds = [s.kind for s in rec.steps]
    assert kinds[:2] == ["cluster", "environment"] and {"remote_eval", "rules", "inputs", "dispatch"} <= set(kinds)
    env = rec.steps[1].data
    assert len(env["workers"]) == 4 and env["kernel"] in rec.blobs
    # the rules' reads, seen where the workers read them (the open hook)
    files = {f["abspath"]: f for s in rec.steps if s.kind == "inputs" for f in s.data["files"]}
    assert set(files) == {os.path.abspath(p) for p in data}, sorted(files)
    assert all(f["embedded"] and len(f["sha256"]) == 64 for f in files.values())
    dispatch = next(s for s in rec.steps if s.kind == "dispatch")
    results = dispatch.data["results"]
    score = tutorial["result"]["score"]
    assert results[score.id]["target"] and results[score.id]["label"] == "AUC"
    assert sum(1 for r in results.values() if r["label"] == "ml.classifiertrain") == 3   # one per train chunk


def test_secrets_never_reach_the_store(store, tmp_path, monkeypatch):
    canary = "canary-secret-4f9b2c"
    monkeypatch.setenv("JULIUS_CANARY_TOKEN", canary)
    monkeypatch.setenv("DB_PASSWORD", canary + "-pw")
    secret_store = Store(tmp_path / "secret-store")
    session = set_session(Session())
    recording.start(session, "secrets", store=secret_store)
    session.start(n_workers=2)
    session.compute(jm.ref.mr.reducer(3, abs))
    recording.stop()
    session.stop()
    for root, _, files in os.walk(tmp_path / "secret-store"):
        for name in files:
            assert canary.encode() not in open(os.path.join(root, name), "rb").read(), name


KILLED_KERNEL = textwrap.dedent("""
    import os, signal, sys
    from julius_magics import recording, ref
    from julius_magics.cluster.session import get_session
    def main():
        s = get_session()
        rec = recording.start(s, "killed", store=sys.argv[1])
        s.start(n_workers=1)
        s.remote_eval("def mk(i):\\n    return list(range(i))")
        s.add_rules("k", "def src(i):\\n    return ApplyFn(mk, i)()")
        s.compute(ref.k.src(3))
        rec.add_cell("print('last cell before the kill')")
        print("steps", rec.steps, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if __name__ == "__main__":
        main()
""")


def test_a_killed_kernel_loses_no_recorded_step(store, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_KERNEL)
    proc = subprocess.run([sys.executable, str(script), store.url], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    steps = int(proc.stdout.split("steps")[1])
    info = store.info("killed")
    assert info.status == "incomplete" and info.steps == steps
    rec = store.open("killed")
    assert rec.steps[-1].kind == "cell" and "last cell" in rec.steps[-1].data["source"]
    report = recording.replay("killed", store=store)
    # every step reproduced, but what came after the kill is unknown: never "verified" (issue 9, finding 1)
    assert not report.verified and not report.complete and report.steps == steps and not report.mismatches
    assert f"reproduced up to step {steps} of an incomplete recording" in report.summary()


def test_a_recording_started_mid_session_carries_the_earlier_code_and_rules(store):
    session = set_session(Session())
    session.start(n_workers=1)
    session.remote_eval("base = 10", push={"offset": 5})
    session.add_rules("mid", "def value():\n    return ApplyFn(lambda: base + offset)()")
    recording.start(session, "midsession", store=store)
    assert session.compute(jm.ref.mid.value()) == 15
    recording.stop()
    session.stop()
    kinds = [s.kind for s in store.open("midsession").steps]
    assert kinds[:4] == ["cluster", "environment", "remote_eval", "rules"]
    report = recording.replay("midsession", store=store)
    assert report.verified and report.results == 1


def test_every_recorded_step_holds_the_fields_and_parts_its_kind_lists(tutorial, clock, store):
    """The table of step kinds (``recording/steps.py``) is what the recorder writes, field by field."""
    for name in ("tutorial", "clock"):
        rec = store.open(name)
        for step in rec.steps:
            kind = steps.KINDS[step.kind]
            assert set(step.data) <= set(kind.fields), (step.kind, set(step.data) - set(kind.fields))
            assert set(step.part_names) <= set(kind.parts), step.kind


def test_a_step_whose_data_are_not_plain_json_is_journaled_as_json_gives_them_back(tmp_path):
    """A step's data are encoded once, as they come (a round trip through JSON first took the drain of 20k
    futures 0.1 s more); data that are not plain JSON (a NumPy number) go through that round trip."""
    import numpy as np

    store = Store(str(tmp_path / "store"))
    recorder = recording.start(Session(), "not-plain", store=store)
    recorder._record_item({"kind": "dropped", "what": "graph", "keys": [np.int64(7)], "reason": "a test",
                           "address": None})
    recording.stop()
    [step] = [s for s in store.open("not-plain").steps if s.kind == "dropped"]
    assert step.data["keys"] == ["7"] and step.data["reason"] == "a test"
