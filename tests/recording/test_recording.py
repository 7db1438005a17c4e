"""Recording and replay end to end, on real LocalClusters, through the API, the magics and the CLI."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import julius_magics as jm
from tests.support import run
from julius_magics import getdata, recording
from julius_magics.cluster.session import Session, set_session
from julius_magics.datasets import make_fraud_data
from julius_magics.errors import DataChangedError, EnvironmentMismatchError, IntegrityError
from julius_magics.recording.store import Store
from julius_magics.tutorial import run_pipeline

SMALL = dict(train_blocksize="1.5 MB", test_blocksize="1 MB", options={"n_estimators": 10, "min_samples_leaf": 5})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_fraud_data(tmp_path_factory.mktemp("data"), train_mb=4, test_mb=2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def tutorial(data, store):
    """The tutorial pipeline recorded on 4 workers."""
    session = set_session(Session())
    recording.start(session, "tutorial", store=store, note="4 workers")
    session.start(n_workers=4)
    result = run_pipeline(session, *data, **SMALL)
    info = recording.stop()
    session.stop()
    return {"result": result, "info": info}


def _stop():
    jm.get_session().stop()


def test_recording_holds_the_journal_environment_data_and_results(tutorial, store, data):
    info = tutorial["info"]
    assert info.status == "complete" and info.workers == 4 and info.note == "4 workers"
    rec = store.open("tutorial")
    kinds = [s.kind for s in rec.steps]
    assert kinds[:2] == ["cluster", "environment"] and {"remote_eval", "rules", "data", "dispatch"} <= set(kinds)
    env = rec.steps[1].data
    assert len(env["workers"]) == 4 and env["kernel"] in rec.blobs
    files = {f["path"]: f for s in rec.steps if s.kind == "data" for f in s.data["files"]}
    assert set(files) == {os.path.abspath(p) for p in data}
    assert all(f["embedded"] and len(f["sha256"]) == 64 for f in files.values())
    dispatch = next(s for s in rec.steps if s.kind == "dispatch")
    results = dispatch.data["results"]
    score = tutorial["result"]["score"]
    assert results[score.id]["target"] and results[score.id]["label"] == "AUC"
    assert sum(1 for r in results.values() if r["label"] == "ml.classifiertrain") == 3   # one per train chunk


def test_replay_on_fewer_workers_verifies_and_becomes_the_session(tutorial, store):
    report = recording.replay("tutorial", store=store, n_workers=2)
    try:
        assert report.verified and report.steps == report.total_steps == tutorial["info"].steps
        assert report.results >= 4 and report.mismatches == []
        assert getdata(tutorial["result"]["score"]) == tutorial["result"]["auc"]
        assert len(jm.get_session().status()["workers"]) == 2
    finally:
        _stop()
    assert store.info("tutorial").status == "verified"


def test_replay_serves_deleted_inputs_from_the_recording(tutorial, store, data, tmp_path):
    moved = [tmp_path / os.path.basename(p) for p in data]
    for src, dst in zip(data, moved):
        os.rename(src, dst)
    try:
        report = recording.replay("tutorial", store=store, n_workers=2)
        _stop()
    finally:
        for src, dst in zip(data, moved):
            os.rename(dst, src)
    assert report.verified
    assert sorted(d["status"] for d in report.data) == ["missing: served from recording"] * 2


def test_hash_only_recording_refuses_a_changed_file(tmp_path, store):
    path = tmp_path / "in.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    session = set_session(Session())
    recording.start(session, "hashonly", store=store, data="hash")
    session.start(n_workers=1)
    assert session.compute(jm.ref.ds.csvsrc(str(path)))["a"].sum() == 4
    info = recording.stop()
    session.stop()
    assert info.size < 60_000                      # no data blob, only its hash
    path.write_text("a,b\n1,2\n3,5\n")
    with pytest.raises(DataChangedError, match=rf"input file {path} is changed.*--data hash"):
        recording.replay("hashonly", store=store)
    path.unlink()
    with pytest.raises(DataChangedError, match=rf"input file {path} is missing"):
        recording.replay("hashonly", store=store)


def test_tampered_recording_is_refused_before_anything_runs(tutorial, store, tmp_path):
    store.export("tutorial", tmp_path / "t.jrec")
    other = Store(tmp_path / "other")
    other.import_(tmp_path / "t.jrec")
    journal = tmp_path / "other" / "tutorial" / "journal"
    entry = sorted(journal.iterdir())[2]
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    entry.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="tutorial"):
        recording.replay("tutorial", store=other)
    assert not jm.get_session().active


def test_strict_env_refuses_a_different_environment(store, tmp_path):
    session = set_session(Session())
    recording.start(session, "envcheck", store=store)
    session.start(n_workers=1)
    session.compute(jm.ref.mr.reducer(5, abs))
    recording.stop()
    session.stop()
    # a package installed after the recording: the environment differs
    dist = tmp_path / "site" / "julius_canary_pkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: julius-canary-pkg\nVersion: 1.0\n")
    sys.path.insert(0, str(tmp_path / "site"))
    try:
        with pytest.raises(EnvironmentMismatchError, match="julius-canary-pkg"):
            recording.replay("envcheck", store=store, strict_env=True)
        report = recording.replay("envcheck", store=store)
        _stop()
    finally:
        sys.path.remove(str(tmp_path / "site"))
    assert report.verified and "julius-canary-pkg" in report.env_diff["packages"]["added"]


def test_mismatch_names_node_and_likely_cause(store):
    """A node that reads the clock is not reproducible: the report says which and why."""
    session = set_session(Session())
    recording.start(session, "clock", store=store)
    session.start(n_workers=1)
    session.remote_eval("import time")
    session.add_rules("c", "def now():\n    return ApplyFn(time.time_ns)()\ndef fixed():\n    return ApplyFn(int, 7)()")
    session.compute([jm.ref.c.now(label="clock"), jm.ref.c.fixed()])
    recording.stop()
    session.stop()
    report = recording.replay("clock", store=store)
    _stop()
    assert not report.verified and report.results == 2
    (m,) = report.mismatches
    assert m["label"] == "clock" and m["node"] == jm.ref.c.now().id
    assert m["cause"].startswith("non-deterministic operation")
    assert "NOT VERIFIED" in report.summary() and "clock" in report.summary()


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


PLAIN_DASK = textwrap.dedent("""
    import dask, dask.array as da, dask.dataframe as dd, pandas as pd
    from distributed import get_client
    df = dd.from_pandas(pd.DataFrame({"x": range(1000), "g": [i % 7 for i in range(1000)]}), npartitions=4)
    means = df.groupby("g").x.mean().compute()
    arr = (da.random.RandomState(42).random_sample((200, 200), chunks=50) + 1).sum().compute()
    total = dask.delayed(sum)([dask.delayed(lambda i: i * i)(i) for i in range(20)]).compute()
    futures = get_client().map(lambda i: i + 1, range(10))
    fsum = get_client().submit(sum, futures).result()
    persisted = df.x.persist()
    pmax = persisted.max().compute()
