"""The tutorial pipeline: the notebook runs in a real kernel, and results do not depend on the worker count."""

import os
import re
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

import julius_magics as jm
from julius_magics import tutorial
from julius_magics.datasets import make_fraud_data
from julius_magics.fingerprint import fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "fraud_tracking.ipynb")

# Small data and models for the determinism runs: 4 training and 4 test chunks.
SMALL = {"train_blocksize": "0.85 MB", "test_blocksize": "0.45 MB",
         "options": {"n_estimators": 10, "min_samples_leaf": 5}}


def _cell_body(source, magic):
    """The text of a cell after its first line, which must be ``magic``."""
    first, _, body = source.partition("\n")
    assert first.strip() == magic
    return body


def _cells_starting_with(nb, prefix):
    return [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(prefix)]


def test_notebook_cells_are_the_tutorial_module_sources():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [remote_cell] = _cells_starting_with(nb, "%%remote_eval")
    [rules_cell] = _cells_starting_with(nb, "%%addrules")
    assert _cell_body(remote_cell.source, "%%remote_eval").rstrip() == tutorial.REMOTE_SOURCE.rstrip()
    assert _cell_body(rules_cell.source, "%%addrules ml").rstrip() == tutorial.RULES_SOURCE.rstrip()
    # the notebook uses the module's model, options and block sizes
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert repr(tutorial.MODEL).replace("'", '"') in text
    assert repr(tutorial.OPTIONS).replace("'", '"') in text
    assert f'blocksize="{tutorial.TRAIN_BLOCKSIZE}"' in text and f'blocksize="{tutorial.TEST_BLOCKSIZE}"' in text
    # outputs are kept empty in the repository
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_pipeline_refs_describe_the_map_reduce(tmp_path):
    train, test = make_fraud_data(tmp_path, train_mb=3, test_mb=1.5)
    refs = tutorial.pipeline_refs(train, test, train_blocksize="0.85 MB", test_blocksize="0.45 MB")
    assert len(refs["train_chunks"]) == 4 and len(refs["test_chunks"]) == 4
    assert refs["score"].key == "ml.score" and refs["score"].label == "AUC"
    assert refs["score"].args == (refs["scored"],)
    assert refs["scored"].key == "mr.mapreduce" and refs["scored"].args[0] == refs["test_chunks"]
    assert [d.args[0] for d in refs["downsampled"]] == refs["train_chunks"]
    # node ids are content hashes: building the refs again gives the same ids
    again = tutorial.pipeline_refs(train, test, train_blocksize="0.85 MB", test_blocksize="0.45 MB")
    assert again["score"].id == refs["score"].id


def test_notebook_runs_and_finds_the_fraud(tmp_path, monkeypatch):
    shutil.copy(NOTEBOOK, tmp_path / "fraud_tracking.ipynb")
    nb = nbformat.read(tmp_path / "fraud_tracking.ipynb", as_version=4)
    # the kernel imports julius_magics from this checkout even when it is not installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    auc_cell, recorded_cell = [c for c in nb.cells if c.cell_type == "code" and 'print(f"AUC:' in c.source]
    text = "".join(o.get("text", "") for o in auc_cell.outputs)
    auc = float(re.search(r"AUC: ([0-9.]+)", text).group(1))
    assert 0.75 < auc < 1.0
    assert (tmp_path / "data" / "train_fraud.csv").exists()
    svg = (tmp_path / "fraud_graph.svg").read_text()
    assert svg.lstrip().startswith(("<?xml", "<svg")) and "</svg>" in svg
    [stats_cell] = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("sample = getdata")]
    assert re.search(r"\d+ rows, [0-9.]+% fraud", "".join(o.get("text", "") for o in stats_cell.outputs))

    # parts 2 and 3: recorded on 4 workers, replayed on 2, verified, the same AUC
    def printed(marker):
        [cell] = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
        return "".join(o.get("text", "") for o in cell.outputs)

    assert f"AUC: {auc:.4f}" in printed("recorded_auc = compute")
    assert re.search(r"verified: True \| steps: \d+ \| results compared: \d+", printed('print("verified:"'))
    assert "identical: True" in printed("replayed_auc = getdata")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_fraud_data(tmp_path_factory.mktemp("fraud_small"), train_mb=3, test_mb=1.5)


def _run_on(n_workers, train, test):
    """AUC and fingerprints of the downsampled chunks, computed on ``n_workers`` workers."""
    session = jm.get_session()
    session.start(n_workers=n_workers, threads_per_worker=1)
    try:
        result = tutorial.run_pipeline(session, train, test, **SMALL)
        downsampled = session.compute(result["downsampled"])
        return result["auc"], [fingerprint(d) for d in downsampled], [len(d) for d in downsampled]
    finally:
        session.stop()


def test_pipeline_gives_identical_results_on_1_2_and_4_workers(small_data):
    train, test = small_data
    runs = {n: _run_on(n, train, test) for n in (1, 2, 4)}
    auc1, prints1, sizes1 = runs[1]
    assert 0.7 < auc1 < 1.0
    assert len(set(prints1)) == 4          # the four chunks are downsampled differently
    assert all(250 < size < 700 for size in sizes1)
    for n in (2, 4):
        auc, prints, _ = runs[n]
        assert auc == auc1                 # bit-identical, not approximately equal
        assert prints == prints1
