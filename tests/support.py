"""Helpers that tests import (fixtures live in the conftest.py files)."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys

from tests.recording.store_contract import free_port, wait_for_port


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_cli(*argv):
    """``julius ARGV`` in-process: its exit code, and what it wrote to stdout and stderr (warnings hidden)."""
    import contextlib
    import io
    import warnings

    from julius_magics import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def run(shell, code):
    """Run a cell; return its result (re-raising the cell's exception)."""
    result = shell.run_cell(code)
    if result.error_before_exec:
        raise result.error_before_exec
    if result.error_in_exec:
        raise result.error_in_exec
    return result.result


def record_cells(shell, name, store, cells, options=""):
    """Record ``cells`` in ``shell`` between ``%record start NAME --store STORE [options]`` and ``%record stop``."""
    run(shell, f"%record start {name} --store {store} {options}")
    try:
        for cell in cells:
            run(shell, cell)
    finally:
        run(shell, "%record stop")


def graphs_sent(rec):
    """How many graphs the recording holds (a ``graph`` step holds those one client sent in a row)."""
    return sum(s.data.get("graphs", 1) for s in rec.steps if s.kind == "graph")


# --- the ``julius`` command line, as a separate process ----------------------------------------
JULIUS = os.path.join(os.path.dirname(sys.executable), "julius")   # the installed console script


def julius(store, *args, cwd=None, env=None, timeout=600):
    """Run ``julius --store STORE ARGS...`` in ``cwd``; the finished process (stdout, stderr, returncode)."""
    command = [JULIUS] if os.path.exists(JULIUS) else [sys.executable, "-m", "julius_magics.cli"]
    return subprocess.run([*command, "--store", str(store), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


VERIFIED = re.compile(r"Replay of '(?P<name>[^']+)': (?P<steps>\d+)/(?P=steps) steps, (?P<results>\d+) results "
                      r"compared -> VERIFIED: every result fingerprint matched")


def replayed_verified(store, name, *args, cwd=None, env=None):
    """``julius replay NAME ARGS`` must exit 0 with the verified line; returns the number of results compared."""
    proc = julius(store, "replay", name, *args, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = VERIFIED.search(proc.stdout)
    assert match and match["name"] == name, proc.stdout
    return int(match["results"])


# --- a real deployment: ``dask scheduler`` + ``dask worker`` processes ------------------------
def unshare_works():
    """Whether this process may give a child its own mount namespace (root and ``unshare --mount``)."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


UNSHARE_REASON = "needs root and `unshare --mount` (a private tmpfs per worker)"

WRITE_CSV_PARTS = """
import os, sys
import pandas as pd
folder = sys.argv[1]
os.makedirs(os.path.join(folder, "data"), exist_ok=True)
for i in range(2):
    pd.DataFrame({"x": range(i, i + 10)}).to_csv(os.path.join(folder, "data", f"part{i}.csv"), index=False)
"""   # a worker's own files: FOLDER/data/part0.csv (x = 0..9) and part1.csv (x = 1..10)


class Deployment:
    """A scheduler and workers started as separate processes (own sessions), stopped by process group.

    Each worker runs in its own mount namespace with a private tmpfs on ``private``:
    the kernel sees that folder empty.  ``write_files`` (Python source, run with the
    folder as ``sys.argv[1]`` inside the worker's namespace) fills it, as files that
    only workers on other hosts can see.
    """

    def __init__(self, private, write_files=None, n_workers=2):
        self.n_workers = n_workers
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                        "--port", str(self.port), "--dashboard-address", ":0"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
        try:
            wait_for_port(self.port)
            for _ in range(n_workers):
                setup = f"mkdir -p {private} && mount -t tmpfs none {private}"
                if write_files:
                    setup += f" && {sys.executable} -c '{write_files}' {private}"
                worker = (f"{setup} && exec {sys.executable} -m distributed.cli.dask_worker {self.address} "
                          f"--nworkers 1 --nthreads 1 --no-dashboard")
                self.procs.append(subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                                    worker], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                   start_new_session=True))
        except BaseException:
            self.stop()
            raise

    def wait(self, client):
        client.wait_for_workers(self.n_workers, timeout=60)

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# --- outputs written by captured graphs, replayed into a sandbox (the cluster layer's tests) -----
def two_worker_cluster():
    from distributed import LocalCluster

    return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")


def capture_outputs(work, kernel_too=False):
    """Run ``work(client)`` on a fresh capturing cluster with reads and writes noted: (graph events, outputs).

    ``kernel_too``: the kernel's own writes count too (a dataframe's ``to_csv`` makes its folder here).
    """
    from distributed import Client

    from julius_magics.cluster import capture, inputs

    inputs.start_reads()
    try:
        with two_worker_cluster() as cluster, Client(cluster) as client:
            client.register_plugin(inputs.InputsWorkerPlugin(recording=True))
            capture.start_capture(client)
            work(client)
            events = capture.drain_capture(client, final=True)
            reports = [*([inputs.drain_reads()] if kernel_too else []), *client.run(inputs.drain_reads).values()]
    finally:
        inputs.stop_reads()
    return [e for e in events if e["kind"] == "graph"], [o for r in reports for o in r["outputs"]]


def replay_outputs(graphs, outputs, sandbox, kernel_too=False):
    """Replay captured ``graphs`` on a fresh cluster, their writes of ``outputs`` sandboxed: the comparison."""
    from distributed import Client

    from julius_magics.cluster import resubmit, serve

    with two_worker_cluster() as cluster, Client(cluster) as client:
        client.register_plugin(serve.OutputSandbox(outputs, str(sandbox)))
        if kernel_too:
            serve.install_output_sandbox(outputs, str(sandbox))
        for graph in graphs:
            resubmit.replay_graph(client, graph)
        return serve.compare_outputs(client, outputs)


def record_notebook(store, name, source):
    """Run ``source`` as one notebook cell while recording ``name`` in ``store``: (namespace, RecordingInfo)."""
    from julius_magics import recording
    from julius_magics.cluster.session import Session

    recorder = recording.start(Session(), name, store=store)
    namespace = {}
    try:
        exec(compile(source, f"<{name}>", "exec"), namespace)
        recorder.add_cell(source)
    finally:
        info = recording.stop()
    return namespace, info
