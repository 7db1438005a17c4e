"""Folders made by replayed graphs on workers (os.mkdir, os.makedirs, pathlib) land in the replay's sandbox too."""

import os
import pathlib
import shutil

import dask

from julius_magics.cluster import serve
from tests.support import capture_outputs, replay_outputs


def test_folders_made_by_replayed_graphs_go_to_the_sandbox(tmp_path):
    def write_reports(absolute_root):
        """A notebook's task: makes its folders by three doors, relative and absolute, and writes into them."""
        os.makedirs("out/parts", exist_ok=True)
        with open("out/parts/a.txt", "w") as f:
            f.write("a")
        pathlib.Path("plots").mkdir(parents=True, exist_ok=True)
        pathlib.Path("plots").mkdir(exist_ok=True)   # twice: exist_ok looks where the folder was made
        with open("plots/b.txt", "w") as f:
            f.write("b")
        os.mkdir(os.path.join(absolute_root, "tables"))
        with open(os.path.join(absolute_root, "tables", "c.txt"), "w") as f:
            f.write("c")
        return "written"

    def work(client):
        assert dask.delayed(write_reports)(str(project / "abs")).compute() == "written"

    here = os.getcwd()
    project = tmp_path / "project"
    (project / "abs").mkdir(parents=True)
    os.chdir(project)
    try:
        graphs, outputs = capture_outputs(work)
        assert sorted(o["path"] for o in outputs) == sorted(["out/parts/a.txt", "plots/b.txt",
                                                             str(project / "abs" / "tables" / "c.txt")])
        for made in ("out", "plots", "abs/tables"):   # the folders the notebook made: gone before the replay
            shutil.rmtree(project / made)
        sandbox = tmp_path / "sandbox"
        compared = replay_outputs(graphs, outputs, sandbox)
        assert all(c["same"] for c in compared), compared
        assert all(c["sandbox"].startswith(str(sandbox)) for c in compared)
        assert sorted(os.listdir(project)) == ["abs"] and os.listdir(project / "abs") == []
    finally:
        os.chdir(here)
        serve.install_output_sandbox([], None)


def test_folders_outside_the_recorded_outputs_are_left_alone(tmp_path):
    sandbox, elsewhere = tmp_path / "sandbox", tmp_path / "scratch"
    outputs = [{"path": str(tmp_path / "results" / "run" / "x.csv"),
                "abspath": str(tmp_path / "results" / "run" / "x.csv"), "cwd": str(tmp_path)}]
    serve.install_output_sandbox(outputs, str(sandbox))
    try:
        os.makedirs(elsewhere / "deep")                  # not a folder the recording wrote into: a real one
        pathlib.Path(tmp_path / "results" / "run").mkdir(parents=True)   # the outputs' folder: sandboxed
        os.makedirs(tmp_path / "results", exist_ok=True)                  # and its parent, made on the way
    finally:
        serve.install_output_sandbox([], None)
    assert (elsewhere / "deep").is_dir()
    assert not (tmp_path / "results").exists()
    assert (sandbox / str(tmp_path / "results" / "run").lstrip("/")).is_dir()
