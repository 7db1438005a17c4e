"""A notebook that reads and writes files through pyarrow itself, recorded unchanged and replayed verified.

Arrow opens local files in C++, where neither the audit hook nor a patched
``open`` sees them; its own readers and writers are the door (``cluster/native.py``).
The inputs are deleted and the replays run from another folder: each read is served
from the recording (a hive-partitioned folder as a folder of links, a ``.csv.gz``
under its own name), and each write of a task lands in the replay's sandbox, where later tasks find it
(and pandas finds the folder it checks for).  What the kernel's own code wrote is
recorded, but not compared: a replay runs the graphs, not the cells.
"""

import os
import shutil

import pytest

from julius_magics.recording.store import Store
from tests.support import julius, record_cells, replayed_verified

pytestmark = pytest.mark.usefixtures("fresh_session")

BEFORE = """
import os, pandas as pd, pyarrow as pa, pyarrow.parquet as pq
os.makedirs("out")
pq.write_to_dataset(pa.table({"year": [2020, 2020, 2021], "v": [1.0, 2.0, 3.0]}), "hive", partition_cols=["year"])
os.makedirs("pq")
for i in range(3):
    pd.DataFrame({"k": [10 * i + j for j in range(10)], "v": [float(j) for j in range(10)]}).to_parquet(f"pq/{i}.parquet")
pd.DataFrame({"c": range(10)}).to_csv("t.csv.gz", index=False)
pd.DataFrame({"c": range(10)}).to_feather("t.feather")
"""
NOTEBOOK = ["""
import dask.dataframe as dd, pyarrow as pa, pyarrow.csv as pacsv, pyarrow.dataset as pads, pyarrow.feather as feather
import pyarrow.parquet as pq
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
""", """
by_year = client.submit(lambda: pq.read_table("hive").to_pandas().groupby("year").v.sum().to_dict()).result()
gz = client.submit(lambda: pacsv.read_csv("t.csv.gz").column("c").to_pylist()).result()
total = client.submit(lambda: int(feather.read_feather("t.feather").c.sum())).result()
filtered = float(dd.read_parquet("pq", filters=[("k", ">", 5)]).v.sum().compute())
""", """
def write(i):
    pq.write_table(pa.table({"i": [i] * 3}), f"out/w{i}.parquet")
    pacsv.write_csv(pa.table({"i": [i]}), f"out/w{i}.csv")
    return i

written = client.gather(client.map(write, range(2)))
client.submit(lambda: pads.write_dataset(pa.table({"k": [1, 2], "v": [3, 4]}), "out/ds", format="parquet",
                                         partitioning=["k"])).result()
dd.read_parquet("pq").to_parquet("out/copy")
""", """
import os

def save(i):   # pandas checks that the folder exists, then writes Parquet through pa.OSFile
    pd.DataFrame({"i": [i]}).to_parquet(f"out/p{i}.parquet")
    pd.DataFrame({"i": [i]}).to_csv(f"out/p{i}.csv")
    return i

def read_back(i):   # a later graph reads what an earlier one wrote, and sees it there
    return os.path.exists(f"out/p{i}.parquet"), int(pd.read_parquet(f"out/p{i}.parquet").i.sum())

saved = client.gather(client.map(save, range(2)))
read = client.gather(client.map(read_back, range(2)))
pd.DataFrame({"saved": saved}).to_csv("summary.csv")   # the kernel's own write: no replay runs it
""", "client.close()\ncluster.close()"]

INPUTS = ["hive", "pq", "t.csv.gz", "t.feather"]
OUTPUTS = {"out/w0.parquet", "out/w1.parquet", "out/w0.csv", "out/w1.csv", "out/ds/1/part-0.parquet",
           "out/ds/2/part-0.parquet", "out/copy/part.0.parquet", "out/copy/part.1.parquet", "out/copy/part.2.parquet",
           "out/p0.parquet", "out/p1.parquet", "out/p0.csv", "out/p1.csv"}


def test_files_read_and_written_by_pyarrow_itself_are_recorded_served_and_sandboxed(ip, tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.chdir(tmp_path)
    ip.run_cell(BEFORE)
    record_cells(ip, "arrow", store, NOTEBOOK)
    values = {k: ip.user_ns[k] for k in ("by_year", "gz", "total", "filtered", "written", "read")}
    assert values == {"by_year": {2020: 3.0, 2021: 3.0}, "gz": list(range(10)), "total": 45,
                      "filtered": 30.0 + 45.0 + 45.0, "written": [0, 1], "read": [(True, 0), (True, 1)]}

    rec = Store(store).open("arrow")
    assert rec.info.status == "complete" and "partial" not in rec.meta
    shown = julius(store, "show", "arrow", cwd=tmp_path).stdout
    for name in ("t.csv.gz", "t.feather", "pq/0.parquet", "pq/2.parquet", "hive/year=2020/", "hive/year=2021/"):
        assert name in shown, shown
    for output in OUTPUTS:
        assert f"output {tmp_path / output}:" in shown or f"output {output}:" in shown, (output, shown)
    assert "output summary.csv" not in shown and "summary.csv" in shown   # recorded, but not a result

    for name in [*INPUTS, "out", "summary.csv"]:
        shutil.rmtree(name) if os.path.isdir(name) else os.remove(name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for workers in ("1", "3"):
        assert replayed_verified(store, "arrow", "-n", workers, cwd=elsewhere) >= 5 + len(OUTPUTS)
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "store"]   # nothing written into the user's folders
    assert list(elsewhere.iterdir()) == []
