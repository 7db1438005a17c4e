"""Replay a recording into a fresh cluster and prove it reproduced.

``replay`` opens the recording (every byte verified, signature trusted, before
anything is unpickled), checks input data and environment, starts a cluster,
replays the journal in order (each step as its kind in :mod:`.steps` says) and
compares the fingerprint of every recorded result with the replayed one.

Progress is one stream of typed events, :class:`Progress`, handed to the
``progress`` callable; every front-end consumes that stream (the terminal and
notebook bar :class:`ProgressBar`, the widget's bar, and
:mod:`.replay_job`, which writes the events as JSON lines for the server).
:class:`Progress`, :class:`ProgressBar` and :class:`ReplayReport` live in
:mod:`.report` and are importable from here too.
"""

from __future__ import annotations

import contextlib
import os
import time

import cloudpickle

from ..cluster import resubmit, serve
from ..cluster.adopt import SHAPE, start_like
from ..cluster.session import Session
from ..errors import DataChangedError, EnvironmentMismatchError, JuliusError
from ..rules.registry import RuleBook
from . import steps as step_kinds
from .environment import capture_environment, env_diff, environment_cause, format_env_diff
from .journal import file_digest
from .redaction import REDACTED
from .report import Progress, ProgressBar, ReplayReport
from .steps import recorded_environment
from .store import Store

__all__ = ["replay", "ReplayReport", "Progress", "ProgressBar", "prepare_inputs"]


def _cache_dir():
    path = os.path.join(os.path.expanduser("~"), ".julius", "cache")
    os.makedirs(path, exist_ok=True)
    return path


def prepare_inputs(recording, report):
    """Check every recorded input file; serve embedded copies for missing or changed ones.

    Returns ``{recorded path: path to read}`` for the files that must be redirected.
    Raises ``DataChangedError`` naming the file when it changed and no copy exists.
    """
    mapping = {}
    for step in recording.steps:
        if step.kind != "data":
            continue
        for f in step.data["files"]:
            path, sha = f["path"], f["sha256"]
            status = "missing" if not os.path.isfile(path) else (
                "unchanged" if file_digest(path)[1] == sha else "changed")
            if status == "unchanged":
                report.data.append({"path": path, "status": status})
                continue
            if not f.get("embedded"):
                raise DataChangedError(
                    f"input file {path} is {status} on this machine (recorded SHA-256 {sha[:16]}…) and "
                    f"recording {recording.name!r} holds only its hash (--data hash): restore the file to replay"
                )
            copy = os.path.join(_cache_dir(), sha)
            if not os.path.isfile(copy):
                recording.blob_to_file(sha, copy)
            mapping[path] = copy
            report.data.append({"path": path, "status": f"{status}: served from recording"})
    return mapping


def _cause(env, nondeterministic):
    """The likely cause of a differing result, by name.

    The re-check first; then a cluster that runs tasks otherwise than recorded (threads or
    processes, threads per worker: the replay could not match them); then the
    environment's differences (:func:`.environment.environment_cause`: packages, Python,
    OS, numerics, BLAS/OpenMP thread counts); else what lies outside the recording.

    Examples
    --------
    >>> _cause({"threads": {"threads per worker": [2, 1], "blas threads": [[2], [1]]}}, False)
    'the cluster runs tasks otherwise (threads per worker 2 -> 1); BLAS/OpenMP thread counts differ (blas threads [2] -> [1])'
    >>> _cause({"python": {"version": ["3.11.7", "3.12.1"]}, "same": False}, False)
    'environment differs (python version 3.11.7 -> 3.12.1)'
    """
    if nondeterministic:
        return "non-deterministic operation: computing the node twice in the replay gave different values"
    threads = env.get("threads") or {}
    shape = [f"{name} {old} -> {new}" for name, (old, new) in threads.items() if name in SHAPE]
    rest = environment_cause({**env, "threads": {k: v for k, v in threads.items() if k not in SHAPE}})
    named = [f"the cluster runs tasks otherwise ({', '.join(shape)})" if shape else None, rest]
    return "; ".join(n for n in named if n) or ("code or data outside the recording changed (a module imported "
                                                "or a file read directly, not through the rules)")


