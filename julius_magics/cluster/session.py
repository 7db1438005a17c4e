"""The Dask session: one object through which every action on the cluster goes.

Front-ends (magics, widget, CLI) and the recording layer call a ``Session``; none of
them touches its Dask client. Besides computing, it fingerprints results where they
are (:meth:`Session.fingerprint`), recomputes one node (:meth:`Session.recompute`),
runs functions on the workers, and drives the capture of plain Dask work
(:meth:`Session.start_capture`, :meth:`Session.drain_capture`, :meth:`Session.replay_graph`).

A recorder observes it through ``session.observers``: each is called as
``observer(event, payload)`` for

- ``"cluster"``: ``{"mode": "start"|"connect", "n_workers", "threads_per_worker", "memory_limit", "address"}``
- ``"remote_eval"``: ``{"source", "push": {name: value}, "entry"}``
- ``"rules"``: ``{"ns", "source", "rules", "entry"}``
- ``"dispatch"``: ``{"targets": [NodeRef], "plan": JobPlan, "key_rules", "seconds", "jobs": {id: Future}}``
  (key jobs and targets), after the values arrived
- ``"stop"``: ``{}``
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
import uuid
import warnings

import cloudpickle
import dask

from .. import collector
from ..errors import JuliusError, NoClusterError, NodeError, NotComputedError, RemoteError
from ..rules.evaluate import compile_job
from ..rules.graph import expand, plan_jobs
from ..rules.node import REMOTE_NAMESPACE, NodeRef
from ..rules.registry import RULES, top_level_names
from ..fingerprint import fingerprint_and_describe
from ..progress import progress_bar
from . import capture, resubmit
from .adopt import client_at
from .capture import capture_plugins, install_capture
from .worker import HISTORY_KEY, JuliusWorkerPlugin, apply_history, exec_remote, run_key_job

__all__ = ["Session", "get_session", "set_session", "prepare_workers", "stop_worker_server",
           "worker_start_environ", "run_workers_on"]

log = logging.getLogger(__name__)
_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _as_list(refs):
    if type(refs) is NodeRef:
        return [refs], True
    refs = list(refs)
    bad = [r for r in refs if type(r) is not NodeRef]
    if bad:
        raise TypeError(f"expected node references, got {bad[0]!r:.60}")
    return refs, False


class Session:
    """A Dask client plus the history of remote code and rules sent to its workers.

    Attributes
    ----------
    client : distributed.Client or None
    cluster : LocalCluster or None (only when this session started it)
    seed : int
        The session seed; each node's seed is derived from it and the node id.
    futures : dict of node id -> Future
        Values of key jobs and targets computed so far (``getdata``).
    worker_of : dict of node id -> worker address that computed it (for ``%graph``).
    failed : set of node ids whose atom raised in the last compute.
    progress : bool
        Show a bar for long computes (a replay's session shows the replay's own instead).

    A session is a context manager: leaving the ``with`` block stops it.
    """

    def __init__(self, rulebook=RULES, seed=0, progress=True):
        self.rules = rulebook
        self.seed = seed
        self.client = None
        self.cluster = None
        self.history = []
        self.observers = []
        self.spec = None                 # how the cluster was made: mode, n_workers, threads, memory, address
        self.futures = {}
        self.worker_of = {}
        self.failed = set()
        self.last_plan = None
        self.id = uuid.uuid4().hex[:12]
        self.progress = progress         # a bar for long computes (a replay shows its own instead)
        self._generation = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # --- observers ---------------------------------------------------------------
    def emit(self, event, **payload):
        for observer in list(self.observers):
            observer(event, payload)

    # --- cluster -------------------------------------------------------------------
    @property
    def active(self):
        return self.client is not None

    def require_client(self):
        if self.client is None:
            raise NoClusterError()
        return self.client

    def start(self, n_workers=4, threads_per_worker=1, memory_limit="auto", **cluster_kwargs):
        """Start a fresh LocalCluster (worker processes) and connect to it."""
        from distributed import Client, LocalCluster

        if self.client is not None:
            raise JuliusError("a cluster is already active: run `%cluster stop` first")
        if n_workers < 1 or threads_per_worker < 1:
            raise ValueError("workers and threads must be at least 1")
        cluster_kwargs.setdefault("dashboard_address", ":0")
        # Workers forked from a server process (started by `%load_ext`: prepare_workers) start
        # in 0.3 s instead of 1.5 s; they get the kernel's current environment explicitly, as
        # spawned workers would.
        cluster_kwargs.setdefault("env", dict(os.environ))
        with dask.config.set({"distributed.worker.multiprocessing-method": _START_METHOD}):
            cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit,
                # failures reach the kernel as NodeError/RemoteError; the workers' own error logs
                # (and their heartbeat complaints while a cluster shuts down) would only be noise
                processes=True, silence_logs=logging.CRITICAL,
                scheduler_kwargs={"plugins": capture_plugins()},   # dormant until a recording starts
                **cluster_kwargs,
            )
        try:
            self._attach(Client(cluster, set_as_default=True), cluster)
        except BaseException:
            cluster.close()
            raise
        self.spec = {"mode": "start", "n_workers": n_workers, "threads_per_worker": threads_per_worker,
                     "memory_limit": memory_limit, "address": self.client.scheduler.address}
        self.emit("cluster", **self.spec)
        return self

    def connect(self, address):
        """Use an existing Dask cluster (never closed by ``stop``)."""
        if self.client is not None:
            raise JuliusError("a cluster is already active: run `%cluster stop` first")
        client = client_at(address, set_as_default=True)
        try:
            install_capture(client)
            self._attach(client, None)
        except BaseException:
            self.client = None
            client.close()
            raise
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        self.spec = {"mode": "connect", "n_workers": len(workers),
                     "threads_per_worker": max((w["nthreads"] for w in workers), default=1),
                     "memory_limit": "auto", "address": address}
        self.emit("cluster", **self.spec)
        return self

    def adopt(self, client, cluster, spec):
        """Use a client made elsewhere (a replay's cluster of a recorded shape); ``stop`` closes ``cluster``."""
        if self.client is not None:
            raise JuliusError("a cluster is already active: run `%cluster stop` first")
        self._attach(client, cluster)
        self.spec = dict(spec)
        return self

    def _attach(self, client, cluster):
        """Adopt ``client`` and bring its workers up to date with this session's history."""
        self.client, self.cluster = client, cluster
        self.futures, self.worker_of, self.failed = {}, {}, set()
        client.register_plugin(JuliusWorkerPlugin(), name=JuliusWorkerPlugin.name)
        if self.history:  # rules defined before the cluster existed, or sent to an earlier cluster
            self._send(self.history)

    def stop(self):
        """Close the client; shut the cluster down only if this session started it."""
        if self.client is None:
            return False
        try:
            self.emit("stop")
        finally:   # an observer that fails must not keep the cluster alive
            client, cluster = self.client, self.cluster
            self.client = self.cluster = None
            self.futures, self.worker_of = {}, {}
            with contextlib.suppress(Exception):
                client.close()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close()
        return True

    def status(self):
        """Workers with their state, threads and memory; the dashboard link."""
        client = self.require_client()
        info = client.scheduler_info(n_workers=-1)
        workers = []
        for address, w in sorted(info["workers"].items()):
            metrics = w.get("metrics", {})
            workers.append({
                "address": address, "name": str(w.get("name", "")), "status": w.get("status", "running"),
                "nthreads": w.get("nthreads"), "memory": metrics.get("memory", 0),
                "memory_limit": w.get("memory_limit", 0),
            })
        return {"scheduler": info.get("address"), "dashboard": client.dashboard_link,
                "owned": self.cluster is not None, "workers": workers}

    def n_workers(self):
        return len(self.require_client().scheduler_info(n_workers=-1)["workers"]) if self.client else 0

    # --- remote code and rules --------------------------------------------------------
    def _broadcast(self, entry):
        """Append ``entry`` to the history and apply it on every worker now.

        Returns ``({worker: printed output}, {worker: traceback})``.
        """
        entry["session"] = self.id
        entry["seq"] = len(self.history) + 1
        self.history.append(entry)
        self._invalidate()
        return self._send([entry]) if self.client is not None else ({}, {})

    def _send(self, entries):
        # Into the scheduler's metadata first: a worker that joins meanwhile reads it in its
        # plugin's setup; each worker applies an entry once, however it got it.
        for entry in entries:
            self.client.set_metadata(list(HISTORY_KEY) + [f"{self.id}-{entry['seq']:08d}"], entry)
        results = self.client.run(apply_history, entries)
        failures = {w: r["error"] for w, r in results.items() if r["error"]}
        return {w: r["output"] for w, r in results.items()}, failures

    def _invalidate(self):
        """New code or rules: values computed before may be stale."""
        self.futures, self.worker_of = {}, {}
        self._generation += 1

    def remote_eval(self, source, push=None, local_namespace=None):
        """Run ``source`` in every worker's remote namespace (after binding ``push``).

        Returns ``{worker: printed output}``; raises ``RemoteError`` naming each failing worker.
        With ``local_namespace``, the code also runs there (the kernel's user namespace).
        """
        push = dict(push or {})
        self.require_client()
        compile(source, "<remote_eval>", "exec")   # syntax errors are the kernel's to report
        entry = {"kind": "remote_eval", "source": source,
                 "pushed": cloudpickle.dumps(push) if push else b"", "push": sorted(push)}
        outputs, failures = self._broadcast(entry)
        if local_namespace is not None:
            exec_remote(source, push, local_namespace)
            bound, _ = top_level_names(source)
            REMOTE_NAMESPACE.update({k: local_namespace[k] for k in bound | set(push) if k in local_namespace})
        else:
            bound, _ = top_level_names(source)
            self.rules.note_remote_names(bound | set(push))
        entry["failed"] = bool(failures)   # journaled either way: the workers that succeeded ran it
        self.emit("remote_eval", source=source, push=push, entry=entry)
        if failures:
            raise _remote_error("remote_eval", failures)
        return outputs

    def set_input_map(self, mapping):
        """Make nodes read ``mapping[path]`` instead of ``path`` (replay serves embedded copies so)."""
        _, failures = self._broadcast({"kind": "input_map", "map": dict(mapping)})
        if failures:
            raise _remote_error("input map", failures)

    def add_rules(self, ns, source):
        """Define the top-level functions of ``source`` as rules of ``ns``, here and on every worker."""
        names = self.rules.define(ns, source)
        _, failures = self._broadcast({"kind": "rules", "ns": ns, "source": source})
        self.history[-1]["failed"] = bool(failures)
        self.emit("rules", ns=ns, source=source, rules=names, entry=self.history[-1])
        if failures:
            raise _remote_error(f"addrules {ns}", failures)
        return names

    # --- graphs ---------------------------------------------------------------------------
    def jobdeps(self, refs, key_rules=None):
        """Expand ``refs`` and cut the graph into key jobs, without running anything.

        Nodes computed by earlier ``compute`` calls of this session are not expanded again.
        """
        refs, _ = _as_list(refs)
        nodes, order = expand(refs, self.rules.rule, stop=self.futures)
        n = self.n_workers() if self.client is not None else 1
        return plan_jobs(nodes, order, refs, key_rules or (), n_workers=max(n, 1))

    def compute(self, refs, key_rules=None):
        """Run the graph of ``refs`` on the cluster: one Dask task per key job. Returns the values."""
        client = self.require_client()
        refs, single = _as_list(refs)
        started = time.monotonic()
        # No garbage collection while the graph is built and sent: collections would scan its
        # millions of objects between every phase; afterwards they run while the workers compute.
        with collector.paused():
            plan = self.jobdeps(refs, key_rules)
            submitted = self._submit(plan)
        self.last_plan = plan
        self.failed = set()
        wanted = [submitted[r.id] if r.id in submitted else self.futures[r.id] for r in refs]
        _wait_with_progress(list(submitted.values()), "compute", self.progress)
        try:
            values = client.gather(wanted)
        except NodeError as e:
            self.failed.add(e.node_id)
            for job, future in submitted.items():
                if future.status != "finished":
                    future.release()
                else:
                    self.futures[job] = future
            raise NodeError(_node_error_text(e), e.node_id, e.label, e.worker, e.remote_traceback) from None
        self.futures.update(submitted)
        self._note_workers(submitted)
        self.emit("dispatch", targets=refs, plan=plan, key_rules=sorted(key_rules or ()),
                  seconds=time.monotonic() - started,
                  jobs={**submitted, **{r.id: f for r, f in zip(refs, wanted)}})
        return values[0] if single else values

    def _submit(self, plan):
        """One Dask task per key job, each carrying its compiled sub-graph; returns ``{job id: future}``."""
        submitted = {}
        members = {job: [] for job in plan.jobs}
        for nid in plan.order:
            members[plan.owner[nid]].append(nid)
        for job in plan.jobs:
            node = plan.nodes[job].ref
            deps = plan.job_deps[job]
            with warnings.catch_warnings():  # a big key job carries its sub-graph, by design
                warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
                submitted[job] = self.client.submit(
                    run_key_job, compile_job(plan.nodes, members[job], deps).to_bytes(), self.seed,
                    *[submitted[d] if d in submitted else self.futures[d] for d in deps],
                    key=f"julius-{node.ns}.{node.name}-{job}-{self._generation}", pure=False,
                )
        return submitted

    def _note_workers(self, futures):
        who = self.client.who_has(list(futures.values()))
        by_key = {f.key: nid for nid, f in futures.items()}
        for key, workers in who.items():
            if workers and key in by_key:
                self.worker_of[by_key[key]] = workers[0]

    # --- results where they are ----------------------------------------------------
    def fingerprint(self, futures):
        """``{name: {"fp", "describe"}}`` of ``{name: Future}``, computed on the workers that hold the values.

        The values never travel: only their fingerprints and short descriptions do.
        """
        client = self.require_client()
        fps = {nid: client.submit(fingerprint_and_describe, fut, key=f"julius-fp-{fut.key}", pure=False)
               for nid, fut in futures.items()}
        values = client.gather(list(fps.values()))
        return {nid: {"fp": fp, "describe": desc} for nid, (fp, desc) in zip(fps, values)}

    def recompute(self, ref):
        """The fingerprint of ``ref`` computed once more, under a fresh Dask key (to spot non-determinism)."""
        self.futures.pop(ref.id, None)
        self._generation += 1   # a fresh Dask key: never the cached value
        self.compute(ref)
        return self.fingerprint({ref.id: self.futures[ref.id]})[ref.id]["fp"]

    def run_on_workers(self, function, *args):
        """``{worker address: function(*args)}`` run on every worker (``Client.run``)."""
        return self.require_client().run(function, *args)

    # --- plain Dask work, captured and replayed (see ``cluster.capture``, ``cluster.resubmit``)
    def start_capture(self):
        """Journal the plain Dask work of this session's client from now on."""
        capture.start_capture(self.require_client())

    def stop_capture(self):
        """Stop journaling plain Dask work."""
        capture.stop_capture(self.require_client())

    def drain_capture(self):
        """The events captured since the last drain, in arrival order."""
        return capture.drain_capture(self.require_client())

    def replay_graph(self, event, with_descriptions=False):
        """Submit a captured graph again; ``{key: fingerprint}`` (or ``(fingerprint, description)``)."""
        return resubmit.replay_graph(self.require_client(), event, with_descriptions=with_descriptions)

    def replay_run(self, event):
        """Run a captured ``client.run`` call again."""
        resubmit.replay_run(self.require_client(), event)

    def register_plugin(self, plugin, name):
        """Register a worker plugin (e.g. ``UploadFile``) on the cluster."""
        self.require_client().register_plugin(plugin, name=name)

    def getdata(self, node):
        """The value of a node computed earlier in this session (a target or key job)."""
        if type(node) is not NodeRef:
            raise TypeError(f"getdata needs a node reference, got {node!r:.60}")
        future = self.futures.get(node.id)
        if future is None:
            raise NotComputedError(
                f"{node!r} has not been computed in this session (only targets and key jobs are kept): "
                f"run compute({node.display()!s}) first"
            )
        return future.result()


def _remote_error(what, failures):
    parts = [f"{what} failed on {len(failures)} worker(s):"]
    for worker, tb in sorted(failures.items()):
        parts.append(f"[{worker}]\n{_tail(tb)}")
    return RemoteError("\n".join(parts), failures)


def _tail(text, limit=25):
    lines = text.rstrip().splitlines()
    if len(lines) > limit:
        lines = lines[:2] + [f"  ... ({len(lines) - limit} lines hidden)"] + lines[-(limit - 2):]
    return "\n".join("    " + line for line in lines)


def _node_error_text(e):
    return f"{e}\n  on worker {e.worker}\n  remote traceback:\n{_tail(e.remote_traceback)}"


def _wait_with_progress(futures, what, show=True):
    """Wait for ``futures``, with a progress bar (notebook or terminal) once it takes over a second.

    In a notebook the bar is an ipywidgets bar shown under a display id and emptied when
    it closes, so a saved notebook keeps no stale ``julius compute: 5%|...`` text.
    """
    from distributed import as_completed, wait

    if not show or len(futures) < 2 or os.environ.get("JULIUS_NO_PROGRESS"):
        wait(futures)
        return
    try:
        wait(futures, timeout=1.0)   # quick work shows no bar at all
        return
    except TimeoutError:
        pass
    pending = [f for f in futures if not f.done()]
    with progress_bar(len(futures), f"julius {what}", "job", initial=len(futures) - len(pending), leave=False) as bar:
        for _ in as_completed(pending):
            bar.update(1)


_SESSION = None


def prepare_workers(modules=()):
    """Start the process that worker processes are forked from, ahead of the first cluster.

    ``%load_ext`` and the replay job call this.  The process starts in the background
    (this call only spawns it) and imports distributed, pandas and julius's worker code,
    and ``modules`` (names of other modules the workers will need), so the first
    ``%cluster start`` forks ready workers instead of waiting for those imports in each
    of them.  Nothing happens with the ``spawn`` start method.

    It starts with the variables a nanny sets before it spawns a worker
    (:func:`worker_start_environ`): forked workers inherit its hash seed and its
    already loaded BLAS, so they must be those a spawned worker would have (one BLAS
    thread, ``PYTHONHASHSEED``), not the kernel's.
    """
    if _START_METHOD != "forkserver":
        return
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload(["distributed", "numpy", "pandas", __name__.rpartition(".")[0] + ".worker",
                                       *modules])
    start_env = worker_start_environ()
    saved_env = {k: os.environ.get(k) for k in start_env}
    os.environ.update(start_env)   # the server process is spawned with this process's environment
    try:
        forkserver.ensure_running()
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def stop_worker_server():
    """End the worker fork server (:func:`prepare_workers`) now, once every cluster of this process is closed.

    For a process about to exit: left to stop by itself, the server finalises its modules
    (a second) while it holds this process's output open, and whoever reads that output
    to its end waits for it.
    """
    if _START_METHOD != "forkserver":
        return
    import signal
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)   # it handles no SIGTERM: it ends at once


