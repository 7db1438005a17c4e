"""Each of plain Dask's ways to send work, recorded unchanged and replayed verified (values asserted)."""

import json
import os
import shutil
import tempfile

import pytest
from distributed import Client, LocalCluster

from julius_magics import recording
from julius_magics.cluster.session import Session
from julius_magics.recording.store import Store
from tests.support import record_notebook


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def record(store, name, source):
    """Run ``source`` as a notebook cell while recording ``name``; returns the notebook's namespace."""
    namespace, info = record_notebook(store, name, source)
    assert info.status == "complete"
    return namespace


def replayed(store, name, **options):
    report = recording.replay(name, store=store, **options)
    assert report.verified, report.summary()
    return report


SEVERAL_WAIT_RUN_PLUGINS = '''
import os
import dask, dask.array as da, dask.bag as db, dask.dataframe as dd, pandas as pd
from distributed import Client, LocalCluster, wait
from distributed.diagnostics.plugin import NannyPlugin, WorkerPlugin

class Scale(WorkerPlugin):
    """Gives each worker a factor that later tasks read."""
    def __init__(self, factor):
        self.factor = factor
    def setup(self, worker):
        worker.julius_test_factor = self.factor

class Shift(NannyPlugin):
    """Sets a variable in each nanny's environment (for workers it starts later; no restart here)."""
    def setup(self, nanny):
        nanny.env["JULIUS_TEST_SHIFT"] = "1000"

def set_offset(value, dask_worker=None):
    dask_worker.julius_test_offset = value

def scaled(x):
    from distributed import get_worker
    w = get_worker()
    return x * w.julius_test_factor + w.julius_test_offset

cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
client.register_plugin(Shift())                                     # a nanny plugin
client.register_plugin(Scale(3))                                    # a worker plugin
client.run(set_offset, 7)
frame = dd.from_pandas(pd.DataFrame({"g": list("ab") * 10, "x": range(20)}), npartitions=4)
array = da.arange(100, chunks=10)
bag = db.from_sequence(range(10), npartitions=3)
sums, total, odd = dask.compute(frame.groupby("g").x.sum(), array.sum(), bag.filter(lambda v: v % 2).sum())
futures = client.map(scaled, range(5))
wait(futures)
after_wait = client.gather(futures)
nanny_env = set(client.run(lambda dask_worker=None: dask_worker.env.get("JULIUS_TEST_SHIFT"), nanny=True).values())
client.close()
cluster.close()
'''


def test_dask_compute_of_several_wait_client_run_and_plugins(store):
    ns = record(store, "several", SEVERAL_WAIT_RUN_PLUGINS)
    assert ns["sums"].to_dict() == {"a": 90, "b": 100} and ns["total"] == 4950 and ns["odd"] == 25
    assert ns["after_wait"] == [7, 10, 13, 16, 19] and ns["nanny_env"] == {"1000"}
    rec = store.open("several")
    kinds = [s.kind for s in rec.steps]
    assert kinds.count("worker_plugin") == 2 and kinds.count("run") == 2
    assert {s.data["nanny"] for s in rec.steps if s.kind == "worker_plugin"} == {True, False}
    report = replayed(store, "several")
    assert report.results == 3 + 5   # three collections at once, five mapped futures


DATASETS_AND_FUTURES = '''
import dask, dask.dataframe as dd, pandas as pd
from distributed import Client, LocalCluster

cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
frame = dd.from_pandas(pd.DataFrame({"x": range(30)}), npartitions=3).persist()
client.publish_dataset(numbers=frame)
back = client.get_dataset("numbers")
from_dataset = int((back.x * 2).sum().compute())        # a later graph on the dataset gotten back
first = client.submit(lambda: 21)
second = client.submit(lambda v: v * 2, first)          # a future passed into a later graph
third = dask.delayed(lambda a, b: a + b)(first, second).compute()
doubled = second.result()
client.unpublish_dataset("numbers")
client.close()
cluster.close()
'''


def test_published_dataset_and_futures_passed_into_later_graphs(store):
    ns = record(store, "datasets", DATASETS_AND_FUTURES)
    assert (ns["from_dataset"], ns["doubled"], ns["third"]) == (870, 42, 63)
    report = replayed(store, "datasets")
    assert report.results >= 3 + 1 + 1   # the persisted partitions, the sum, and each later graph


