"""Small notebooks in the style of the public Dask examples, recorded unchanged and replayed by ``julius replay``.

Each notebook makes its own ``LocalCluster`` and ``Client``; the recording goes
through ``%record start`` / ``%record stop`` in a real IPython shell, and the
replays run the ``julius`` command line from another folder on 1 and 3 workers.

Randomness drawn without a seed by ``da.random`` and ``df.sample`` is drawn in the
client when the graph is built, so the recorded graph holds the seeds: the
notebooks show that two draws differ (no seed) and that the recorded result is
the notebook's own value, and the verified replays reproduce it bit for bit.
Randomness drawn inside a task from NumPy's global generator is not in the graph:
that replay is not verified and names the node's cause.
"""

import pytest

from julius_magics.fingerprint import fingerprint
from julius_magics.recording import steps
from julius_magics.recording.store import Store
from tests.support import julius, record_cells, replayed_verified

pytestmark = pytest.mark.usefixtures("fresh_session")

CLUSTER = """
import dask, dask.array as da, dask.bag as db, dask.dataframe as dd, numpy as np, pandas as pd
from distributed import Client, LocalCluster, as_completed, wait
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
"""
CLOSE = "client.close()\ncluster.close()"

# name: (cells between CLUSTER and CLOSE, {variable: expected value}, names of unseeded draws, results recorded)
NOTEBOOKS = {
    "dataframe": ([
        """
frame = pd.DataFrame({"name": list("abcd") * 25, "x": np.arange(100.0), "y": np.arange(100) % 7})
df = dd.from_pandas(frame, npartitions=4)
means = df.groupby("name").x.mean().compute()
total = float(df[df.y > 3].x.sum().compute())
""",
        """
picked = df.sample(frac=0.3).compute()            # no seed: Dask draws one per partition, in the client
picked_again = df.sample(frac=0.3).compute()
""",
    ], {"total": 2121.0}, ("picked", "picked_again"), 4),
    "array": ([
        """
x = da.random.random((200, 50), chunks=(50, 50))  # no seed
first_rows = x[:2].compute()
col_means = x.mean(axis=0).compute()
y = da.ones((60, 60), chunks=20)
trace, norm = dask.compute(da.diag(y @ y.T).sum(), da.linalg.norm(y))
""",
        """
again = da.random.random((200, 50), chunks=(50, 50))[:2].compute()
""",
    ], {"trace": 3600.0, "norm": 60.0}, ("first_rows", "again"), 5),
    "delayed": ([
        """
@dask.delayed
def inc(i):
    return i + 1

@dask.delayed
def add(a, b):
    return a + b

parts = [inc(i) for i in range(8)]
total = dask.delayed(sum)(parts).compute()
paired = dask.compute(*[add(parts[i], parts[i + 1]) for i in range(0, 8, 2)])
""",
    ], {"total": 36, "paired": (3, 7, 11, 15)}, (), 5),
    "futures": ([
        """
def slowinc(v):
    return v + 1

futures = client.map(slowinc, range(10))
squares = client.map(lambda v: v * v, futures)
total = client.submit(sum, squares).result()
""",
        """
arrived = sorted(f.result() for f in as_completed(client.map(slowinc, range(20, 25))))
""",
    ], {"total": 385, "arrived": [21, 22, 23, 24, 25]}, (), 26),
    "bag": ([
        """
b = db.from_sequence(range(30), npartitions=3)
counts = dict(b.map(lambda v: v % 4).frequencies().compute())
words = dict(db.from_sequence(["a b", "b c", "c a b"], npartitions=2).str.split().flatten().frequencies().compute())
""",
        """
kept = b.random_sample(0.5).compute()             # no seed: drawn in the client, per partition
kept_again = b.random_sample(0.5).compute()
""",
    ], {"counts": {0: 8, 1: 8, 2: 7, 3: 7}, "words": {"a": 2, "b": 3, "c": 2}}, ("kept", "kept_again"), 4),
}


def _differ(a, b):
    return fingerprint(a) != fingerprint(b)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_dask_example_recorded_unchanged_and_replayed_verified_on_1_and_3_workers(name, ip, tmp_path, monkeypatch):
    cells, expected, draws, n_results = NOTEBOOKS[name]
    store = tmp_path / "store"
    monkeypatch.chdir(tmp_path)
    record_cells(ip, name, store, [CLUSTER, *cells, CLOSE])
    values = {k: ip.user_ns[k] for k in expected}
    assert values == expected

    rec = Store(store).open(name)
    assert rec.info.status == "complete" and "partial" not in rec.meta
    recorded = {r["fp"] for s in rec.steps for r in steps.results(s).values()}
    assert len(recorded) >= 1 and sum(len(steps.results(s)) for s in rec.steps) == n_results
    if draws:   # unseeded draws differ from one another, and the recording holds the notebook's own values
        first, second = (ip.user_ns[d] for d in draws)
        assert _differ(first, second)
        assert {fingerprint(first), fingerprint(second)} <= recorded

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for workers in ("1", "3"):
        assert replayed_verified(store, name, "-n", workers, cwd=elsewhere) == n_results
    assert list(elsewhere.iterdir()) == []


def test_randomness_drawn_inside_a_task_is_named_non_deterministic(ip, tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.chdir(tmp_path)
    record_cells(ip, "unseeded", store, [CLUSTER, """
draw = dask.delayed(lambda: float(np.random.rand()))(dask_key_name="draw").compute()   # NumPy's global generator
fixed = dask.delayed(lambda: 7)(dask_key_name="fixed").compute()
""", CLOSE])
    assert 0 <= ip.user_ns["draw"] < 1 and ip.user_ns["fixed"] == 7

    replayed = julius(store, "replay", "unseeded", "-n", "1", cwd=tmp_path)
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "2 results compared -> NOT VERIFIED" in replayed.stdout
    [differs] = [line for line in replayed.stdout.splitlines() if line.strip().startswith("differs:")]
    assert "(draw)" in differs
    cause = replayed.stdout.split(differs, 1)[1].splitlines()[1]
    assert cause.strip() == ("likely cause: non-deterministic operation: computing the node twice in the replay "
                             "gave different values")
