"""Scheduler-side capture of plain Dask work, replayed on a fresh cluster with equal fingerprints."""

import gc
import logging
import pickle
import threading
import time

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster, get_client

from julius_magics.cluster import capture, capture_plugin, resubmit
from julius_magics.cluster.capture import (
    capture_plugins, capture_stats, drain_capture, install_capture, key_text, start_capture, stop_capture,
)
from julius_magics.cluster.resubmit import replay_graph, replay_run
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
    # two computes in a row: one event, the second graph sent once the first's result was fetched
    [event] = events
    assert event["kind"] == "graph" and event["graphs"] == 2
    total_key, mean_key = event["keys"]
    assert event["after"][-1][:2] == [mean_key, [total_key]] and event["after"][-1][2] >= event["time"]
    assert event["fingerprints"][total_key] == fingerprint(total)
    assert event["fingerprints"][mean_key] == fingerprint(csv_mean)
    assert event["descriptions"][total_key] == "Series 3 (float64)"
    assert_replays(events, fresh)


def test_array_and_delayed(captured, fresh):
    result = (da.arange(1000, chunks=100) ** 2).sum().compute()
    value = dask.delayed(sum)([dask.delayed(lambda i: i * 3)(i) for i in range(5)]).compute()
    events = drain_capture(captured)
    [event] = graphs(events)
    assert event["graphs"] == 2 and event["ntasks"] > 10
    assert event["after"][-1][:2] == [event["keys"][1], [event["keys"][0]]]   # (the first: what earlier tests fetched)
    assert [event["fingerprints"][k] for k in event["keys"]] == [fingerprint(result), fingerprint(value)]
    assert fingerprint(value) == fingerprint(30)
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
    [event] = graphs(events)   # three graphs in a row: one event, replayed on its own
    assert event["graphs"] == 3 and event["ntasks"] == 6
    assert event["keys"][0] == key_text(a.key) and event["keys"][-1] == key_text(c.key)   # in the order sent
    assert sorted(event["keys"]) == sorted(key_text(f.key) for f in [a, *b, c])
    assert_replays(events, fresh)


def test_graph_using_futures_of_an_earlier_step_brings_their_specs(captured, fresh):
    b = captured.map(lambda x: x * x, range(4))
    assert captured.gather(b) == [0, 1, 4, 9]
    drain_capture(captured)
    c = captured.submit(sum, b)
    assert c.result() == 14
    [event] = graphs(drain_capture(captured))
    assert event["keys"] == [key_text(c.key)] and event["ntasks"] == 5
    assert replay_graph(fresh, event) == {key_text(c.key): fingerprint(14)}


class RefusedByTheCapture:
    """A task argument that pickles anywhere but in the capture's thread: run specs it cannot pickle."""

    def __reduce__(self):
        if threading.current_thread().name.startswith("julius-capture"):
            raise TypeError("refused by the capture")
        return (RefusedByTheCapture, ())


def test_a_loop_with_one_graph_whose_specs_do_not_pickle_keeps_the_others(captured, fresh):
    futures = [captured.submit(lambda i: i * 2, i, key=f"salvage-{i}") for i in range(5)]
    futures.append(captured.submit(lambda x: 1, RefusedByTheCapture(), key="salvage-bad"))
    futures.append(captured.submit(lambda i: i, 9, key="salvage-after"))
    assert captured.gather(futures) == [0, 2, 4, 6, 8, 1, 9]
    [event] = graphs(drain_capture(captured))
    assert event["graphs"] == 7 and event["keys"] == [f"salvage-{i}" for i in range(5)] + ["salvage-after"]
    assert event["dropped"] == ("1 of its keys (salvage-bad) dropped: its run specs could not be pickled: "
                                "TypeError: refused by the capture")
    assert set(event["fingerprints"]) == set(event["keys"]) and event["pending"] == []
    assert replay_graph(fresh, event) == event["fingerprints"]