AS_COMPLETED = '''
import time
from distributed import Client, LocalCluster, as_completed

def slow(i):
    time.sleep({0: 0.9, 1: 0.1, 2: 1.3, 3: 0.5}.get(i, 0.1 * i))   # side by side, they finish as 1, 3, 0, 2
    return i * 10

cluster = LocalCluster(n_workers=4, threads_per_worker=1, processes=False, dashboard_address=":0")
client = Client(cluster)
# named keys: the order one worker runs them in depends on the keys (dask.order), and a key
# from a hash could make it the recorded one
arrived = [future.result() for future in as_completed(client.map(slow, range(4), key=[f"slow-{i}" for i in range(4)]))]
submitted = [client.submit(slow, i, key=f"looped-{i}") for i in (3.5, 4)]   # in a loop, gathered once
looped = client.gather(submitted)
client.close()
cluster.close()
'''


SLOW_KEYS = [f"slow-{i}" for i in range(4)]


def _finish_order(dask_scheduler=None):
    """Keys of ``slow`` tasks in the order they reached memory (the scheduler's transition log)."""
    return [t[0] for t in dask_scheduler.transition_log if t[2] == "memory" and str(t[0]).startswith("slow-")]


def test_as_completed_compared_by_key_whatever_the_arrival_order(store):
    ns = record(store, "as-completed", AS_COMPLETED)
    assert ns["arrived"] == [10, 30, 0, 20] and ns["looped"] == [35.0, 40]
    rec = store.open("as-completed")
    (loop,) = [s for s in rec.steps if s.kind == "graph" and "slow-0" in s.data["keys"]]
    value_of = {key: int(loop.data["descriptions"][key].split()[-1]) for key in SLOW_KEYS}   # "int 30"
    report = replayed(store, "as-completed", n_workers=1, keep=True)   # one worker: one task after another
    try:
        finished = report.session.client.run_on_scheduler(_finish_order)
    finally:
        report.session.stop()
    replay_arrival = [value_of[key] for key in finished if key in value_of]
    # One worker runs them one after another, in an order of its own: it follows the order the client
    # sent the keys in, which the client does not fix, so it matches the recorded arrival now and then
    # (2 runs of 9 here on 2026-12-07): the comparison is by key either way.
    assert sorted(replay_arrival) == [0, 10, 20, 30] and report.verified
    assert report.results == 4 + 2


ONE_OF_A_LOOP_FAILS = '''
import os
from distributed import Client, LocalCluster

def load(i, flag):
    if i == 2 and not os.path.exists(flag):   # a temporary file: never an input, gone on replay
        raise RuntimeError(f"no flag for {i}")
    return i * 10

cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
futures = [client.submit(load, i, FLAG, key=f"load-{i}") for i in range(4)]
loaded = client.gather(futures)
broken = client.submit(lambda: 1 / 0, key="broken")
after = client.submit(lambda v: v + 1, broken, key="after-broken")
try:
    after.result()
except ZeroDivisionError as error:
    raised = repr(error)
client.close()
cluster.close()
'''


def test_a_task_failing_on_replay_fails_its_own_result_only_and_the_recording_is_verified_no_more(store):
    """A task's error is its result: one raising when recorded raises alike on replay (verified)."""
    flag = tempfile.NamedTemporaryFile(delete=False)   # tmp* under the temporary folder: not an input
    flag.close()
    try:
        ns = record(store, "one-fails", ONE_OF_A_LOOP_FAILS.replace("FLAG", repr(flag.name)))
        steps = store.open("one-fails").steps
        [loop] = [s for s in steps if s.kind == "graph"]
        # one graph step for the submits in a row; it says where the client had fetched results first
        assert loop.data["keys"] == ["load-0", "load-1", "load-2", "load-3", "broken", "after-broken"]
        assert [a[:2] for a in loop.data["after"]] == [["broken", ["load-0", "load-1", "load-2", "load-3"]]]
        descriptions = {k: v for s in steps if s.kind in ("graph", "fingerprints") for k, v in s.data["descriptions"].items()}
        assert descriptions["broken"] == descriptions["after-broken"] == "raised ZeroDivisionError('division by zero')"
        assert replayed(store, "one-fails", n_workers=2).results == 6
        assert store.open("one-fails").info.status == "verified"
    finally:
        os.remove(flag.name)
    assert ns["loaded"] == [0, 10, 20, 30] and ns["raised"] == "ZeroDivisionError('division by zero')"

    report = recording.replay("one-fails", store=store, n_workers=2)
    assert not report.verified and report.results == 6
    [mismatch] = report.mismatches
    assert mismatch["node"] == "load-2" and mismatch["replayed_value"] == "raised RuntimeError('no flag for 2')"
    assert mismatch["cause"] == "the graph failed on replay: RuntimeError: no flag for 2"
    assert "recorded 0.0s" not in report.summary() and "(compute " in report.summary()   # not known for graphs
    # the last replay did not match: listed as verified no more
    assert [info.status for info in store.list()] == ["complete"]
    assert store.open("one-fails").info.status == "complete"