def run_workers_on(python):
    """Make the worker processes this process starts from now on run on ``python``, in its environment.

    ``multiprocessing.set_executable`` alone is not enough: every process it starts
    (the fork server included) is handed this process's ``sys.path``, so the other
    interpreter would import this environment's packages. They are handed ``python``'s
    own import path instead. For a process that only runs julius's jobs (an isolated
    replay with the workers' own environment): it changes how ``multiprocessing``
    starts every process here.
    """
    import json
    import subprocess
    from multiprocessing import spawn

    out = subprocess.run([python, "-c", "import json, sys; print(json.dumps(sys.path))"], capture_output=True,
                         text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if out.returncode != 0:
        raise JuliusError(f"the workers' Python {python} does not start: "
                          f"{(out.stderr.strip() or 'no message').splitlines()[-1]}")
    sys_path, own = json.loads(out.stdout), spawn.get_preparation_data

    def preparation_data(name):
        return {**own(name), "sys_path": list(sys_path)}

    multiprocessing.set_executable(python)
    spawn.get_preparation_data = preparation_data   # what popen_spawn and popen_forkserver send each child


def worker_start_environ():
    """The variables a nanny sets before it starts a worker process (``distributed.nanny.pre-spawn-environ``).

    As ``distributed.Nanny`` does: those of the config, and a fixed ``PYTHONHASHSEED``
    unless one is set (dask's consistent hashing across workers needs one).
    """
    import distributed  # noqa: F401  -- loads distributed's own config defaults

    env = {k: str(v) for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}).items()}
    if env.get("PYTHONHASHSEED") in (None, "0"):
        env["PYTHONHASHSEED"] = "6640"   # distributed's own choice (Nanny.__init__)
    return env


def get_session():
    """The process-wide default session."""
    global _SESSION
    if _SESSION is None:
        _SESSION = Session()
    return _SESSION


def set_session(session):
    """Make ``session`` the default (``%replay`` does this with the replay's session)."""
    global _SESSION
    _SESSION = session
    return session