def test_persist_then_compute(captured, fresh):
    x = da.ones((40, 40), chunks=10).persist()
    total = (x + 1).sum().compute()
    events = drain_capture(captured)
    [event] = graphs(events)
    *chunks, total_key = event["keys"]
    assert len(chunks) == 16 and event["graphs"] == 2
    assert {event["fingerprints"][k] for k in chunks} == {fingerprint(np.ones((10, 10)))}
    assert event["fingerprints"][total_key] == fingerprint(total) == fingerprint(np.float64(3200.0))
    assert event["ntasks"] > 16
    assert_replays(events, fresh)


def test_a_replayed_batch_holding_persisted_chunks_is_let_go_and_its_client_goes_on(captured, caplog):
    x = da.ones((40, 40), chunks=10).persist()
    (x + 1).sum().compute()
    [event] = graphs(drain_capture(captured))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as other:
        for _ in range(2):   # the second time, as the replay's re-check does: the same keys anew
            batch = resubmit.GraphBatch(other)
            batch.submit(event)
            [(_, values, failure)] = batch.gather()
            assert failure is None
            assert {k: fp for k, (fp, _) in values.items()} == event["fingerprints"]
            batch.release()   # the chunks' dependents are wanted by nobody: client.cancel broke the stream here
        # the stream is alive, and (in its order) every released key went before this probe
        assert other.submit(sum, [1, 2], key="probe").result(timeout=30) == 3
        wanted = other.run_on_scheduler(lambda dask_scheduler: [k for k, ts in dask_scheduler.tasks.items()
                                                               if ts.who_wants and k != "probe"])
        assert wanted == []
    gc.collect()   # a failed scheduler handler is logged as its task is collected
    failures = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not failures, failures[0].getMessage()


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


def test_drain_while_graphs_arrive_loses_nothing(captured, fresh):
    """Graphs submitted from another thread while the kernel drains: every one comes back whole."""
    import threading

    stop = threading.Event()
    submitted = []

    def submit_loop():
        i = 0
        while not stop.is_set() and i < 300:
            submitted.append(captured.submit(lambda v: v * 2, i, key=f"race-{i}"))
            i += 1

    thread = threading.Thread(target=submit_loop)
    thread.start()
    events = []
    while thread.is_alive():
        events += drain_capture(captured, timeout=0.2)
    thread.join()
    captured.gather(submitted)
    events += drain_capture(captured, final=True)
    got = graphs(events)
    assert sorted(k for e in got for k in e["keys"]) == sorted(f"race-{i}" for i in range(len(submitted)))
    assert all(isinstance(e["specs"], bytes) for e in got)
    late = {k: fp for e in events if e["kind"] == "fingerprints" for k, fp in e["fingerprints"].items()}
    fps = {k: fp for e in got for k, fp in e["fingerprints"].items()} | late
    assert fps == {f"race-{i}": fingerprint(i * 2) for i in range(len(submitted))}
    assert not [e for e in events if e["kind"] == "dropped"]
    last = got[-1]["keys"][-1]
    assert replay_graph(fresh, got[-1])[last] == fingerprint(2 * (len(submitted) - 1))
    assert sum(e["graphs"] for e in got) == len(submitted)


def test_persist_fingerprints_collected_later(captured, fresh):
    """Keys still computing at a drain come in later ``fingerprints`` events; a final drain waits for them."""
    def slow(block):
        time.sleep(0.05)
        return block + 1

    x = da.zeros((40, 10), chunks=(2, 10)).map_blocks(slow).persist()   # 20 chunks, ~0.5 s on 2 workers
    first = drain_capture(captured, timeout=0.0)
    (persisted,) = graphs(first)
    assert len(persisted["keys"]) == 20 and persisted["pending"]
    rest = drain_capture(captured, final=True)
    late = {k: fp for e in rest if e["kind"] == "fingerprints" and e["graph"] == persisted["seq"]
            for k, fp in e["fingerprints"].items()}
    assert {**persisted["fingerprints"], **late} == {k: fingerprint(np.ones((2, 10))) for k in persisted["keys"]}
    assert not [e for e in rest if e["kind"] == "dropped"]
    del x