TWO_CLUSTERS_IN_TURN = '''
import dask
from distributed import Client, LocalCluster

with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \\
        Client(cluster) as client:
    first = dask.delayed(sum)([1, 2], dask_key_name="first").compute()
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \\
        Client(cluster) as client:
    second = client.submit(lambda: 42, key="second").result()
'''


def test_two_clusters_in_turn_each_replayed_on_its_recorded_shape(store):
    ns = record(store, "two-clusters", TWO_CLUSTERS_IN_TURN)
    assert (ns["first"], ns["second"]) == (3, 42)
    rec = store.open("two-clusters")
    assert [s.data["spec"]["n_workers"] for s in rec.steps if s.kind == "adopted_cluster"] == [1, 2]
    assert rec.info.workers == 1   # the first cluster's: what `list` and `show` say, and a replay starts first
    assert replayed(store, "two-clusters").results == 2


WRITES_AN_OUTPUT = '''
import os
from distributed import Client, LocalCluster

def report(i):
    os.makedirs("out", exist_ok=True)
    with open(f"out/r{i}.txt", "w") as f:
        f.write(str(i))
    return i

cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
written = client.submit(report, 1).result()
client.close()
cluster.close()
'''


def _write(path):
    with open(path, "w") as f:
        f.write("mine")
    return os.path.exists(path)


