"""The Dask session on a real LocalCluster: remote code, rules on workers, key jobs, errors."""

import textwrap
import time

import pytest

from julius_magics import ref
from julius_magics.cluster.session import Session
from julius_magics.cluster.worker import worker_versions
from julius_magics.errors import NoClusterError, NodeError, RemoteError

RULES = textwrap.dedent("""
    def src(i):
        return ApplyFn(make_frame, i)()
    def sampled(i):
        return ApplyFn(lambda df: df.sample(frac=0.5))(src(i))
    def total(n):
        return ApplyFn(add_all)(*[sampled(i) for i in range(n)])
    def broken(i):
        return ApplyFn(explode, i)(src(i))
""")

REMOTE = textwrap.dedent("""
    import pandas as pd
    def make_frame(i):
        return pd.DataFrame({"x": range(i * 100, i * 100 + 100)})
    def add_all(*frames):
        return sum(int(f["x"].sum()) for f in frames)
    def explode(i, df):
        raise ValueError(f"bad chunk {i}")
    print("loaded", factor)
""")


def test_remote_eval_runs_on_every_worker_with_pushed_values(session):
    outputs = session.remote_eval(REMOTE, push={"factor": 3})
    assert sorted(outputs) == sorted(w["address"] for w in session.status()["workers"])
    assert all(text == "loaded 3\n" for text in outputs.values())
    versions = session.client.run(worker_versions)
    assert all({"make_frame", "factor"} <= set(v["remote_names"]) for v in versions.values())


def test_remote_errors_name_every_failing_worker(session):
    with pytest.raises(RemoteError) as info:
        session.remote_eval("x = 1\nraise KeyError('nope')")
    text = str(info.value)
    assert "remote_eval failed on 2 worker(s)" in text and "KeyError: 'nope'" in text
    assert all(w["address"] in text for w in session.status()["workers"])
    assert 'File "<remote_eval>", line 2' in text


def test_rules_run_on_workers_and_values_come_back(session):
    session.add_rules("t", RULES)
    versions = session.client.run(worker_versions)
    assert all("total" in v["rules"]["t"] for v in versions.values())
    value = session.compute(ref.t.total(4))
    assert isinstance(value, int) and 0 < value < sum(range(400))
    assert session.compute(ref.t.total(4)) == value      # seeded per node: same sample again
    assert session.getdata(ref.t.total(4)) == value
    values = session.compute([ref.t.total(2), ref.t.src(1)])
    assert len(values) == 2 and list(values[1]["x"])[:2] == [100, 101]
    assert set(session.worker_of.values()) <= {w["address"] for w in session.status()["workers"]}


def test_node_failure_names_node_worker_and_traceback_and_cluster_stays_usable(session):
    session.add_rules("t", RULES)
    with pytest.raises(NodeError) as info:
        session.compute(ref.t.broken(7, label="chunk seven"))
    err = info.value
    text = str(err)
    assert "chunk seven" in text and err.node_id == ref.t.broken(7).id and err.node_id in text
    assert "ValueError: bad chunk 7" in text and "explode" in text
    assert err.worker in {w["address"] for w in session.status()["workers"]}
    assert session.failed == {ref.t.broken(7).id}
    assert session.compute(ref.t.src(2))["x"].iloc[0] == 200


def test_getdata_of_uncomputed_node_says_what_to_do(session):
    with pytest.raises(KeyError, match="has not been computed"):
        session.getdata(ref.t.src(999))


def test_workers_that_join_later_get_all_code_and_rules(session):
    session.remote_eval("late_value = 41")
    session.add_rules("late", "def plus_one():\n    return ApplyFn(lambda: late_value + 1)()")
    before = set(session.client.scheduler_info()["workers"])
    session.cluster.scale(3)
    session.client.wait_for_workers(3, timeout=60)
    new = set(session.client.scheduler_info()["workers"]) - before
    assert len(new) == 1
    (address,) = new
    for _ in range(100):  # the plugin's setup runs as the worker starts
        v = session.client.run(worker_versions, workers=[address])[address]
        if "late" in v["rules"]:
            break
        time.sleep(0.1)
    assert "plus_one" in v["rules"]["late"] and "late_value" in v["remote_names"]
    future = session.client.submit(lambda: __import__("julius_magics").rules.node.REMOTE_NAMESPACE["late_value"],
                                   workers=[address], pure=False)
    assert future.result() == 41
    session.cluster.scale(2)


def test_no_cluster_and_connected_clusters():
    from distributed import Client, LocalCluster

    s = Session()
    with pytest.raises(NoClusterError, match="%cluster start"):
        s.remote_eval("x = 1")
    with pytest.raises(NoClusterError):
        s.compute(ref.x.y())
    with LocalCluster(n_workers=1, processes=True, dashboard_address=":0") as cluster:
        s.connect(cluster.scheduler_address)
        assert s.status()["owned"] is False and len(s.status()["workers"]) == 1
        assert s.stop() is True
        with Client(cluster) as other:   # stop never shut down a cluster it only connected to
            assert other.submit(lambda: 5).result() == 5