class _Context:
    """What a step kind's replay function works with (see :mod:`.steps`)."""

    def __init__(self, session, recording, report):
        self.session = session
        self.recording = recording
        self.report = report

    def part(self, step, name):
        return self.recording.part(step, name)

    def unpickle(self, step, name):
        # only ever called after Store.open verified every byte and trusted the signature
        return cloudpickle.loads(self.recording.part(step, name))

    def compute(self, refs, key_rules, recorded_seconds=0.0):
        t0 = time.monotonic()
        self.session.compute(refs, key_rules=key_rules)
        self.report.timings["compute"] += time.monotonic() - t0
        if self.report.timings["recorded_compute"] is not None:
            self.report.timings["recorded_compute"] += recorded_seconds

    def compare(self, step, replayed, recompute, failure=None):
        """Compare ``step``'s recorded results with ``replayed`` (``{id: (fp, description)}``).

        ``recompute(id)`` gives the fingerprint computed once more, to tell a
        non-deterministic result from a changed one; ``failure`` explains the
        results that failed: one text for the whole step, or ``{id: text}``.
        """
        for nid, rec in step_kinds.results(step).items():
            self.report.results += 1
            got = replayed.get(nid)
            if got is not None and got[0] == rec["fp"]:
                continue
            why = failure.get(nid) if isinstance(failure, dict) else failure
            nondeterministic = (not why and got is not None and recompute is not None
                                and _differs_again(recompute, nid, got[0]))
            self.report.mismatches.append({
                "node": nid, "label": rec["label"], "recorded": rec["fp"], "replayed": got and got[0],
                "recorded_value": rec["describe"] if rec["describe"] is not None else "?",
                "replayed_value": got[1] if got else "not computed",
                "cause": why or _cause(self.report.env_diff, nondeterministic),
            })


def _recompute(batch, event):
    """``recompute(key)``: ``key``'s fingerprint when ``event``'s graph is computed once more, for the
    re-check of the keys that differ; the graph is computed again once, whatever number differ."""
    again = {}

    def recompute(key):
        if not again:
            batch.release()   # the kept keys too: a held key would give the re-check its own value back
            try:
                again["values"] = resubmit.replay_graph(batch.client, event)
            except Exception as error:   # noqa: BLE001  (what the user's code raises the second time)
                again["error"] = error
        if "error" in again:
            raise again["error"]
        return again["values"].get(key)

    return recompute


def _differs_again(recompute, nid, replayed_fp):
    """Whether computing ``nid`` once more gives another value; failing the second time counts as differing.

    A graph drawing unseeded randomness may even raise on its second run: every
    difference is still reported, the replay never dies of its own re-check.
    """
    try:
        return recompute(nid) != replayed_fp
    except Exception:   # noqa: BLE001  (whatever the user's code raises the second time)
        return True


