"""Scheduler-side capture of plain Dask work, replayed on a fresh cluster with equal fingerprints."""

import pickle
import time

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster, get_client

from julius_magics.cluster import capture
from julius_magics.cluster.capture import (
    capture_plugins, capture_stats, drain_capture, install_capture, key_text,
    replay_graph, replay_run, start_capture, stop_capture,
)
from julius_magics.fingerprint import fingerprint


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      scheduler_kwargs={"plugins": capture_plugins()}) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def fresh():
    """A second cluster, started without the plugins: replay happens there."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as c:  # .compute() must keep running on the captured cluster
        yield c


@pytest.fixture
def captured(client):
    """Capture on for one test; the events it made are drained afterwards either way."""
    drain_capture(client)
    start_capture(client)
    yield client
    stop_capture(client)
    drain_capture(client)


def graphs(events):
    return [e for e in events if e["kind"] == "graph"]


def assert_replays(events, fresh):
    assert events
    for event in graphs(events):
        assert event["fingerprints"], f"no fingerprint arrived for graph {event['seq']}"
        assert set(event["fingerprints"]) == set(event["keys"])
        assert replay_graph(fresh, event) == event["fingerprints"]


def test_dataframe_from_pandas_and_csv(captured, fresh, tmp_path):
    pdf = pd.DataFrame({"g": list("abcab") * 20, "x": np.arange(100.0)})
    path = tmp_path / "data.csv"
    pdf.to_csv(path, index=False)
    total = dd.from_pandas(pdf, npartitions=3).groupby("g").x.sum().compute()
    csv_mean = dd.read_csv(str(path), blocksize=500).x.mean().compute()
    events = drain_capture(captured)
    assert [e["kind"] for e in events] == ["graph", "graph"]
    assert events[0]["fingerprints"][events[0]["keys"][0]] == fingerprint(total)
    assert events[1]["fingerprints"][events[1]["keys"][0]] == fingerprint(csv_mean)
    assert events[0]["descriptions"][events[0]["keys"][0]] == "Series 3 (float64)"
    assert_replays(events, fresh)


def test_array_and_delayed(captured, fresh):
    result = (da.arange(1000, chunks=100) ** 2).sum().compute()
    value = dask.delayed(sum)([dask.delayed(lambda i: i * 3)(i) for i in range(5)]).compute()
    events = drain_capture(captured)
    assert len(graphs(events)) == 2
    assert list(events[0]["fingerprints"].values()) == [fingerprint(result)]
    assert list(events[1]["fingerprints"].values()) == [fingerprint(value)] == [fingerprint(30)]
    assert events[0]["ntasks"] > 10
    assert_replays(events, fresh)


def test_futures_submit_and_map(captured, fresh):
    a = captured.submit(lambda x: x + 1, 41)
    b = captured.map(lambda x: x * x, range(4))
    c = captured.submit(sum, b)
    assert c.result() == 14 and a.result() == 42
    events = drain_capture(captured)
    fps = {k: fp for e in graphs(events) for k, fp in e["fingerprints"].items()}
    assert fps[key_text(a.key)] == fingerprint(42)
    assert fps[key_text(c.key)] == fingerprint(14)
    assert [fps[key_text(f.key)] for f in b] == [fingerprint(i * i) for i in range(4)]
    # c's graph brings the specs of the futures it depends on: it replays on its own
    last = graphs(events)[-1]
    assert last["keys"] == [key_text(c.key)] and last["ntasks"] == 5
    assert replay_graph(fresh, last) == {key_text(c.key): fingerprint(14)}
    assert_replays(events, fresh)


def test_persist_then_compute(captured, fresh):
    x = da.ones((40, 40), chunks=10).persist()
    total = (x + 1).sum().compute()
    events = drain_capture(captured)
    persisted, computed = graphs(events)
    assert len(persisted["keys"]) == 16
    assert set(persisted["fingerprints"].values()) == {fingerprint(np.ones((10, 10)))}
    assert list(computed["fingerprints"].values()) == [fingerprint(total)] == [fingerprint(np.float64(3200.0))]
    assert computed["ntasks"] > 16  # the persisted chunks' specs travel with the graph
    assert_replays(events, fresh)


def test_graphs_submitted_by_tasks_are_not_captured(captured):
    def inner(n):
        c = get_client()
        return c.submit(lambda v: v * 10, n, key=f"inner-{n}").result()

    assert captured.submit(inner, 4, key="outer-4").result() == 40
    events = drain_capture(captured)
    assert [e["keys"] for e in events] == [["outer-4"]]
    assert events[0]["client"].startswith("Client-") and not events[0]["client"].startswith("Client-worker-")


def test_nothing_captured_when_off(client):
    drain_capture(client)
    stop_capture(client)
    assert client.submit(lambda: 5, pure=False).result() == 5
    client.run(len, "abc")
    assert drain_capture(client) == []


def test_client_run_captured_and_internal_skipped(captured, fresh):
    assert set(captured.run(len, "abcd").values()) == {4}
    captured.run(capture.key_text, "internal")  # julius_magics.* function: plumbing, not journalled
    events = drain_capture(captured)
    assert [(e["kind"], e["name"]) for e in events] == [("run", "builtins.len")]
    payload = pickle.loads(events[0]["function"])
    assert pickle.loads(payload["args"]) == ("abcd",)
    assert set(replay_run(fresh, events[0]).values()) == {4}


def test_worker_plugin_registration_captured(captured):
    from distributed.diagnostics.plugin import WorkerPlugin

    class Marker(WorkerPlugin):
        name = "user-marker"

        def setup(self, worker):
            worker.user_marker = True

    captured.register_plugin(Marker())
    events = drain_capture(captured)
    assert [(e["kind"], e["name"], e["nanny"]) for e in events] == [("worker_plugin", "user-marker", False)]
    assert isinstance(events[0]["plugin"], bytes) and len(events[0]["plugin"]) > 0


def test_julius_keys_are_not_captured(captured):
    assert captured.submit(lambda: 1, key="julius-node-abc").result() == 1
    assert drain_capture(captured) == []


def test_install_on_running_cluster_is_idempotent(fresh):
    install_capture(fresh)
    install_capture(fresh)
    start_capture(fresh)
    try:
        assert fresh.submit(lambda: "v", key="after-install").result() == "v"
        events = drain_capture(fresh)
        assert [(e["keys"], e["fingerprints"]) for e in events] == [(["after-install"], {"after-install": fingerprint("v")})]
    finally:
        stop_capture(fresh)


def test_big_graph_capture_keeps_event_loop_free(captured):
    """20k tasks: the hook only collects references; pickling runs in a thread."""
    before = capture_stats(captured)
    x = da.ones(20_000, chunks=1).sum()
    future = captured.compute(x)  # scheduled, then cancelled: capture needs no execution
    deadline = time.monotonic() + 30
    while capture_stats(captured)["graphs"] == before["graphs"] and time.monotonic() < deadline:
        time.sleep(0.01)
    pings = []
    for _ in range(5):  # the scheduler answers while the specs are being pickled
        started = time.perf_counter()
        captured.run_on_scheduler(lambda: None)
        pings.append(time.perf_counter() - started)
    captured.cancel(future)
    events = drain_capture(captured)
    after = capture_stats(captured)
    assert len(events) == 1 and events[0]["ntasks"] >= 20_000
    assert len(pickle.loads(events[0]["specs"])["specs"]) == events[0]["ntasks"]
    hook = after["hook_seconds_max"]
    serialize = after["serialize_seconds_total"] - before["serialize_seconds_total"]
    assert hook < 0.25, f"update_graph hook blocked the event loop {hook:.3f} s"
    assert max(pings) < 1.0, pings
    print(f"20k tasks: hook {hook * 1e3:.1f} ms, pickling off-loop {serialize * 1e3:.1f} ms, pings {max(pings) * 1e3:.1f} ms")


def test_other_clients_of_the_cluster_are_not_journaled(captured):
    with Client(captured.scheduler.address, set_as_default=False) as colleague:
        assert colleague.submit(sum, [1, 2, 3], pure=False).result() == 6
    assert captured.submit(sum, [4, 5], pure=False).result() == 9
    events = graphs(drain_capture(captured))
    assert len(events) == 1 and events[0]["client"] == captured.id