""")


def test_plain_dask_work_in_recorded_cells_replays_verified(ip, store):
    run(ip, "%cluster start -n 2")
    run(ip, f"%record start plain --store {store.url} --note 'plain dask'")
    run(ip, PLAIN_DASK)
    run(ip, "%record stop")
    assert run(ip, "fsum") == 55 and run(ip, "pmax") == 999
    run(ip, "%cluster stop")
    rec = store.open("plain")
    kinds = [s.kind for s in rec.steps]
    assert kinds.count("graph") >= 5 and "cell" in kinds
    assert any("groupby" in s.data["source"] for s in rec.steps if s.kind == "cell")
    report = run(ip, f"%replay plain --store {store.url} -n 1")
    run(ip, "%cluster stop")
    assert report.verified and report.results >= 5


def test_record_cell_magic_and_recordings_table(ip, store, capsys):
    run(ip, "%cluster start -n 1")
    run(ip, f"%%record onecell --store {store.url}\n"
            "from julius_magics import ref, compute\nvalue = compute(ref.mr.reducer(-4, abs))")
    out = capsys.readouterr().out
    run(ip, "%cluster stop")
    assert "Recording 'onecell' complete" in out and run(ip, "value") == 4
    table = run(ip, f"%recordings --store {store.url}")
    row = table.set_index("name").loc["onecell"]
    assert row["status"] == "complete" and row["steps"] >= 3 and row["workers"] == 1


def test_cli_show_diff_env_export_import_and_replay_in_a_new_process(tutorial, store, tmp_path):
    def julius(*args, check=True):
        proc = subprocess.run([sys.executable, "-m", "julius_magics.cli", "--store", store.url, *args],
                              capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(proc.stderr + proc.stdout)
        return proc

    listing = json.loads(julius("list", "--json").stdout)
    assert "tutorial" in {r["name"] for r in listing}
    shown = julius("show", "tutorial").stdout
    assert "classifiertrain" in shown and "embedded" in shown and "environment: Python" in shown
    pins = julius("env", "tutorial").stdout
    assert "dask==2026.8.0" in pins.splitlines()
    replayed = julius("replay", "tutorial", "-n", "2")
    assert "VERIFIED" in replayed.stdout and replayed.returncode == 0
    julius("export", "tutorial", str(tmp_path / "t.jrec"))
    other = tmp_path / "imported"
    assert subprocess.run([sys.executable, "-m", "julius_magics.cli", "--store", str(other), "import",
                           str(tmp_path / "t.jrec")], capture_output=True, text=True).returncode == 0
    assert Store(other).info("tutorial").steps == tutorial["info"].steps
    diff = julius("diff", "tutorial", "hashonly", check=False).stdout
    assert "tutorial vs hashonly: differences" in diff and "rules ml:" in diff
    missing = julius("show", "nope", check=False)
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    clock = julius("replay", "clock", check=False)
    assert clock.returncode == 1 and "NOT VERIFIED" in clock.stdout


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
    _stop()
    assert report.verified and report.steps == steps


def test_a_worker_killed_during_a_recorded_compute(store):
    session = set_session(Session())
    recording.start(session, "workerkill", store=store)
    session.start(n_workers=2)
    session.remote_eval("import os, time\ndef slow(i):\n    time.sleep(0.5)\n    return i * i")
    session.add_rules("w", "def sq(i):\n    return ApplyFn(slow, i)()\n"
                           "def total(n):\n    return ApplyFn(lambda *v: sum(v))(*[sq(i) for i in range(n)])")
    victim = sorted(session.client.scheduler_info()["workers"])[0]
    pid = session.client.run(os.getpid, workers=[victim])[victim]

    import threading

    killer = threading.Timer(0.7, os.kill, (pid, signal.SIGKILL))   # mid-compute: 8 tasks of 0.5 s
    killer.start()
    value = session.compute(jm.ref.w.total(8))
    killer.join()
    assert value == sum(i * i for i in range(8))
    recording.stop()
    session.stop()
    report = recording.replay("workerkill", store=store)
    _stop()
    assert report.verified


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
    _stop()
    assert report.verified and report.results == 1


def test_a_cell_that_failed_on_the_workers_while_recording_replays_as_it_happened(store):
    from julius_magics.errors import RemoteError

    session = set_session(Session())
    recording.start(session, "failedcell", store=store)
    session.start(n_workers=1)
    with pytest.raises(RemoteError):
        session.remote_eval("ok = 1\nraise RuntimeError('typo')")
    session.remote_eval("ok = 2")
    assert session.compute(jm.ref.mr.reducer(-3, abs)) == 3
    recording.stop()
    session.stop()
    steps = store.open("failedcell").steps
    assert [s.data.get("failed") for s in steps if s.kind == "remote_eval"] == [True, False]
    report = recording.replay("failedcell", store=store)
    _stop()
    assert report.verified


def test_worker_plugins_registered_while_recording_are_registered_again_on_replay(store, tmp_path):
    from distributed.diagnostics.plugin import UploadFile

    module = tmp_path / "julius_uploaded_helper.py"
    module.write_text("VALUE = 41\n")
    session = set_session(Session())
    recording.start(session, "plugin", store=store)
    session.start(n_workers=1)
    session.client.register_plugin(UploadFile(str(module)))
    future = session.client.submit(lambda: __import__("julius_uploaded_helper").VALUE + 1, pure=False)
    assert future.result() == 42
    del future
    recording.stop()
    session.stop()
    module.unlink()          # the replay's workers can only get it from the recorded plugin
    assert "worker_plugin" in [s.kind for s in store.open("plugin").steps]
    report = recording.replay("plugin", store=store)
    _stop()
    assert report.verified and report.results >= 1