def test_a_key_finishing_after_a_quiet_spell_is_fingerprinted_at_once_and_a_burst_waits_for_its_batch(monkeypatch):
    """The drain at a cell's end waits for the cell's last result: it must not wait for a batch to fill."""
    monkeypatch.setattr(capture_plugin, "BATCH_SECONDS", 5.0)   # the workers run in this process
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                      scheduler_kwargs={"plugins": capture_plugins()}) as cluster, Client(cluster) as c:
        start_capture(c)
        assert c.submit(sum, [1, 2], key="lone").result() == 3
        [lone] = graphs(drain_capture(c, timeout=2.0))
        assert lone["fingerprints"] == {"lone": fingerprint(3)} and lone["pending"] == []
        # within 5 s of that hand-off, finished keys wait for the next batch
        assert c.gather(c.map(sum, [[1], [2]], key=["burst-1", "burst-2"])) == [1, 2]
        [burst] = graphs(drain_capture(c, timeout=0.5))
        assert burst["pending"] == ["burst-1", "burst-2"]
        late = [e for e in drain_capture(c, final=True) if e["kind"] == "fingerprints"]
        assert [e["fingerprints"] for e in late] == [{"burst-1": fingerprint(1), "burst-2": fingerprint(2)}]


class _Holder:
    """A user's object holding an array: Dask's ``sizeof`` sees it as small."""

    def __init__(self, array):
        self.array = array


def test_small_scalars_and_arrays_are_fingerprinted_at_once_anything_else_in_the_thread():
    at_once = [None, True, 7, -(10**300), 2.5, 1j, "text", b"x" * 100, np.float64(1.5), np.int32(3),
               np.arange(10), np.zeros(8192)]   # 8192 float64s: 64 KiB
    threaded = [10**5000, "x" * (1 << 17), np.zeros(8193), np.array([object()]), [1, 2], {"a": 1}, (1,),
                pd.Series([1.0]), _Holder(np.zeros(10**6))]
    assert [capture_plugin._fingerprinted_at_once(v) for v in at_once] == [True] * len(at_once)
    assert [capture_plugin._fingerprinted_at_once(v) for v in threaded] == [False] * len(threaded)


def test_results_fingerprinted_at_once_or_in_the_thread_all_arrive_and_replay(captured, fresh):
    values = [3, 2.5, np.float64(0.1), np.arange(5), np.linspace(0, 1, 200_000), pd.DataFrame({"a": [1, 2]}),
              "short", _Holder(np.ones(3)), None]
    futures = [captured.submit(_identity, v, key=f"value-{i}") for i, v in enumerate(values)]
    captured.gather(futures)
    events = drain_capture(captured)
    fps = {k: fp for e in graphs(events) for k, fp in e["fingerprints"].items()}
    assert [fps[f"value-{i}"] for i in range(len(values))] == [fingerprint(v) for v in values]
    assert_replays(events, fresh)


def _identity(value):
    return value


def test_final_drain_reports_what_never_came(captured):
    """A key still computing when the final wait runs out is reported as dropped and counted."""
    before = capture_stats(captured)["dropped"]
    future = captured.submit(time.sleep, 3, key="sleeper-final")
    events = drain_capture(captured, timeout=0.3, final=True)
    dropped = [e for e in events if e["kind"] == "dropped"]
    assert [e["keys"] for e in dropped] == [["sleeper-final"]]
    assert capture_stats(captured)["dropped"] == before + 1
    captured.cancel(future)


