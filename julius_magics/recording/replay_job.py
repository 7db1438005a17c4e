"""Run one replay and write its progress as JSON lines: the server's replay process.

Usage::

    python -m julius_magics.recording.replay_job NAME [--store URL] [-n WORKERS] [--trust-key FP] [--legacy-hmac]

Standard output carries one JSON object a line, in this order:

``{"event": "progress", "done": int, "total": int, "message": str}``
    zero or more: :class:`~julius_magics.recording.report.Progress` events;
``{"event": "report", "report": ReplayReport.as_dict()}``
    once, when the replay ran (verified or not);
``{"event": "error", "message": str}``
    instead of the report, when the replay could not run (one line, no traceback).

Exit status: as :mod:`.verdict` (0 verified, 1 not verified, 2 error,
3 incomplete, 4 refused). Anything else a library
prints goes to standard error, never between the JSON lines.
:func:`read_event` turns a line back into a typed event.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass

from ..errors import JuliusError
from .replaying import replay
from .report import Progress
from .verdict import error_status, exit_status

__all__ = ["Report", "Error", "Progress", "read_event", "run", "main", "exit_now"]


@dataclass(frozen=True)
class Report:
    """The replay ran: ``report`` is ``ReplayReport.as_dict()``."""

    report: dict

    def as_dict(self):
        return {"event": "report", "report": self.report}


@dataclass(frozen=True)
class Error:
    """The replay could not run: one line saying why."""

    message: str

    def as_dict(self):
        return {"event": "error", "message": self.message}


def read_event(line):
    """The typed event of one JSON line (``None`` when the line is not an event).

    >>> read_event('{"event": "progress", "done": 1, "total": 3, "message": "cell (1/3)"}')
    Progress(done=1, total=3, message='cell (1/3)')
    """
    try:
        obj = json.loads(line)
        kind = obj.get("event")
        if kind == "progress":
            return Progress(int(obj["done"]), int(obj["total"]), str(obj.get("message", "")))
        if kind == "report":
            return Report(dict(obj["report"] or {}))
        if kind == "error":
            return Error(str(obj.get("message", "replay failed")))
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    return None


def run(name, write, **options):
    """Replay ``name`` (``options`` as :func:`replay` takes them), passing each event to ``write``; return the exit status."""
    try:
        report = replay(name, progress=write, **options)
    except JuliusError as e:
        write(Error(str(e)))
        return error_status(e)
    write(Report(report.as_dict()))
    return exit_status(report)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m julius_magics.recording.replay_job",
                                     description="Replay one recording; progress and report as JSON lines.")
    parser.add_argument("name", help="the recording to replay")
    parser.add_argument("--store", default=None, help="store URL (default: $JULIUS_STORE or ~/.julius/recordings)")
    parser.add_argument("-n", "--workers", type=int, default=None, help="workers of the replay cluster")
    parser.add_argument("--trust-key", default=None, metavar="FINGERPRINT",
                        help="accept this one key for this replay (besides yours and your trusted keys)")
    parser.add_argument("--legacy-hmac", action="store_true", help="read a julius-recording/1 (HMAC) recording of yours")
    args = parser.parse_args(argv)
    out = sys.stdout

    def write(event):
        out.write(json.dumps(event.as_dict(), default=str) + "\n")
        out.flush()

    with contextlib.redirect_stdout(sys.stderr):   # only events on stdout
        try:
            return run(args.name, write, store=args.store, n_workers=args.workers, trust_key=args.trust_key,
                       legacy_hmac=args.legacy_hmac)
        except (FileNotFoundError, ValueError) as e:
            write(Error(str(e)))
            return 2


def exit_now(status):
    """End the job's process with ``status`` at once: its output flushed, its exit handlers run.

    Its replay is over and its cluster closed: the interpreter's teardown (a second or so
    of finalising every module) and the worker fork server's own would only delay whoever
    reads the job's output to its end.
    """
    import atexit

    from ..cluster.session import stop_worker_server

    sys.stdout.flush()
    sys.stderr.flush()
    stop_worker_server()
    atexit._run_exitfuncs()   # multiprocessing's remove its temporary folder
    os._exit(status)


if __name__ == "__main__":
    exit_now(main())
