"""Replay a recording into a fresh cluster and prove it reproduced.

``replay`` opens the recording (every byte verified, signature trusted, before
anything is unpickled), checks input data and environment, starts a cluster,
replays the journal in order and compares the fingerprint of every recorded
result with the replayed one.
"""

from __future__ import annotations

import os
import time

import cloudpickle

from ..cluster import capture
from ..cluster.session import Session, get_session, set_session
from ..rules.registry import RuleBook
from ..errors import DataChangedError, EnvironmentMismatchError, JuliusError, RemoteError
from .environment import capture_environment, cluster_environments, env_diff, format_env_diff
from .inspect import recorded_environment
from .recorder import file_digest, fingerprint_futures
from .store import Store

__all__ = ["replay", "ReplayReport", "prepare_inputs"]


class ReplayReport:
    """What a replay did and whether it reproduced.

    Attributes
    ----------
    name : str
    steps : int
        Steps replayed.
    verified : bool
        True when every recorded result fingerprint matched.
    results : int
        Results compared.
    mismatches : list of dict
        ``node`` (node id or Dask key), ``label``, ``recorded``, ``replayed`` (fingerprints),
        ``recorded_value``, ``replayed_value`` (short descriptions), ``cause``.
    env_diff : dict
        Differences between the recorded and the replay environment (``same`` when none).
    data : list of dict
        Input files: ``path``, ``status`` ("unchanged", "served from recording").
    timings : dict
        Seconds: ``cluster``, ``replay``, ``compute`` (of dispatches), ``recorded_compute``.
    """

    def __init__(self, name):
        self.name = name
        self.steps = 0
        self.total_steps = 0
        self.results = 0
        self.mismatches = []
        self.env_diff = {}
        self.data = []
        self.complete = True
        self.timings = {"cluster": 0.0, "replay": 0.0, "compute": 0.0, "recorded_compute": 0.0}

    @property
    def verified(self):
        return self.results > 0 and not self.mismatches and self.steps == self.total_steps

    def as_dict(self):
        return {"name": self.name, "steps": self.steps, "total_steps": self.total_steps, "complete": self.complete,
                "verified": self.verified, "results": self.results, "mismatches": self.mismatches,
                "env_diff": self.env_diff, "data": self.data, "timings": self.timings}

    def summary(self):
        """A few lines for people."""
        head = (f"Replay of {self.name!r}: {self.steps}/{self.total_steps} steps, "
                f"{self.results} results compared -> "
                + ("VERIFIED: every result fingerprint matched" if self.verified else "NOT VERIFIED"))
        lines = [head]
        if not self.complete:
            lines.append("  the recording is incomplete (its kernel stopped while recording): "
                         "verified up to its last step only")
        if self.results == 0:
            lines.append("  the recording holds no results to compare")
        for m in self.mismatches:
            lines.append(f"  differs: {m['label'] or m['node']} ({m['node']}): recorded {m['recorded_value']} "
                         f"[{m['recorded'][:12]}], replayed {m['replayed_value']} [{(m['replayed'] or '-')[:12]}]"
                         f"\n    likely cause: {m['cause']}")
        served = [d["path"] for d in self.data if d["status"] != "unchanged"]
        if served:
            lines.append(f"  {len(served)} input file(s) missing or changed here, served from the recording: "
                         + ", ".join(served))
        if not self.env_diff.get("same", True):
            lines.append("  environment differs:\n" + _indent(format_env_diff(self.env_diff)))
        t = self.timings
        lines.append(f"  time: cluster {t['cluster']:.1f}s, replay {t['replay']:.1f}s "
                     f"(compute {t['compute']:.1f}s; recorded {t['recorded_compute']:.1f}s)")
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self):
        return self.summary()


def _indent(text, prefix="    "):
    return "\n".join(prefix + line for line in text.splitlines())


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
    if nondeterministic:
        return "non-deterministic operation: computing the node twice in the replay gave different values"
    if not env.get("same", True):
        changed = env.get("packages", {}).get("changed", {})
        names = ", ".join(sorted(changed)[:5]) if changed else "python/os"
        return f"environment differs ({names})"
    return ("code or data outside the recording changed (a module imported or a file read directly, "
            "not through the rules)")