def test_scattered_data_captured_and_replayed(captured, fresh):
    """scatter + map: the scattered values are recorded (their keys pinned until gathered) and replay."""
    data = np.arange(12.0).reshape(3, 4)
    [remote] = captured.scatter([data])
    squares = captured.map(lambda a, i: float((a * i).sum()), [remote] * 3, range(3))
    assert captured.gather(squares) == [0.0, 66.0, 132.0]
    del remote   # released before the drain: the pin keeps it gatherable
    events = drain_capture(captured, final=True)
    (scatter,) = [e for e in events if e["kind"] == "scatter"]
    assert len(scatter["keys"]) == 1 and "dropped" not in scatter
    value = pickle.loads(scatter["values"][scatter["keys"][0]])
    assert np.array_equal(value, data)
    mapped = graphs(events)
    assert all(e["scattered"] == scatter["keys"] for e in mapped)
    held = resubmit.replay_scatter(fresh, scatter, scatter["values"])
    replayed = {}
    for event in mapped:
        replayed.update(replay_graph(fresh, event))
    assert replayed == {k: fp for e in mapped for k, fp in e["fingerprints"].items()}
    assert len(replayed) == 3
    del held
    # the pin is gone once gathered: the key is forgotten on the recording cluster
    assert not captured.run_on_scheduler(lambda dask_scheduler, k=scatter["keys"][0]: k in dask_scheduler.tasks)


def test_submit_graph_together_holds_shared_results(captured, fresh):
    a = captured.submit(lambda: 10, key="shared-a")
    b = captured.submit(lambda v: v + 1, a, key="shared-b")
    c = captured.submit(lambda v: v + 2, a, key="shared-c")
    assert captured.gather([b, c]) == [11, 12]
    events = graphs(drain_capture(captured, final=True))
    pending, held = {}, []
    for event in events:
        fps, keep = resubmit.submit_graph(fresh, event, hold=True)
        pending.update(fps)
        held += keep
    results = dict(zip(pending, (r[0] for r in fresh.gather(list(pending.values())))))
    assert results == {"shared-a": fingerprint(10), "shared-b": fingerprint(11), "shared-c": fingerprint(12)}
    del held


def test_graph_batch_replays_futures_in_flight_together(captured, fresh):
    """50 futures sleeping 0.1 s, submitted in a loop: replayed as one batch they take about as long."""
    started = time.monotonic()
    futures = [captured.submit(time.sleep, 0.1, key=f"nap-{i}") for i in range(50)]
    captured.gather(futures)
    original = time.monotonic() - started
    [event] = graphs(drain_capture(captured, final=True))   # a loop of submits: one event
    assert event["graphs"] == 50 and event["keys"] == [f"nap-{i}" for i in range(50)]
    started = time.monotonic()
    batch = resubmit.GraphBatch(fresh)
    batch.submit(event)
    [(_, results, failure)] = batch.gather()
    replayed = time.monotonic() - started
    batch.release()
    assert failure is None and {k: fp for k, (fp, _) in results.items()} == event["fingerprints"]
    assert len(results) == 50
    # one at a time would take 50 x 0.1 s on one worker at least; together, 2 workers share them
    assert replayed < max(2.0 * original, original + 1.5), (original, replayed)


def held(x):
    """``x + 1`` once the test lets it (a Dask Event of the cluster it runs on)."""
    from distributed import Event

    Event("julius-test-hold").wait()
    return x + 1


def test_a_graph_sent_after_fetching_its_own_input_is_replayed_without_waiting_for_it(captured, fresh):
    # an as_completed loop: each add is sent once its two inputs are seen done; the scheduler waits for
    # them itself, so a replay sends it at once, whatever order its inputs end in there
    from distributed import Event

    Event("julius-test-hold", client=captured).set()
    a = captured.submit(held, 1, key="held-a")
    assert a.result() == 2
    assert captured.submit(lambda x: x * 10, a, key="after-a").result() == 20
    [event] = graphs(drain_capture(captured))
    assert event["after"][-1][:2] == ["after-a", ["held-a"]]   # (the first: what earlier tests fetched)
    batch = resubmit.GraphBatch(fresh)
    sending = threading.Thread(target=batch.submit, args=(event,))
    sending.start()
    sending.join(30)
    assert not sending.is_alive()   # sent while held-a is held, not after it
    Event("julius-test-hold", client=fresh).set()
    [(_, replayed, failure)] = batch.gather()
    batch.release()
    assert failure is None and {k: fp for k, (fp, _) in replayed.items()} == event["fingerprints"]
