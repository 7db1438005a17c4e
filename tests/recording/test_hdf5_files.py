"""A notebook whose tasks read and write HDF5 and netCDF files, recorded unchanged and replayed verified.

h5py, PyTables (pandas' ``read_hdf``, ``dd.read_hdf``) and netCDF4 open their files in C, where
no "open" audit event fires; their own entry points are the door (``cluster/native.py``).  The
inputs are deleted and the replays run from another folder: each read is served from the
recording, pandas' check that the file exists sees the served copy, a new file a task writes
lands in the replay's sandbox, and a file a task updates in place (HDF5's mode ``"a"``) is a
sandboxed copy of what the recording read.
"""

import os
import shutil

import pytest

from julius_magics.recording.store import Store
from tests.support import file_sha256, julius, record_cells, replayed_verified

pytestmark = pytest.mark.usefixtures("fresh_session")

BEFORE = """
import os, h5py, netCDF4, numpy as np, pandas as pd
os.makedirs("data")
with h5py.File("data/grid.h5", "w") as f:
    f["x"] = np.arange(100.0)
with h5py.File("data/notes.h5", "w") as f:
    f["first"] = np.ones(3)
pd.DataFrame({"k": range(40), "v": np.linspace(0.0, 1.0, 40)}).to_hdf("data/frame.h5", key="table", format="table")
with netCDF4.Dataset("data/cube.nc", "w") as ds:
    ds.createDimension("time", 12)
    ds.createVariable("t", "f8", ("time",))[:] = np.arange(12.0) / 4
"""
NOTEBOOK = ["""
import h5py, netCDF4, numpy as np, pandas as pd, dask.dataframe as dd
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
client = Client(cluster)
""", """
def grid_sum(start):   # h5py, a relative path, on a worker
    with h5py.File("data/grid.h5", "r") as f:
        return float(f["x"][start:start + 10].sum())

def cube_mean():   # netCDF4
    with netCDF4.Dataset("data/cube.nc") as ds:
        return float(ds["t"][:].mean())

def write_log(values):   # a new HDF5 file: an output
    with h5py.File("log.h5", "w") as f:
        f["v"] = np.asarray(values)
    return len(values)

def add_note():   # an existing file updated in place: its earlier version is an input
    with h5py.File("data/notes.h5", "a") as f:
        f["second"] = f["first"][:] * 2
        return sorted(f.keys())

sums = client.gather(client.map(grid_sum, [0, 10, 20]))
mean = client.submit(cube_mean).result()
frame = dd.read_hdf("data/frame.h5", "/table", chunksize=10)   # PyTables, in the kernel and on the workers
total = float(frame.v.sum().compute())
logged = client.submit(write_log, sums).result()
notes = client.submit(add_note).result()
frame.to_hdf("table-out.h5", "/t")                   # PyTables writes the time into the file: compared by content
frame.to_csv("csv-out/part-*.csv.gz", compression="gzip")   # so does gzip
""", "client.close()\ncluster.close()"]


def test_hdf5_and_netcdf_files_are_recorded_served_and_sandboxed(ip, tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.chdir(tmp_path)
    ip.run_cell(BEFORE)
    before = {p: file_sha256(f"data/{p}") for p in ("grid.h5", "notes.h5", "frame.h5", "cube.nc")}
    record_cells(ip, "hdf5", store, NOTEBOOK)
    assert [ip.user_ns[k] for k in ("sums", "mean", "logged", "notes")] == [[45.0, 145.0, 245.0], 1.375, 3,
                                                                            ["first", "second"]]
    assert ip.user_ns["total"] == pytest.approx(20.0)

    rec = Store(store).open("hdf5")
    assert rec.info.status == "complete" and "partial" not in rec.meta
    inputs = {(f["path"], f["sha256"]) for s in rec.steps if s.kind == "inputs" for f in s.data["files"]}
    assert inputs == {(f"data/{p}", sha) for p, sha in before.items()}   # notes.h5 as it was before the update
    outputs = {os.path.relpath(f["abspath"]): f for s in rec.steps if s.kind == "outputs" for f in s.data["files"]}
    assert sorted(outputs) == [*(f"csv-out/part-{i}.csv.gz" for i in range(4)), "data/notes.h5", "log.h5",
                               "table-out.h5"]
    assert outputs["table-out.h5"]["content"] and outputs["csv-out/part-0.csv.gz"]["content"]
    assert outputs["data/notes.h5"]["existed"] and not outputs["log.h5"]["existed"]
    shown = julius(store, "show", "hdf5", cwd=tmp_path).stdout
    assert "data/cube.nc" in shown and "output log.h5:" in shown, shown

    shutil.rmtree("data")
    for written in ("log.h5", "table-out.h5"):
        os.remove(written)
    shutil.rmtree("csv-out")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for workers in ("1", "3"):
        # 11 results, and the 8 files the tasks wrote (the updated notes.h5 too) as the recording wrote them
        assert replayed_verified(store, "hdf5", "-n", workers, cwd=elsewhere) == 11 + 8
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "store"]   # nothing written into the user's folders
    assert list(elsewhere.iterdir()) == []