def replay(name, store=None, n_workers=None, address=None, strict_env=False, trust_key=None, progress=None,
           keep=False, legacy_hmac=False):
    """Replay recording ``name`` and verify it.

    Parameters
    ----------
    name : str
    store : Store, str or None
    n_workers : int, optional
        Workers of the fresh LocalCluster (default: as recorded).
    address : str, optional
        Replay on this existing cluster instead of a fresh one.
    strict_env : bool
        Refuse to replay when the environment differs from the recorded one.
    trust_key : str, optional
        The fingerprint of one more key to accept for this replay (``--trust-key``);
        your key and your trusted keys are always accepted, no other (content
        hashes are always checked).
    progress : callable, optional
        Called with a :class:`Progress` event before the first step and after each.
    keep : bool
        Keep the replay's session (and cluster) running and hand it over in
        ``report.session``; the caller stops it. By default it is stopped.

    Returns
    -------
    ReplayReport
        ``report.session`` is the replay's session. ``%replay`` makes it the
        kernel's, so that ``getdata`` gives replayed values.
    legacy_hmac : bool
        Replay a julius-recording/1 recording sealed with your key file's secret.
    """
    if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1):
        raise ValueError(f"invalid worker count {n_workers!r}: give a positive integer (or None: as recorded)")
    store = Store.coerce(store)
    started = time.monotonic()
    recording = store.open(name, trust_key=trust_key, legacy_hmac=legacy_hmac)
    report = ReplayReport(name)
    report.complete = recording.info.status != "incomplete"
    steps = recording.steps
    report.total_steps = len(steps)
    say = progress or (lambda event: None)
    say(Progress(0, len(steps), "checking data and environment"))
    for step in steps:
        step_kinds.kind_of(step, f"recording {name!r}")   # refuse unknown kinds before a cluster starts
    if not (n_workers or address):
        _check_local_workers(name, steps)

    mapping = prepare_inputs(recording, report)
    recorded_kernel, recorded_workers = recorded_environment(recording)
    spec = next((s.data for s in steps if s.kind == "cluster"), {})
    # its own rule book: the replay must stand on the recording alone, not on the kernel's rules;
    # no compute bars: the replay's own progress covers its computes
    session = Session(rulebook=RuleBook(), seed=spec.get("seed", 0), progress=False)
    report.session = session
    t0 = time.monotonic()
    report.timings["open"] = t0 - started
    first_address = _start_first_cluster(session, steps, spec, n_workers, address)
    report.timings["cluster"] = time.monotonic() - t0
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(_timed, report, "close", session.stop)
        if recorded_kernel is not None:   # compared with a client active, as when it was recorded
            t0 = time.monotonic()
            _compare_environments(report, session, recorded_kernel, recorded_workers)
            report.timings["environment"] = time.monotonic() - t0
            if strict_env and not report.env_diff.get("same", True):
                raise EnvironmentMismatchError(
                    f"--strict-env: the environment differs from recording {name!r}:\n"
                    f"{format_env_diff(report.env_diff)}")
        if mapping:
            session.set_input_map(mapping)
        cleanup.callback(serve.stop_serving)   # whatever happens, the kernel's own files again
        context = _CaptureContext(session, recording, report, first_address, address, n_workers)
        cleanup.callback(context.close)
        context.prepare()
        for i, step in enumerate(steps, 1):
            context.replay_step(step_kinds.kind_of(step), step)
            report.steps = i
            say(Progress(i, len(steps), f"{step.kind} ({i}/{len(steps)})"))
        context.flush()
        if keep:   # the clusters stay, serving no more
            serve.stop_serving([session.client, *(client for client, _ in context.owned)])
            cleanup.pop_all()   # the caller's now
    report.timings["replay"] = time.monotonic() - started
    report.complete = recording.info.status != "incomplete"
    report.partial = list(recording.meta.get("partial_reasons") or []) if recording.meta.get("partial") else []
    if report.complete and not report.partial and report.steps == report.total_steps:   # ran to its end
        recording.mark_verified({"verified": report.verified, "results": report.results, "steps": report.steps,
                                 "differ": len(report.mismatches)})
    return report


SANDBOXES_KEPT = 20   # the latest replays' output folders; older ones are removed as new ones come


def _new_sandbox(name) -> str:
    """A new ``~/.julius/replays/NAME-TIME-PID`` for a replay's outputs; the oldest beyond :data:`SANDBOXES_KEPT` go."""
    import datetime
    import shutil

    root = os.path.join(os.path.expanduser("~"), ".julius", "replays")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    folder = os.path.join(root, f"{name}-{stamp}-{os.getpid()}")
    os.makedirs(folder, exist_ok=True)
    with os.scandir(root) as entries:
        earlier = sorted((e for e in entries if e.is_dir(follow_symlinks=False) and e.path != folder),
                         key=lambda e: e.stat(follow_symlinks=False).st_mtime)
    for old in earlier[:max(0, len(earlier) - (SANDBOXES_KEPT - 1))]:
        shutil.rmtree(old.path, ignore_errors=True)
    return folder


def _timed(report, name, fn):
    t0 = time.monotonic()
    try:
        fn()
    finally:
        report.timings[name] = time.monotonic() - t0


