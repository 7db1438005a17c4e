"""The magics in a real IPython shell, on a real LocalCluster."""

import re

import pytest
from IPython.core.error import UsageError

from tests.support import run
from julius_magics.errors import NodeError


@pytest.fixture(scope="module")
def shell(ip):
    run(ip, "%cluster start -n 2")
    yield ip
    run(ip, "%cluster stop")


def test_cluster_start_prints_workers_and_status(shell, capsys):
    run(shell, "%cluster status")
    out = capsys.readouterr().out
    assert "2 workers" in out and "started here" in out and out.count("tcp://127.0.0.1") >= 3


def test_bad_options_raise_usage_errors(shell):
    with pytest.raises(UsageError):
        shell.run_line_magic("cluster", "start --bogus")
    with pytest.raises(UsageError):
        shell.run_line_magic("cluster", "launch")
    with pytest.raises(UsageError, match="no variable named nothere"):
        shell.run_cell_magic("remote_eval", "--push nothere", "x = 1")
    with pytest.raises(UsageError, match="no variable named 'missing'"):
        shell.run_line_magic("compute", "missing")


def test_remote_eval_push_local_and_output(shell, capsys):
    run(shell, "threshold = 7")
    run(shell, "%%remote_eval --push threshold --local\ndef above(x):\n    return x > threshold\nprint('ready', threshold)")
    out = capsys.readouterr().out
    assert out.count("ready 7") == 3 and out.count("[tcp://127.0.0.1") == 2   # 2 workers + the kernel
    assert run(shell, "above(8), above(3)") == (True, False)      # --local: defined in the kernel too


def test_addrules_compute_and_graph(shell, tmp_path):
    run(shell, "%%remote_eval\ndef plus(a, b):\n    return a + b")
    run(shell, "%%addrules calc\n"
               "from julius_magics.atoms import ApplyFn\n"
               "def num(i):\n    return ApplyFn(int, i)()\n"
               "def add(i, j):\n    return ApplyFn(plus)(num(i), num(j))\n"
               "def total(n):\n    return ApplyFn(lambda *xs: sum(xs))(*[add(i, i + 1) for i in range(n)])")
    assert sorted(run(shell, "from julius_magics.cluster.session import get_session; get_session().rules.rules['calc']")) == ["add", "num", "total"]
    run(shell, "from julius_magics import ref, compute, getdata\nt = ref.calc.total(5, label='the total')")
    assert run(shell, "%compute t") == sum(2 * i + 1 for i in range(5))
    assert run(shell, "compute([ref.calc.add(1, 2), ref.calc.num(4)])") == [3, 4]
    assert run(shell, "getdata(t)") == 25
    out = tmp_path / "g.svg"
    run(shell, f"%graph t --out {out}")
    svg = out.read_text()
    assert svg.startswith("<?xml") and "the total" in svg and "calc.add" in svg
    assert svg.count('<g id="node') == 12 + 1 and "polygon" in svg   # + the legend table
    run(shell, f"%graph t --out {out} --max-nodes 3")
    small = out.read_text()
    jobs = int(re.search(r"12 nodes in (\d+) key jobs", small).group(1))
    assert 1 < jobs < 12 and small.count('<g id="node') == jobs + 1   # every key job, and the legend


def test_node_errors_are_clear_in_the_shell(shell):
    run(shell, "%%addrules calc\ndef bad():\n    return ApplyFn(lambda: 1 / 0)()")
    with pytest.raises(NodeError, match="ZeroDivisionError"):
        run(shell, "compute(ref.calc.bad(label='division'))")
    assert run(shell, "compute(ref.calc.num(3))") == 3


def test_load_ext_is_idempotent_and_unload_removes_the_magics(shell):
    run(shell, "%load_ext julius_magics")
    run(shell, "%load_ext julius_magics")
    assert "cluster" in shell.magics_manager.magics["line"]
    run(shell, "%unload_ext julius_magics")
    assert "cluster" not in shell.magics_manager.magics["line"]
    assert "remote_eval" not in shell.magics_manager.magics["cell"]
    run(shell, "%load_ext julius_magics")
    assert "record" in shell.magics_manager.magics["line"] and "record" in shell.magics_manager.magics["cell"]


def test_load_ext_starts_the_server_workers_are_forked_from(shell):
    """`%load_ext` spawned the fork server, which preloads julius's worker code (so workers start fast)."""
    import os
    from multiprocessing import forkserver

    server = forkserver._forkserver
    assert server._forkserver_pid is not None
    os.kill(server._forkserver_pid, 0)      # alive
    assert "julius_magics.cluster.worker" in server._preload_modules
