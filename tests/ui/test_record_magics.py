"""``%record`` and ``%replay`` in a real IPython shell, on real LocalClusters."""

import textwrap

import pytest

import julius_magics as jm
from tests.support import graphs_sent, run


@pytest.fixture(scope="module")
def store(recordings):
    return recordings


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
    assert graphs_sent(rec) >= 5 and "cell" in kinds
    assert any("groupby" in s.data["source"] for s in rec.steps if s.kind == "cell")
    report = run(ip, f"%replay plain --store {store.url} -n 1")
    assert jm.get_session() is report.session and report.session.active   # %replay hands it to the kernel
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