def _compare_environments(report, session, recorded_kernel, recorded_workers):
    """The kernel's differences, or the first worker's when the kernel's are none; the workers' thread
    counts (where results are computed) either way."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:   # the kernel's own while the workers capture theirs
        on_workers = pool.submit(session.run_on_workers, capture_environment)
        report.env_diff = env_diff(recorded_kernel, capture_environment())
        workers_now = list(on_workers.result().values())
    if recorded_workers and workers_now:
        worker_diff = env_diff(next(iter(recorded_workers.values())), workers_now[0])
        if report.env_diff.get("same", True) and not worker_diff.get("same", True):
            report.env_diff = worker_diff
        else:
            report.env_diff["threads"] = {**report.env_diff.get("threads", {}),
                                          **{f"workers' {k}": v for k, v in worker_diff.get("threads", {}).items()}}


def _note_shape(report, differences):
    """A cluster built with other thread counts than recorded: named in the report and as a likely cause."""
    for name, (recorded, replayed) in differences.items():
        report.cluster_notes.append(f"{name}: recorded {recorded}, replayed with {replayed}")
    report.env_diff["threads"] = {**report.env_diff.get("threads", {}), **differences}


# --- plain Dask work: clusters of the recorded shape, graphs in flight together, files ------------
# Graph steps are submitted as they come and compared at the next step that must wait for them
# (a step that changes the workers, a rule dispatch, a client.run, outputs) or at the end, so
# graphs that were in flight together when recorded run together again.
_BATCHED = {"graph", "scatter", "fingerprints", "cell", "inputs", "remote_inputs", "dropped", "worker_joined",
            "worker_left", "environment", "adopted_cluster", "data", "cluster"}
_RESIZES = {"worker_joined", "worker_left"}


def local_worker_limit() -> int:
    """The most workers a replay starts on this machine from a recording's count (more: -n or --address)."""
    return max(64, 8 * (os.cpu_count() or 1))


def _check_local_workers(name, steps):
    """Refuse a recorded worker count this machine cannot start (a forged one: 100000), naming its step."""
    limit = local_worker_limit()
    for step in steps:
        d = step.data
        count = {"cluster": d.get("n_workers"), "worker_joined": d.get("workers"),
                 "adopted_cluster": (d.get("spec") or {}).get("n_workers")}.get(step.kind)
        if count is not None and count > limit:
            raise JuliusError(f"Recording '{name}': journal entry {step.seq} ({step.kind}) asks for {count} workers, "
                              f"more than this machine starts ({limit}): give -n N or --address.")


def _start_first_cluster(session, steps, spec, n_workers, address):
    """Start the replay's first cluster: the session's recorded one, or the first adopted cluster's shape.

    Returns the recorded scheduler address it stands for (None when unknown).
    """
    adopted = next((s.data for s in steps if s.kind == "adopted_cluster" and s.data.get("spec")), None)
    if not spec and adopted is not None:
        client, cluster, differences = start_like(adopted["spec"], n_workers=n_workers, address=address)
        session.adopt(client, cluster, {"mode": "adopted", "n_workers": adopted["spec"].get("n_workers"),
                                        "address": client.scheduler.address})
        session.cluster_differences = differences
        return adopted["address"]
    if address:
        session.connect(address)
    else:
        session.start(n_workers=n_workers or spec.get("n_workers") or 2,
                      threads_per_worker=spec.get("threads_per_worker") or 1)
    return spec.get("address")


def _versions_in_time(inputs, outputs) -> dict:
    """``{abspath: [(mtime_ns, recorded input entry, or None for the replay's own output)]}``, oldest first.

    Only for files the recording saw in several versions: read, rewritten by the kernel's own
    code (a cell), then read again; or a task's output that a cell rewrote.  A version is
    current from its modification time on, so the graphs sent after it read it.
    """
    versions = {}
    for f in inputs:
        if f.get("mtime_ns") is not None:
            versions.setdefault(f["abspath"], {})[f["sha256"]] = (f["mtime_ns"], f)
    for o in outputs:   # those a replay writes in its sandbox (made in the session, by a task)
        if not o.get("existed") and serve.written_by_a_task(o):   # one a cell rewrote: before the cell's
            versions.setdefault(o["abspath"], {})[None] = (0 if o.get("rewritten") else o.get("mtime_ns") or 0, None)
    return {path: sorted(found.values(), key=lambda version: version[0])
            for path, found in versions.items() if len(found) > 1 and any(sha for sha in found)}   # an input among


def _current(versions, at_ns):
    """The entry of ``versions`` (:func:`_versions_in_time`) current at ``at_ns``; the oldest before any."""
    current = versions[0][1]
    for mtime_ns, entry in versions:
        if mtime_ns <= at_ns:
            current = entry
    return current


