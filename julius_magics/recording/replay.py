"""Replay a recording into a fresh cluster and prove it reproduced.

``replay`` opens the recording (every byte verified, signature trusted, before
anything is unpickled), checks input data and environment, starts a cluster,
replays the journal in order (each step as its kind in :mod:`.steps` says) and
compares the fingerprint of every recorded result with the replayed one.

Progress is one stream of typed events, :class:`Progress`, handed to the
``progress`` callable; every front-end consumes that stream (the terminal and
notebook bar :class:`ProgressBar`, the widget's bar, and
:mod:`.replay_job`, which writes the events as JSON lines for the server).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass

import cloudpickle

from ..cluster.session import Session
from ..errors import DataChangedError, EnvironmentMismatchError
from ..rules.registry import RuleBook
from . import steps as step_kinds
from .environment import capture_environment, env_diff, format_env_diff
from .journal import file_digest
from .steps import recorded_environment
from .store import Store

__all__ = ["replay", "ReplayReport", "Progress", "ProgressBar", "prepare_inputs"]


@dataclass(frozen=True)
class Progress:
    """One event of a replay's progress: ``done`` of ``total`` steps, and what is happening.

    ``done`` is 0 while data and environment are checked and the cluster starts.
    """

    done: int
    total: int
    message: str

    def as_dict(self):
        """``{"event": "progress", "done", "total", "message"}`` (the JSON line of :mod:`.replay_job`)."""
        return {"event": "progress", **asdict(self)}


class ProgressBar:
    """A tqdm bar (a widget in notebooks, text in terminals) fed by :class:`Progress` events.

    Examples
    --------
    >>> with ProgressBar("demo") as bar:   # doctest: +SKIP
    ...     report = replay("demo", progress=bar)
    """

    def __init__(self, name):
        self.name = name
        self.bar = None

    def __call__(self, event):
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=event.total, desc=f"replay {self.name}", unit="step")
        self.bar.n = event.done
        self.bar.set_postfix_str(event.message, refresh=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


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
    session : Session or None
        The replay's session: stopped, unless ``replay(..., keep=True)`` (then the caller's).
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
        self.session = None

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
        self.report.timings["recorded_compute"] += recorded_seconds

    def compare(self, step, replayed, recompute, failure=None):
        """Compare ``step``'s recorded results with ``replayed`` (``{id: (fp, description)}``).

        ``recompute(id)`` gives the fingerprint computed once more, to tell a
        non-deterministic result from a changed one; ``failure`` explains a
        step that could not be replayed at all.
        """
        for nid, rec in step_kinds.results(step).items():
            self.report.results += 1
            got = replayed.get(nid)
            if got is not None and got[0] == rec["fp"]:
                continue
            nondeterministic = (failure is None and got is not None and recompute is not None
                                and recompute(nid) != got[0])
            self.report.mismatches.append({
                "node": nid, "label": rec["label"], "recorded": rec["fp"], "replayed": got and got[0],
                "recorded_value": rec["describe"] if rec["describe"] is not None else "?",
                "replayed_value": got[1] if got else "not computed",
                "cause": failure or _cause(self.report.env_diff, nondeterministic),
            })


def replay(name, store=None, n_workers=None, address=None, strict_env=False, trust=False, progress=None,
           keep=False):
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
        Called with a :class:`Progress` event before the first step and after each.
    keep : bool
        Keep the replay's session (and cluster) running and hand it over in
        ``report.session``; the caller stops it. By default it is stopped.

    Returns
    -------
    ReplayReport
        ``report.session`` is the replay's session. ``%replay`` makes it the
        kernel's, so that ``getdata`` gives replayed values.
    """
    store = Store.coerce(store)
    started = time.monotonic()
    recording = store.open(name, trust=trust)
    report = ReplayReport(name)
    steps = recording.steps
    report.total_steps = len(steps)
    say = progress or (lambda event: None)
    say(Progress(0, len(steps), "checking data and environment"))
    for step in steps:
        step_kinds.kind_of(step, f"recording {name!r}")   # refuse unknown kinds before a cluster starts

    mapping = prepare_inputs(recording, report)
    recorded_kernel, recorded_workers = recorded_environment(recording)
    spec = next((s.data for s in steps if s.kind == "cluster"), {})
    # its own rule book: the replay must stand on the recording alone, not on the kernel's rules;
    # no compute bars: the replay's own progress covers its computes
    session = Session(rulebook=RuleBook(), seed=spec.get("seed", 0), progress=False)
    report.session = session
    t0 = time.monotonic()
    if address:
        session.connect(address)
    else:
        session.start(n_workers=n_workers or spec.get("n_workers") or 2,
                      threads_per_worker=spec.get("threads_per_worker") or 1)
    report.timings["cluster"] = time.monotonic() - t0
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(session.stop)
        if recorded_kernel is not None:   # compared with a client active, as when it was recorded
            _compare_environments(report, session, recorded_kernel, recorded_workers)
            if strict_env and not report.env_diff.get("same", True):
                raise EnvironmentMismatchError(
                    f"--strict-env: the environment differs from recording {name!r}:\n"
                    f"{format_env_diff(report.env_diff)}")
        if mapping:
            session.set_input_map(mapping)
        context = _Context(session, recording, report)
        for i, step in enumerate(steps, 1):
            kind = step_kinds.kind_of(step)
            if kind.replay is not None:
                kind.replay(context, step)
            report.steps = i
            say(Progress(i, len(steps), f"{step.kind} ({i}/{len(steps)})"))
        if keep:
            cleanup.pop_all()   # the caller's now
    report.timings["replay"] = time.monotonic() - started
    report.complete = recording.info.status != "incomplete"
    if report.verified and report.complete:
        recording.mark_verified({"verified": True, "results": report.results, "steps": report.steps})
    return report


def _compare_environments(report, session, recorded_kernel, recorded_workers):
    report.env_diff = env_diff(recorded_kernel, capture_environment())
    workers_now = list(session.run_on_workers(capture_environment).values())
    if report.env_diff.get("same", True) and recorded_workers and workers_now:
        worker_diff = env_diff(next(iter(recorded_workers.values())), workers_now[0])
        if not worker_diff.get("same", True):
            report.env_diff = worker_diff