def replay(name, store=None, n_workers=None, address=None, strict_env=False, trust=False, progress=None):
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
    trust : bool
        Accept a recording signed with another key (content hashes are always checked).
    progress : callable, optional
        ``progress(done, total, message)`` after each step.

    Returns
    -------
    ReplayReport
        Afterwards the kernel's session is the replay cluster (``getdata`` gives replayed values).
    """
    store = store if isinstance(store, Store) else Store(store)
    started = time.monotonic()
    recording = store.open(name, trust=trust)
    report = ReplayReport(name)
    steps = recording.steps
    report.total_steps = len(steps)
    say = progress or (lambda done, total, message: None)
    say(0, len(steps), "checking data and environment")

    mapping = prepare_inputs(recording, report)
    recorded_kernel, recorded_workers = recorded_environment(recording)
    spec = next((s.data for s in steps if s.kind == "cluster"), {})
    # its own rule book: the replay must stand on the recording alone, not on the kernel's rules
    session = Session(rulebook=RuleBook(), seed=spec.get("seed", 0))
    session.progress = False   # the replay's own progress covers its computes
    t0 = time.monotonic()
    if address:
        session.connect(address)
    else:
        session.start(n_workers=n_workers or spec.get("n_workers") or 2,
                      threads_per_worker=spec.get("threads_per_worker") or 1)
    report.timings["cluster"] = time.monotonic() - t0
    if recorded_kernel is not None:   # compared with a client active, as when it was recorded
        report.env_diff = env_diff(recorded_kernel, capture_environment())
        workers_now = list(cluster_environments(session.client).values())
        if report.env_diff.get("same", True) and recorded_workers and workers_now:
            worker_diff = env_diff(next(iter(recorded_workers.values())), workers_now[0])
            if not worker_diff.get("same", True):
                report.env_diff = worker_diff
        if strict_env and not report.env_diff.get("same", True):
            session.stop()
            raise EnvironmentMismatchError(
                f"--strict-env: the environment differs from recording {name!r}:\n{format_env_diff(report.env_diff)}")
    try:
        if mapping:
            session.set_input_map(mapping)
        for i, step in enumerate(steps, 1):
            _replay_step(session, recording, step, report)
            report.steps = i
            say(i, len(steps), f"{step.kind} ({i}/{len(steps)})")
    except BaseException:
        session.stop()
        raise
    previous = get_session()
    session.progress = True
    set_session(session)   # the kernel's session is now the replay's: getdata gives replayed values
    if previous is not session:
        previous.stop()
    report.timings["replay"] = time.monotonic() - started
    report.complete = recording.info.status != "incomplete"
    if report.verified and report.complete:
        store.mark_verified(name, {"verified": True, "results": report.results, "steps": report.steps})
    return report


def _replay_step(session, recording, step, report):
    kind, data = step.kind, step.data
    if kind in ("remote_eval", "rules"):
        try:
            if kind == "remote_eval":
                push = cloudpickle.loads(recording.part(step, "pushed")) if "pushed" in step.part_names else {}
                session.remote_eval(data["source"], push=push)
            else:
                session.add_rules(data["ns"], data["source"])
        except RemoteError:
            if not data.get("failed"):   # it failed when recorded too: replayed as it happened
                raise
    elif kind == "dispatch":
        targets = cloudpickle.loads(recording.part(step, "targets"))
        jobs = cloudpickle.loads(recording.part(step, "jobs"))
        results = data["results"]
        wanted = {r.id: r for r in targets + jobs}
        t0 = time.monotonic()
        # the recorded key jobs become targets too, so each recorded result has a value to compare
        session.compute(list(wanted.values()), key_rules=data["key_rules"])
        report.timings["compute"] += time.monotonic() - t0
        report.timings["recorded_compute"] += data.get("seconds", 0.0)
        replayed = fingerprint_futures(session.client, {nid: session.futures[nid] for nid in results})
        for nid, rec in results.items():
            report.results += 1
            got = replayed[nid]
            if got["fp"] != rec["fp"]:
                again = _recompute(session, wanted[nid])
                report.mismatches.append({
                    "node": nid, "label": rec.get("label"), "recorded": rec["fp"], "replayed": got["fp"],
                    "recorded_value": rec.get("describe"), "replayed_value": got["describe"],
                    "cause": _cause(report.env_diff, again != got["fp"]),
                })
    elif kind == "graph":
        event = dict(data, specs=recording.part(step, "specs"))
        failure = None
        try:
            replayed = capture.replay_graph(session.client, event, with_descriptions=True)
        except Exception as e:   # reported per result, like any other difference
            replayed, failure = {}, f"the graph failed on replay: {type(e).__name__}: {e}"
        again = None   # the graph computed once more, only if some result differs
        for key, fp in data["fingerprints"].items():
            report.results += 1
            got = replayed.get(key)
            if got is None or got[0] != fp:
                if failure is None and got is not None and again is None:
                    again = capture.replay_graph(session.client, event)
                nondeterministic = again is not None and again.get(key) != got[0]
                report.mismatches.append({
                    "node": key, "label": f"dask key {key}", "recorded": fp, "replayed": got and got[0],
                    "recorded_value": data.get("descriptions", {}).get(key, "?"),
                    "replayed_value": got[1] if got else "not computed",
                    "cause": failure or _cause(report.env_diff, nondeterministic),
                })
    elif kind == "run":
        capture.replay_run(session.client, dict(data, function=recording.part(step, "function")))
    elif kind == "worker_plugin":   # e.g. UploadFile: later graphs may need what it installed
        from distributed.protocol.pickle import loads

        session.client.register_plugin(loads(recording.part(step, "plugin")), name=data["name"])
    elif kind in ("cluster", "environment", "cell", "data"):
        pass   # set up before the loop, or kept for people to read
    else:
        raise JuliusError(f"recording {recording.name!r}: step {step.seq} has unknown kind {kind!r}")


def _recompute(session, ref):
    """The fingerprint of ``ref`` computed once more (to spot non-determinism)."""
    session.futures.pop(ref.id, None)
    session._generation += 1   # a fresh Dask key: never the cached value
    session.compute(ref)
    return fingerprint_futures(session.client, {ref.id: session.futures[ref.id]})[ref.id]["fp"]