class _CaptureContext(_Context):
    """The replay context with what plain Dask work needs: several clusters, batches, served files."""

    def __init__(self, session, recording, report, first_address, address, n_workers):
        super().__init__(session, recording, report)
        self.default = session.client
        self.clients = {first_address: session.client} if first_address else {}
        self.address, self.n_workers = address, n_workers
        self.owned = []          # (client, cluster) this replay started for adopted clusters
        self.batches = {}        # id(client) -> (GraphBatch, [graph steps])
        self.later = []          # fingerprints steps, compared once their graph is
        self.values = {}         # (recorded address, graph seq) -> {key: (fp, description)}
        self.recomputes = {}     # (recorded address, graph seq) -> recompute(key), for the re-check
        self.failures = {}       # (recorded address, graph seq) -> {key: why it failed}, for the keys that did
        self.scattered = []      # futures of replayed scatters, held until the end
        # keys a later graph depends on (a persisted collection, a future passed on): held until the end
        self.reused = {k for s in recording.steps if s.kind == "graph" for k in s.data.get("reuses", ())}
        self.inputs, self.outputs, self.remote = [], [], []
        self.timelines, self.chosen = {}, {}   # files seen in several versions (_versions_in_time); served now
        # recorded scheduler address -> the cluster this replay started for it, scaled as that one was
        self.scalable = {first_address: session.cluster} if session.cluster is not None else {}
        self.sizes = {}          # recorded scheduler address -> its latest worker count, not applied yet
        report.scaled_kept = f"{n_workers} workers (-n)" if n_workers else f"the cluster at {address}" if address else None
        _note_shape(report, getattr(session, "cluster_differences", {}))

    # --- set-up ---------------------------------------------------------------------
    def prepare(self):
        """Serve the recorded inputs and put the outputs in a sandbox, on the first cluster."""
        for step in self.recording.steps:
            if step.kind == "inputs":
                self.inputs.extend(step.data["files"])
            elif step.kind == "outputs":
                self.outputs.extend(step.data["files"])
            elif step.kind == "remote_inputs":
                self.remote.extend(step.data["files"])
        remote = list({entry["url"]: entry for entry in self.remote}.values())   # each one checked once
        self.remote = [entry for entry in remote if REDACTED not in entry["url"]]
        self.report.data.extend({"path": entry["url"], "status": "not checked: its URL held a credential (stored "
                                 "redacted)"} for entry in remote if REDACTED in entry["url"])
        seen, unique = set(), []
        for f in self.inputs:   # one entry per file version (several readers read the same one)
            if (f["abspath"], f["sha256"]) not in seen:
                seen.add((f["abspath"], f["sha256"]))
                unique.append(f)
        self.inputs = unique
        self.timelines = _versions_in_time(self.inputs, self.outputs)
        if self.outputs:
            self.report.sandbox = _new_sandbox(self.recording.name)
        self._serve(self.default)

    def _serve(self, client):
        if self.inputs:
            served = serve.serve_inputs(client, self.inputs, self.recording.blob,
                                        embedded=lambda f: f.get("embedded", False),
                                        copy_blob=self.recording.blob_to_file)
            known = {d["path"] for d in self.report.data}
            self.report.data.extend(d for d in served if d["path"] not in known)
        if self.remote:
            self.report.data.extend(serve.serve_remote(client, self.remote, self.recording.blob))
        if self.outputs:
            serve.install_output_sandbox(self.outputs, self.report.sandbox)
            client.register_plugin(serve.OutputSandbox(self.outputs, self.report.sandbox))

    def client_for(self, address):
        return self.clients.get(address, self.default)

    # --- steps -------------------------------------------------------------------------
    def replay_step(self, kind, step):
        if kind.replay is None:
            return
        if kind.name not in _RESIZES:   # joins and leaves in a row (a scale, a restart) net out first
            self._scale()
        if kind.name not in _BATCHED:
            self.flush()
        kind.replay(self, step)

    def resize(self, step):
        if step.data.get("workers"):   # none: every worker left (the notebook closed its cluster)
            self.sizes[step.data.get("address")] = step.data["workers"]

    def _scale(self):
        """Scale the replay's clusters to the worker counts their recorded ones had at this point."""
        sizes, self.sizes = self.sizes, {}
        for address, n in sizes.items():
            cluster = self.scalable.get(address)
            if self.report.scaled_kept or cluster is None:   # -n, --address: the user's count or cluster, as it is
                if self.report.scaled_kept:
                    self.report.scaled.setdefault(address, []).append(str(n))
                continue
            have = len(cluster.worker_spec)
            if n == have:
                continue
            if n < have:   # retiring workers moves their results: not under graphs in flight
                self.flush()
            cluster.scale(n)   # not waited for: the recorded graphs were sent while the workers came
            self.report.scaled.setdefault(address, []).append(str(n))

    def use_cluster(self, step):
        d = step.data
        if d["address"] in self.clients or not d.get("captured") or not d.get("spec"):
            return
        if self.address:   # --address: every recorded cluster replays there
            self.clients[d["address"]] = self.default
            return
        client, cluster, differences = start_like(d["spec"], n_workers=self.n_workers)
        self.owned.append((client, cluster))
        self.clients[d["address"]] = client
        self.scalable[d["address"]] = cluster
        _note_shape(self.report, differences)
        self._serve(client)

    def submit_graph(self, step):
        client = self.client_for(step.data.get("address"))
        batch, submitted = self.batches.setdefault(id(client), (resubmit.GraphBatch(client), []))
        parts = {"specs": self.part(step, "specs")} if "specs" in step.part_names else {}
        batch.submit(dict(step.data, **parts), before=lambda sent: self._use_versions_of(sent, batch))
        submitted.append(step)

    def _use_versions_of(self, sent, batch):
        """Serve the files of several versions as they were when a graph was sent at ``sent`` (seconds)."""
        if not self.timelines or sent is None:
            return
        chosen = {path: _current(versions, int(sent * 1e9)) for path, versions in self.timelines.items()}
        chosen = {path: entry for path, entry in chosen.items() if entry is not None}
        if chosen == self.chosen:
            return
        batch.wait()   # the graphs in flight read the versions before
        self.chosen = chosen
        serve.use_versions(chosen)
        for client in [self.default, *(client for client, _ in self.owned)]:
            client.register_plugin(serve.ServedVersions(chosen))

    def replay_scatter(self, step):
        client = self.client_for(step.data.get("address"))
        values = {text: self.recording.blob(sha) for text, sha in step.data.get("values", {}).items()}
        event = dict(step.data, keys=[k for k in step.data["keys"] if k in values])
        if event["keys"]:
            self.scattered.append(resubmit.replay_scatter(client, event, values))

    def compare_later(self, step):
        self.later.append(step)

    def compare_outputs(self, step):
        self.flush()
        files = [f for f in step.data["files"] if serve.written_by_a_task(f)]   # the kernel's own: not replayed
        if not files:
            return
        compared = serve.compare_outputs(self.default, files)
        for client, _ in self.owned:
            for other in serve.compare_outputs(client, files):
                for mine in compared:
                    if mine["abspath"] == other["abspath"] and mine["replayed"] is None:
                        mine.update(other)
        self.report.outputs.extend(compared)
        replayed = {c["abspath"]: (c["replayed"], f"written to {c['sandbox']}" if c["sandbox"] else "not written")
                    for c in compared if c["replayed"]}
        unwritten = {c["abspath"]: "the replay did not write it (see the task that writes it)"
                     for c in compared if not c["replayed"]}
        self.compare(step, replayed, None, failure=unwritten)

    def flush(self):
        """Wait for the graphs submitted so far and compare their results (and later ones)."""
        for batch, submitted in list(self.batches.values()):
            if not len(batch):
                continue
            started = batch.started
            done = batch.gather()
            self.report.timings["compute"] += time.monotonic() - started   # from the first submit, as recorded
            self.report.timings["recorded_compute"] = None   # a graph's compute time is not recorded
            batch.release(keep=self.reused)
            for step, (event, replayed, failure) in zip(submitted, done):
                graph = (step.data.get("address"), step.data.get("seq"))
                self.values[graph], self.failures[graph] = replayed, failure
                self.recomputes[graph] = None if isinstance(failure, str) else _recompute(batch, event)
                self.compare(step, replayed, self.recomputes[graph], failure=failure)
            submitted.clear()
        later, self.later = self.later, []
        for step in later:
            graph = (step.data.get("address"), step.data.get("graph"))
            replayed = self.values.get(graph)
            self.compare(step, replayed or {}, self.recomputes.get(graph),
                         failure=self.failures.get(graph) if replayed is not None else "its graph was not replayed")

    def close(self):
        self.scattered = []
        for client, cluster in self.owned:
            with contextlib.suppress(Exception):
                client.close()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close()
        self.owned = []
