"""Find which package change alters a result that differs in today's replay.

:func:`bisect_environment` rebuilds environments that take half of the changed
packages from the recording and half from today (:mod:`.venvs`), replaying in each
only up to the differing results (:func:`replay_until`, in a subprocess of the
rebuilt interpreter), to name the package whose change alters each one, in at most
⌈log2(changed)⌉+1 rebuilds.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field

from ..errors import JuliusError
from .environment import capture_environment
from .isolated import job_command, replay_isolated, run_job, workers_code
from .pins import RebuildError, environments_for, recorded_environments
from .venvs import build_environment

__all__ = ["bisect_environment", "BisectReport", "replay_until"]


def _result_step(recording, node):
    """Index of the step holding the recorded result of ``node`` (a node id or a Dask key)."""
    from . import steps as step_kinds

    for i, step in enumerate(recording.steps):
        if node in step_kinds.results(step):
            return i
    raise RebuildError(f"recording {recording.name!r} holds no result of node {node!r}")


def replay_until(name, nodes, store=None, trust_key=None, n_workers=None):
    """Replay recording ``name`` only up to the last step that computes one of ``nodes``; which still match?

    The steps after it are not replayed. Runs in this process (inside a rebuilt
    environment, as a bisection's probe).

    Returns
    -------
    dict
        ``differs`` (``{node: bool}``), ``steps`` (replayed), ``total_steps``.
    """
    from ..cluster.session import Session
    from ..rules.registry import RuleBook
    from . import steps as step_kinds
    from .replaying import _Context, prepare_inputs
    from .report import ReplayReport
    from .store import Store

    nodes = [nodes] if isinstance(nodes, str) else list(nodes)
    store = Store.coerce(store)
    recording = store.open(name, trust_key=trust_key)
    upto = max(_result_step(recording, node) for node in nodes)
    report = ReplayReport(name)
    mapping = prepare_inputs(recording, report)
    spec = next((s.data for s in recording.steps if s.kind == "cluster"), {})
    session = Session(rulebook=RuleBook(), seed=spec.get("seed", 0), progress=False)
    session.start(n_workers=n_workers or spec.get("n_workers") or 2,
                  threads_per_worker=spec.get("threads_per_worker") or 1)
    try:
        if mapping:
            session.set_input_map(mapping)
        context = _Context(session, recording, report)   # the replay's own step functions, up to ``upto``
        for step in recording.steps[:upto + 1]:
            kind = step_kinds.kind_of(step, f"recording {name!r}")
            if kind.replay is not None:
                kind.replay(context, step)
    finally:
        session.stop()
    differing = {m["node"] for m in report.mismatches}
    return {"differs": {node: node in differing for node in nodes}, "steps": upto + 1,
            "total_steps": len(recording.steps)}


@dataclass
class BisectReport:
    """What a bisection of the environment found.

    Attributes
    ----------
    message : str
        One line per differing result: "pandas 2.2.3 → 3.1.1 changes `ml.select` (node …)",
        or why nothing could be attributed.
    culprits : list of dict
        Per differing result: ``node``, ``label``, ``name`` (the package), ``recorded`` and
        ``today`` (versions, None when absent).
    node, label, culprit
        The first differing result and its culprit (``name``, ``recorded``, ``today``).
    changed : list of str
        Packages that differ between the recording and today.
    rebuilds : list of dict
        Each environment probed: ``take`` (packages from today), ``differs`` (of the
        first result), ``reused``, ``seconds`` (build), ``replay_seconds``, ``error``.
    """

    name: str
    message: str
    node: str | None = None
    label: str | None = None
    culprit: dict | None = None
    changed: list = field(default_factory=list)
    rebuilds: list = field(default_factory=list)
    culprits: list = field(default_factory=list)

    def as_dict(self):
        return {"name": self.name, "message": self.message, "node": self.node, "label": self.label,
                "culprit": self.culprit, "culprits": self.culprits, "changed": self.changed,
                "rebuilds": self.rebuilds}

    def summary(self):
        lines = [self.message]
        for r in self.rebuilds:
            took = ", ".join(r["take"]) or "nothing"
            outcome = "replay failed" if r.get("error") else "differs" if r["differs"] else "matches"
            lines.append(f"  rebuild {r['n']}: recorded pins, from today: {took} -> "
                         f"{outcome} ({'reused' if r['reused'] else 'built'} "
                         f"{r['seconds']:.1f}s, replay {r['replay_seconds']:.1f}s)")
        return "\n".join(lines)

    __str__ = summary


def _versions(env, name):
    return (env.get("packages") or {}).get(name)


def bisect_environment(name, store=None, trust_key=None, n_workers=None, python_install=False, root=None,
                       today_report=None, isolated=None, log=None, max_results=10):
    """Find, per result that differs in today's replay, which package change alters it.

    Today's replay (in this process's environment) must differ and the isolated
    replay (in the recorded environment) must verify; then environments taking half
    of the changed packages from the recording and half from today are rebuilt,
    each replayed only up to the differing results, at most ⌈log2(changed)⌉ times
    after the isolated one for the first result. Each probe checks every differing
    result at once, so results that follow the same path cost nothing more; the
    others reuse the environments already built (uv's cache, and this cache).

    Parameters
    ----------
    name, store, trust_key, n_workers, python_install, root
        As for :func:`replay_isolated`.
    today_report : dict, optional
        Today's replay report, if already run (else it is run, in a subprocess of this Python).
    isolated : IsolatedReplay, optional
        The isolated replay, if already run.
    log : callable, optional
        ``log(text)`` for each step of the bisection.
    max_results : int
        Attribute at most this many differing results (the first ones).

    Returns
    -------
    BisectReport
    """
    say = log or (lambda text: None)
    store, recording, kernel, workers = recorded_environments(name, store, trust_key)
    url = store.url
    options = (["-n", str(n_workers)] if n_workers else []) + (["--trust-key", trust_key] if trust_key else [])
    if today_report is None:
        say("replaying in today's environment")
        today_report = run_job(job_command(sys.executable, None, [name, "--store", url, *options]))
    if today_report.get("verified"):
        return BisectReport(name, f"today's replay of {name!r} verifies: there is no difference to attribute")
    mismatches = list(today_report.get("mismatches") or [])
    if not mismatches:
        return BisectReport(name, f"today's replay of {name!r} does not verify, but no result differs: "
                                  "nothing for an environment bisection to attribute")
    labels = {}
    for m in mismatches:
        labels.setdefault(m["node"], m.get("label") or m["node"])
    nodes = list(labels)[:max_results]
    node, label = nodes[0], labels[nodes[0]]
    if isolated is None:
        say("replaying in the recorded environment (--isolated)")
        isolated = replay_isolated(name, store, n_workers, trust_key, python_install, root=root, build_progress=False)
    rebuilds = [{"n": 1, "take": [], "differs": not isolated.verified, "error": None,
                 "reused": isolated.environments[0].reused, "seconds": sum(e.seconds for e in isolated.environments),
                 "replay_seconds": (isolated.report.get("timings") or {}).get("replay") or 0.0}]
    if not isolated.verified:
        return BisectReport(name, f"the isolated replay of {name!r} does not verify either: the difference is not "
                                  "(only) the environment", node, label, rebuilds=rebuilds)
    today = capture_environment()
    recorded_pkgs, today_pkgs = kernel.get("packages") or {}, today.get("packages") or {}
    changed = sorted(n for n in recorded_pkgs.keys() | today_pkgs.keys() if recorded_pkgs.get(n) != today_pkgs.get(n))
    if not changed:
        return BisectReport(name, f"no package differs between recording {name!r} and today, yet {label} differs: "
                                  "the cause is outside the packages (Python, OS, CPU, or code and data)",
                            node, label, rebuilds=rebuilds)
    say(f"{len(changed)} changed packages: {', '.join(changed)}; {len(nodes)} differing result(s), "
        f"the first {label} ({node})")
    probes = {}   # tuple(take) -> {node: differs}

    def probe(take, wanted):
        key = tuple(take)
        if key in probes and all(n in probes[key] for n in wanted):
            return probes[key]
        kernel_pins, worker_pins = environments_for(kernel, workers, take, today)
        envs = [build_environment(kernel_pins, None, python_install, False, root)]
        if worker_pins is not None:
            envs.append(build_environment(worker_pins, None, python_install, False, root))
        t0 = time.monotonic()
        code = "\n".join(["import sys", *workers_code(envs[1].python if len(envs) > 1 else None),
                          "from julius_magics.recording.bisection import _probe_main",
                          f"sys.exit(_probe_main({[url, name, list(wanted), n_workers, trust_key]!r}))"])
        try:
            outcome, error = run_job([envs[0].python, "-c", code], pycache=envs[0].pycache)["differs"], None
        except JuliusError as e:
            outcome, error = None, str(e)
        rebuilds.append({"n": len(rebuilds) + 1, "take": list(take), "differs": (outcome or {}).get(wanted[0]),
                         "error": error, "reused": envs[0].reused, "seconds": sum(e.seconds for e in envs),
                         "replay_seconds": time.monotonic() - t0})
        if error is not None:   # a mix that cannot run says nothing about which package changes a node
            raise RebuildError(f"the replay failed with {', '.join(take)} from today: {error}")
        say(f"rebuild {len(rebuilds)}: from today {', '.join(take)} -> "
            + ", ".join(f"{labels[n]} {'differs' if outcome[n] else 'matches'}" for n in wanted))
        probes[key] = {**probes.get(key, {}), **outcome}
        return probes[key]

    culprits = []
    try:
        for target in nodes:
            fixed, candidates = [], list(changed)
            while len(candidates) > 1:
                half = candidates[:math.ceil(len(candidates) / 2)]
                pending = [n for n in nodes if n not in {c["node"] for c in culprits}]
                if probe(fixed + half, [target] + [n for n in pending if n != target])[target]:
                    candidates = half
                else:
                    fixed += half
                    candidates = candidates[len(half):]
            package = candidates[0]
            culprits.append({"node": target, "label": labels[target], "name": package,
                             "recorded": _versions(kernel, package), "today": _versions(today, package)})
    except RebuildError as e:
        lines = [_culprit_line(c) for c in culprits]
        return BisectReport(name, "\n".join(lines + [f"cannot attribute the remaining differing results: {e}"]),
                            node, label, culprits[0] if culprits else None, changed, rebuilds, culprits)
    first = culprits[0]
    return BisectReport(name, "\n".join(_culprit_line(c) for c in culprits), node, label,
                        {k: first[k] for k in ("name", "recorded", "today")}, changed, rebuilds, culprits)


def _culprit_line(c):
    return (f"{c['name']} {c['recorded'] or 'absent'} → {c['today'] or 'absent'} changes `{c['label']}` "
            f"(node {c['node']})")


def _probe_main(args):
    """A bisection's probe, run in a rebuilt environment: one JSON ``report`` line on stdout."""
    import contextlib

    url, name, nodes, n_workers, trust_key = args
    try:
        with contextlib.redirect_stdout(sys.stderr):   # only the event on stdout
            result = replay_until(name, nodes, url, trust_key, n_workers)
    except JuliusError as e:
        print(json.dumps({"event": "error", "message": str(e)}), flush=True)
        return 1
    except Exception as e:   # the mixed environment itself broke (an import, an API): reported, not raised
        print(json.dumps({"event": "error", "message": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(json.dumps({"event": "report", "report": result}, default=str), flush=True)
    return 0
