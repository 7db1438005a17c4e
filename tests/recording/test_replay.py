"""Replay and verification on real LocalClusters, through the Python API."""

import os
import signal
import sys

import pytest

import julius_magics as jm
from julius_magics import recording
from julius_magics.cluster.session import Session, set_session
from julius_magics.errors import DataChangedError, EnvironmentMismatchError, IntegrityError
from julius_magics.recording.store import Store


@pytest.fixture(scope="module")
def store(recordings):
    return recordings


@pytest.fixture(scope="module")
def data(fraud_data):
    return fraud_data


def test_replay_on_fewer_workers_verifies_and_hands_over_its_session(tutorial, store):
    kernels = jm.get_session()
    seen = []
    report = recording.replay("tutorial", store=store, n_workers=2, keep=True, progress=seen.append)
    with report.session as replayed:
        assert report.verified and report.steps == report.total_steps == tutorial["info"].steps
        assert report.results >= 4 and report.mismatches == []
        assert replayed.getdata(tutorial["result"]["score"]) == tutorial["result"]["auc"]
        assert len(replayed.status()["workers"]) == 2
        assert jm.get_session() is kernels   # only %replay makes the replay's session the kernel's
    assert not replayed.active
    assert store.info("tutorial").status == "verified"
    total = tutorial["info"].steps
    assert [e.done for e in seen] == list(range(total + 1)) and {e.total for e in seen} == {total}
    assert seen[0].message == "checking data and environment" and seen[-1].message.endswith(f"({total}/{total})")


def test_replay_stops_its_session_unless_kept(clock, store):
    report = recording.replay("clock", store=store)
    assert report.session is not None and not report.session.active


def test_replay_serves_deleted_inputs_from_the_recording(tutorial, store, data, tmp_path):
    moved = [tmp_path / os.path.basename(p) for p in data]
    for src, dst in zip(data, moved):
        os.rename(src, dst)
    try:
        report = recording.replay("tutorial", store=store, n_workers=2)
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
    finally:
        sys.path.remove(str(tmp_path / "site"))
    assert report.verified and "julius-canary-pkg" in report.env_diff["packages"]["added"]


def test_mismatch_names_node_and_likely_cause(clock, store):
    """A node that reads the clock is not reproducible: the report says which and why."""
    report = recording.replay("clock", store=store)
    assert not report.verified and report.results == 2
    (m,) = report.mismatches
    assert m["label"] == "clock" and m["node"] == jm.ref.c.now().id
    assert m["cause"].startswith("non-deterministic operation")
    assert "NOT VERIFIED" in report.summary() and "clock" in report.summary()


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
    assert report.verified


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
    assert report.verified and report.results >= 1


THREADS_NOTEBOOK = '''
import numpy as np
from distributed import Client, LocalCluster, get_worker

def blas_sum(seed):   # a BLAS-heavy reduction: its last bits may follow the thread counts
    a = np.random.default_rng(seed).standard_normal((300, 300))
    return float((a @ a.T).sum())

def threads_here():   # a result that follows the cluster's shape, whatever the BLAS does
    return get_worker().state.nthreads

cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0")
client = Client(cluster)
reduced = client.submit(blas_sum, 1).result()
threads = client.submit(threads_here, pure=False).result()
client.close()
cluster.close()
'''


def test_other_thread_counts_on_replay_are_named_as_the_likely_cause(tmp_path):
    """Recorded on threads in the kernel (2 per worker), replayed on a worker process with 1 thread."""
    from distributed import LocalCluster

    store = Store(tmp_path / "store")
    recorder = recording.start(Session(), "threads", store=store)
    namespace = {}
    exec(compile(THREADS_NOTEBOOK, "<threads>", "exec"), namespace)
    recorder.add_cell(THREADS_NOTEBOOK)
    recording.stop()
    assert namespace["threads"] == 2
    spec = next(s.data["spec"] for s in store.open("threads").steps if s.kind == "adopted_cluster")
    assert (spec["processes"], spec["threads_per_worker"]) == (False, 2)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as other:
        report = recording.replay("threads", store=store, address=other.scheduler_address)
    assert not report.verified
    assert report.env_diff["threads"]["threads per worker"] == [2, 1]
    assert report.env_diff["threads"]["workers in processes"] == [False, True]
    (cause,) = {m["cause"] for m in report.mismatches if m["replayed_value"] == "int 1"}   # threads_here
    assert "threads per worker 2 -> 1" in cause and "workers in processes False -> True" in cause
    assert cause.startswith("the cluster runs tasks otherwise (") and "python" not in cause
    assert "threads per worker: recorded 2, replayed with 1" in report.summary()


def test_the_latest_replay_sandboxes_are_kept_and_older_ones_removed(tmp_path, monkeypatch):
    from julius_magics.recording import replaying

    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / ".julius" / "replays"
    for i in range(25):   # earlier replays' sandboxes, oldest first
        (root / f"earlier-{i:02d}" / "out").mkdir(parents=True)
        os.utime(root / f"earlier-{i:02d}", (1_000_000 + i, 1_000_000 + i))
    folder = replaying._new_sandbox("mine")
    kept = sorted(os.listdir(root))
    assert len(kept) == replaying.SANDBOXES_KEPT == 20
    assert kept == [f"earlier-{i:02d}" for i in range(6, 25)] + [os.path.basename(folder)]
    assert os.path.basename(folder).startswith("mine-") and os.path.isdir(folder)
