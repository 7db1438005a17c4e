"""What a replay reports: its progress events, a progress bar fed by them, and its outcome.

:class:`Progress` is the one stream of typed events a replay hands to its
``progress`` callable (:class:`ProgressBar` shows it in a terminal or
notebook; :mod:`.replay_job` writes it as JSON lines for the server);
:class:`ReplayReport` is what :func:`.replay.replay` returns.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

from ..progress import progress_bar
from ..terminal import one_line
from .environment import format_env_diff

__all__ = ["Progress", "ProgressBar", "ReplayReport"]


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
        self._open = contextlib.ExitStack()

    def __call__(self, event):
        if self.bar is None:   # the total is known from the first event
            self.bar = self._open.enter_context(progress_bar(event.total, f"replay {self.name}", "step"))
        self.bar.n = event.done
        self.bar.set_postfix_str(event.message, refresh=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._open.close()


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
        Seconds: ``replay`` (all of it), of which ``open`` (the recording, its checks and inputs),
        ``cluster`` (its start), ``environment`` (the comparison), ``compute`` (of dispatches and
        graphs; as recorded: ``recorded_compute``, None when the recording does not know it, as for
        plain Dask graphs) and ``close`` (the cluster's).
    partial : list of str
        Why the recording is partial (capture dropped something); empty when it is not.
    scaled : dict
        Recorded scheduler address -> the worker counts its cluster was scaled to (``cluster.scale``,
        ``adapt``), in turn, as text; the replay's cluster was scaled alike unless ``scaled_kept``
        names what it ran on instead (``-n``, ``--address``).
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
        self.partial = []   # why capture missed something, from the recording's meta: never verified
        self.cluster_notes = []   # how the replay's clusters run tasks otherwise than recorded (likely causes)
        self.outputs = []   # output files the recorded graphs wrote, as the replay wrote them (serve.compare_outputs)
        self.sandbox = None  # the folder it wrote them in
        self.scaled = {}    # recorded scheduler address -> the worker counts it was scaled to, in turn
        self.scaled_kept = None   # what the replay ran on instead (-n, --address); None: scaled alike
        self.timings = {"open": 0.0, "cluster": 0.0, "environment": 0.0, "replay": 0.0, "compute": 0.0,
                        "recorded_compute": 0.0, "close": 0.0}
        self.session = None

    @property
    def verified(self):
        """True only for a complete, not partial recording, replayed to its end, whose every result matched."""
        return (self.complete and not self.partial and self.results > 0 and not self.mismatches
                and self.steps == self.total_steps)

    def as_dict(self):
        return {"name": self.name, "steps": self.steps, "total_steps": self.total_steps, "complete": self.complete,
                "verified": self.verified, "results": self.results, "mismatches": self.mismatches,
                "env_diff": self.env_diff, "data": self.data, "timings": self.timings, "scaled": self.scaled}

    def summary(self):
        """A few lines for people."""
        head = (f"Replay of {self.name!r}: {self.steps}/{self.total_steps} steps, "
                f"{self.results} results compared -> "
                + ("VERIFIED: every result fingerprint matched" if self.verified else "NOT VERIFIED"))
        lines = [head]
        if not self.complete:
            matched = "every result matched" if not self.mismatches else "some results differ"
            lines.append(f"  reproduced up to step {self.steps} of an incomplete recording ({matched}): its kernel "
                         "stopped while recording, so what came after is unknown")
        if self.results == 0:
            lines.append("  the recording holds no results to compare")
        lines.extend(_capture_lines(self))
        for m in self.mismatches:
            lines.append(f"  differs: {m['label'] or m['node']} ({m['node']}): recorded {m['recorded_value']} "
                         f"[{m['recorded'][:12]}], replayed {m['replayed_value']} [{(m['replayed'] or '-')[:12]}]")
            lines.append(f"    likely cause: {m['cause']}")
        served = [d["path"] for d in self.data if "served from" in d["status"]]
        if served:
            lines.append(f"  {len(served)} input file(s) missing or changed here, served from the recording: "
                         + ", ".join(served))
        lines += [f"  input {d['path']}: {d['status']}" for d in self.data if d["status"].startswith("not checked")]
        if not self.env_diff.get("same", True):
            lines.append("  environment differs:")
            lines += [f"    {line}" for line in format_env_diff(self.env_diff).splitlines()]
        t = self.timings
        recorded = "" if t["recorded_compute"] is None else f"; recorded {t['recorded_compute']:.1f}s"
        lines.append(f"  time: cluster {t['cluster']:.1f}s, replay {t['replay']:.1f}s "
                     f"(compute {t['compute']:.1f}s{recorded})")
        return "\n".join(one_line(line) for line in lines)   # each a line, whatever a recorded string holds

    __str__ = summary

    def __repr__(self):
        return self.summary()


def _capture_lines(report):
    lines = []
    if report.partial:
        lines.append("  the recording is partial (not everything could be captured): " + "; ".join(report.partial[:3]))
    for counts in report.scaled.values():
        lines.append(f"  workers: the recorded cluster was scaled to {', then '.join(counts)}; "
                     + (f"this replay kept {report.scaled_kept}" if report.scaled_kept else "so was this replay's"))
    for note in report.cluster_notes:
        lines.append(f"  likely cause of float differences: {note}")
    if report.sandbox and report.outputs:
        lines.append(f"  {len(report.outputs)} output file(s) written to the sandbox {report.sandbox}, "
                     f"{sum(o['same'] for o in report.outputs)} identical to the recorded ones")
    return lines
