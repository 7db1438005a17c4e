"""A notebook whose tasks read and write SQLite databases, recorded unchanged and replayed verified.

SQLite opens its files in C, where no "open" audit event fires; ``sqlite3.connect``'s own
event is the door.  A database that exists is an input, a new one an output.  On replay a
recorded database is a private copy of what the recording read (SQLite writes beside a
read too), so neither a served copy nor the user's file is ever written.
"""

import os
import shutil

import pytest

from julius_magics.recording.store import Store
from tests.support import file_sha256, julius, record_cells, replayed_verified

pytestmark = pytest.mark.usefixtures("fresh_session")

BEFORE = """
import os, sqlite3
os.makedirs("data")
db = sqlite3.connect("data/shop.db")
db.execute("create table sales (region text, amount real)")
db.executemany("insert into sales values (?, ?)", [("north", 1.5), ("south", 2.0), ("north", 4.0)])
db.commit()
db.close()
"""
NOTEBOOK = ["""
import sqlite3, pandas as pd
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
""", """
def region_total(region):   # a relative path, read on a worker
    db = sqlite3.connect("data/shop.db")
    query = "select sum(amount) from sales where region = ?"
    return float(pd.read_sql_query(query, db, params=[region]).iloc[0, 0])

def summarise(totals):   # a new database: an output
    db = sqlite3.connect("summary.db")
    db.execute("create table totals (total real)")
    db.executemany("insert into totals values (?)", [(t,) for t in totals])
    db.commit()
    db.close()
    return len(totals)

def count_by_uri():
    return sqlite3.connect("file:data/shop.db?mode=ro", uri=True).execute("select count(*) from sales").fetchone()[0]

totals = client.gather(client.map(region_total, ["north", "south"]))
rows = client.submit(summarise, totals).result()
count = client.submit(count_by_uri).result()
""", "client.close()\ncluster.close()"]


def test_databases_read_and_written_by_tasks_are_recorded_served_and_sandboxed(ip, tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.chdir(tmp_path)
    ip.run_cell(BEFORE)
    record_cells(ip, "sqlite", store, NOTEBOOK)
    assert [ip.user_ns[k] for k in ("totals", "rows", "count")] == [[5.5, 2.0], 2, 3]

    rec = Store(store).open("sqlite")
    assert rec.info.status == "complete" and "partial" not in rec.meta
    inputs = [f for s in rec.steps if s.kind == "inputs" for f in s.data["files"]]
    outputs = [f for s in rec.steps if s.kind == "outputs" for f in s.data["files"]]
    assert {(f["path"], f["sha256"]) for f in inputs} == {("data/shop.db", file_sha256("data/shop.db"))}
    assert [(f["path"], f["sha256"]) for f in outputs] == [("summary.db", file_sha256("summary.db"))]
    shown = julius(store, "show", "sqlite", cwd=tmp_path).stdout
    assert "data/shop.db" in shown and "output summary.db:" in shown, shown

    before = file_sha256("data/shop.db")   # replayed in place: the user's database is neither written nor journalled
    assert replayed_verified(store, "sqlite", cwd=tmp_path) == 5
    assert file_sha256("data/shop.db") == before and os.listdir("data") == ["shop.db"]

    shutil.rmtree("data")
    os.remove("summary.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for workers in ("1", "3"):
        assert replayed_verified(store, "sqlite", "-n", workers, cwd=elsewhere) == 5
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "store"]   # nothing written into the user's folders
    assert list(elsewhere.iterdir()) == []


WAL_BEFORE = """
import os, sqlite3
os.makedirs("data")
writer = sqlite3.connect("data/events.db")   # another program's connection, kept open: its commits stay in the WAL
writer.execute("pragma journal_mode=wal")
writer.execute("create table events (n integer)")
writer.commit()
writer.execute("pragma wal_checkpoint(truncate)")   # the database file holds the table, the log what follows
writer.executemany("insert into events values (?)", [(n,) for n in range(10)])
writer.commit()
"""
WAL_NOTEBOOK = ["""
import sqlite3
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
""", """
def total():
    with sqlite3.connect("data/events.db") as db:
        return db.execute("select count(*), sum(n) from events").fetchone()

seen = client.submit(total).result()
""", "client.close()\ncluster.close()"]


def test_a_database_in_wal_mode_is_recorded_with_its_log(ip, tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.chdir(tmp_path)
    ip.run_cell(WAL_BEFORE)
    assert os.path.getsize("data/events.db-wal") > 0
    record_cells(ip, "wal", store, WAL_NOTEBOOK)
    assert ip.user_ns["seen"] == (10, 45)
    inputs = [f for s in Store(store).open("wal").steps if s.kind == "inputs" for f in s.data["files"]]
    assert sorted(f["path"] for f in inputs) == ["data/events.db", "data/events.db-wal"]
    ip.run_cell("writer.close()")   # the last connection: its log goes into the database, and is removed
    assert not os.path.exists("data/events.db-wal")
    shutil.rmtree("data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert replayed_verified(store, "wal", cwd=elsewhere) == 1