def test_after_a_replay_the_kernel_and_the_cluster_it_hands_on_write_their_own_files_again(store, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert record(store, "writes", WRITES_AN_OUTPUT)["written"] == 1
    os.remove("out/r1.txt")
    report = replayed(store, "writes", keep=True)
    try:
        assert report.sandbox and not os.path.exists("out/r1.txt")   # the replay wrote into its sandbox
        assert _write("out/r1.txt") and _write("after.txt")           # the kernel: its own files again
        assert report.session.client.submit(_write, str(tmp_path / "out" / "w.txt")).result()
    finally:
        report.session.stop()
    assert sorted(os.listdir(tmp_path / "out")) == ["r1.txt", "w.txt"]
    assert open("out/r1.txt").read() == "mine" and os.path.exists("after.txt")


WRITTEN_THEN_READ_AFTER_A_WAIT = '''
import os, time
import dask.dataframe as dd
from distributed import Client, LocalCluster, wait

def write_part(i):
    time.sleep(0.5 + 0.2 * i)   # slower than the reads: a replay that did not wait would read nothing
    os.makedirs("parts", exist_ok=True)
    with open(f"parts/part-{i}.csv", "w") as f:
        f.write("x\\n" + "\\n".join(str(i * 10 + j) for j in range(5)) + "\\n")
    return i

cluster = LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
written = client.map(write_part, range(3))
wait(written)                                      # no gather: the scheduler never sees this wait
total = int(dd.read_csv("parts/part-*.csv").x.sum().compute())
client.close()
cluster.close()
'''


def test_a_graph_sent_after_a_wait_is_replayed_after_what_it_waited_for(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = record(store, "waited", WRITTEN_THEN_READ_AFTER_A_WAIT)
    assert ns["total"] == 180
    [graphs] = [s for s in store.open("waited").steps if s.kind == "graph"]   # sent in a row: one step
    written = [k for k in graphs.data["keys"] if k.startswith("write_part")]
    [(first_read, waited, _)] = graphs.data["after"]   # the read is sent once the writes are done
    assert len(written) == 3 and sorted(waited) == sorted(written) and first_read not in written
    shutil.rmtree("parts")   # the replay reads what it wrote itself, in its sandbox
    report = replayed(store, "waited", n_workers=3)
    assert report.results == 3 + 1 + 3   # the writes, the sum, and the three files written


P2P_SHUFFLE_OF_AN_INPUT = '''
import dask, dask.dataframe as dd, pandas as pd
from distributed import Client, LocalCluster

pd.DataFrame({"k": [i % 7 for i in range(600)], "v": range(600)}).to_csv("table.csv", index=False)
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
with dask.config.set({"dataframe.shuffle.method": "p2p"}):   # its shards go to the workers' disks
    shuffled = dd.read_csv("table.csv", blocksize=2000).shuffle("k", npartitions=3)
    sums = shuffled.groupby("k").v.sum().compute().sort_index().tolist()
client.close()
cluster.close()
'''


def test_a_p2p_shuffle_of_a_served_input_replays_verified(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = record(store, "p2p", P2P_SHUFFLE_OF_AN_INPUT)
    assert ns["sums"] == [sum(range(k, 600, 7)) for k in range(7)]
    os.remove("table.csv")   # served: the replay's opens are redirected, the shuffle's own shards among them
    report = replayed(store, "p2p", n_workers=2)
    assert report.outputs == [] and "sandbox" not in report.summary()   # the cell's to_csv: not replayed


COMPUTED_TWICE = '''
import dask
from distributed import Client, LocalCluster

with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \\
        Client(cluster) as client:
    first = dask.delayed(sum)(range(10), dask_key_name="total").compute()
    client.run(lambda: None)   # a step between: two graph steps, one key
    again = dask.delayed(sum)(range(10), dask_key_name="total").compute()
'''


def test_a_key_computed_twice_is_counted_alike_by_stop_show_and_replay(store, capsys):
    from julius_magics.recording.summary import details, format_details

    ns = record(store, "twice", COMPUTED_TWICE)
    assert (ns["first"], ns["again"]) == (45, 45)
    assert "1 cluster(s), 2 graph(s), 2 result(s)" in capsys.readouterr().out   # what %record stop says
    assert "results: 2 (1 distinct)" in format_details(details("twice", store=store)).splitlines()
    assert replayed(store, "twice").results == 2


SCALED_UP_THEN_DOWN = '''
import time
from distributed import Client, LocalCluster

def square(x):
    time.sleep(0.2)
    return x * x

cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
cluster.scale(3)
client.wait_for_workers(3)
squares = client.gather(client.map(square, range(6)))
cluster.scale(2)
while len(client.scheduler_info()["workers"]) > 2:
    time.sleep(0.05)
cube = client.submit(lambda x: x ** 3, 3, key="cube").result()
client.close()
cluster.close()
'''


def test_the_workers_a_cell_scaled_up_to_have_their_environments_recorded(store):
    from julius_magics.recording.environment import capture_environment

    cell = ("cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=':0')\n"
            "client = Client(cluster)\n"
            "cluster.scale(4)\n"
            "client.wait_for_workers(4)")
    recorder = recording.start(Session(), "grown", store=store)
    namespace = {"LocalCluster": LocalCluster, "Client": Client}
    try:
        exec(cell, namespace)
        recorder.add_cell(cell)   # the three new workers are asked at once, each in a thread
        expected = namespace["client"].run(capture_environment)
    finally:
        recording.stop()
        namespace["client"].close()
        namespace["cluster"].close()
    rec = store.open("grown")
    joined = {s.data["worker"]: s.data["environment"] for s in rec.steps if s.kind == "worker_joined"}
    assert len(joined) == 3 and set(joined) < set(expected)
    for worker, blob in joined.items():
        env = json.loads(rec.blob(blob))
        assert env["python"] == expected[worker]["python"] and env["packages"] == expected[worker]["packages"]


def test_a_cluster_scaled_while_recording_is_scaled_alike_on_replay(store, tmp_path, monkeypatch):
    ns = record(store, "scaled", SCALED_UP_THEN_DOWN)
    assert ns["squares"] == [0, 1, 4, 9, 16, 25] and ns["cube"] == 27
    rec = store.open("scaled")
    kinds = [(s.kind, s.data.get("workers")) for s in rec.steps if s.kind in ("worker_joined", "worker_left", "graph")]
    assert kinds[:5] == [("worker_joined", 2), ("worker_joined", 3), ("graph", None), ("worker_left", 2),
                         ("graph", None)], kinds
    assert "worker tcp://" in summary_of(rec, "worker_left") and "left (2 workers)" in summary_of(rec, "worker_left")
    from julius_magics.recording.summary import details, format_details

    assert ", 1 workers (scaled up to 3), " in format_details(details("scaled", store=store)).splitlines()[0]
    report = replayed(store, "scaled", keep=True)
    try:
        [counts] = report.scaled.values()
        assert counts == ["3", "2"] and "scaled to 3, then 2; so was this replay's" in report.summary()
        client = report.session.client   # scaled down before the last graph, as recorded
        assert wait_until(lambda: len(client.scheduler_info()["workers"]) == 2)
    finally:
        report.session.stop()
    fixed = replayed(store, "scaled", n_workers=1)   # the user's count, kept and said
    assert "scaled to 3, then 2; this replay kept 1 workers (-n)" in fixed.summary()


def wait_until(condition, timeout=30):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def summary_of(recording, kind):
    from julius_magics.recording.steps import summary

    return next(summary(s) for s in recording.steps if s.kind == kind)


REWRITTEN_BY_THE_KERNEL = '''
import dask.dataframe as dd, pandas as pd
from distributed import Client, LocalCluster

cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0")
client = Client(cluster)
given_before = int(dd.read_csv("given.csv").x.sum().compute())
dd.from_pandas(pd.DataFrame({"x": range(12)}), npartitions=3).to_csv("out/*.csv", index=False)   # tasks write
before = int(dd.read_csv("out/*.csv").x.sum().compute())
lines = client.submit(lambda path: len(open(path).readlines()), "out/1.csv").result()   # as relative: written absolute
pd.DataFrame({"x": [100]}).to_csv("out/0.csv", index=False)    # the kernel rewrites a task's output
pd.DataFrame({"x": [5, 6]}).to_csv("given.csv", index=False)   # and an input that existed before
after = int(dd.read_csv("out/*.csv").x.sum().compute())
given_after = int(dd.read_csv("given.csv").x.sum().compute())
client.close()
cluster.close()
'''


def test_files_a_cell_rewrites_between_graphs_are_replayed_in_the_version_each_graph_read(store, tmp_path,
                                                                                         monkeypatch):
    # as dask-examples dataframes/04 does: it empties or changes files between two computes over them
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"x": [1, 2]}).to_csv("given.csv", index=False)
    ns = record(store, "rewritten", REWRITTEN_BY_THE_KERNEL)
    assert (ns["given_before"], ns["before"], ns["lines"], ns["after"], ns["given_after"]) == (3, 66, 5, 160, 11)
    versions = {}
    for step in store.open("rewritten").steps:
        for f in step.data["files"] if step.kind == "inputs" else ():
            versions.setdefault(os.path.relpath(f["abspath"]), set()).add(f["sha256"])
    assert len(versions["given.csv"]) == 2 and len(versions["out/0.csv"]) == 1   # the kernel's 0.csv
    shutil.rmtree("out")
    os.remove("given.csv")
    for n in (1, 2):   # each graph reads the version it read when recorded
        assert replayed(store, "rewritten", n_workers=n).results >= 4


READS_A_FILE = '''
from distributed import Client, LocalCluster

with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \\
        Client(cluster) as client:
    text = client.submit(lambda: open("note.txt").read(), key="read-note").result()
'''


def test_a_served_copy_changed_in_the_cache_is_not_used(store, tmp_path, monkeypatch):
    from julius_magics.cluster.serve import cache_dir

    monkeypatch.chdir(tmp_path)
    with open("note.txt", "w") as f:
        f.write("recorded")
    assert record(store, "note", READS_A_FILE)["text"] == "recorded"
    os.remove("note.txt")
    replayed(store, "note")   # served: a copy in the cache, named by its SHA-256
    [sha] = [f["sha256"] for s in store.open("note").steps if s.kind == "inputs" for f in s.data["files"]]
    with open(os.path.join(cache_dir(), sha), "w") as f:   # any file can be changed, the cache's too
        f.write("poisoned")
    replayed(store, "note")   # the copy is hashed before use, and made again


DRAWN_BESIDE_AN_ERROR = '''
import os
from distributed import Client, LocalCluster

with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \\
        Client(cluster) as client:
    drawn = [client.submit(os.urandom, 8, pure=False, key=f"drawn-{i}") for i in range(3)]   # no seed for it
    broken = client.submit(lambda: 1 / 0, key="broken")   # its result is its error, here and on replay
    values = client.gather(drawn)
'''


def test_random_draws_are_named_non_deterministic_even_beside_a_task_that_raised(store):
    record(store, "drawn", DRAWN_BESIDE_AN_ERROR)
    report = recording.replay("drawn", store=store)
    assert not report.verified
    assert sorted(m["node"] for m in report.mismatches) == ["drawn-0", "drawn-1", "drawn-2"]   # not "broken"
    assert {m["cause"].split(":")[0] for m in report.mismatches} == {"non-deterministic operation"}
