"""Replay a recording inside its rebuilt environment, in another process.

:func:`replay_isolated` builds (or reuses) the recording's environments
(:mod:`.venvs`) and runs the replay job (``julius_magics.recording.replay_job``) on
the rebuilt interpreter, so the LocalCluster's scheduler and workers run on it too;
the report's ``env_diff`` is then against the rebuilt environment and must be empty.

:func:`run_isolated_job` is the same as a JSON-lines job, and this module is its entry
point (the server runs it)::

    python -m julius_magics.recording.isolated NAME [--store URL] [-n N] [--trust-key FP] [--python-install]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from ..errors import JuliusError
from .environment import format_env_diff
from .pins import environments_for, recorded_environments
from .venvs import build_environment, check_platform, envs_root, recorded_wheels

__all__ = ["replay_isolated", "IsolatedReplay", "run_isolated_job", "run_job", "job_command", "job_environ",
           "workers_code", "main"]


def workers_code(worker_python, preload=False):
    """Lines of Python that make a job's workers run on ``worker_python`` (None: on the job's own).

    ``preload`` starts the fork server they come from first (``prepare_workers``), with the module
    of the replay's environment comparison imported (each worker would import it, the recording
    package with it, while the replay waits).
    """
    code = []
    if worker_python:
        code += ["from julius_magics.cluster.session import run_workers_on",
                 f"run_workers_on({worker_python!r})   # the workers' own environment"]
    if preload:
        code += ["from julius_magics.cluster.session import prepare_workers",
                 "prepare_workers(['julius_magics.recording.environment'])"]
    return code


def job_command(python, worker_python, argv, preload_workers=False):
    """The replay job (``julius_magics.recording.replay_job``) on ``python``, its workers on ``worker_python``.

    ``preload_workers``: start the workers' fork server first, while the job reads the recording
    (:func:`workers_code`).
    """
    code = [*workers_code(worker_python, preload_workers),
            "from julius_magics.recording.replay_job import exit_now, main",
            f"exit_now(main({argv!r}))"]
    return [python, "-c", "\n".join(code)]


def job_environ(pycache=None):
    """The variables a replay job runs with: this process's, without its virtualenv and import path.

    ``pycache``: the folder where the job's processes (the job, its fork server, its workers)
    keep the bytecode of what they import, for a rebuilt environment (its own folder). Compiling
    the thousand modules a replay imports costs seconds in each process (sklearn alone several);
    kept there, the next replay starts from bytecode, also where ``PYTHONDONTWRITEBYTECODE`` is
    set (containers), and no source tree gets a ``__pycache__``.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    if pycache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def run_job(command, progress=None, cwd=None, pycache=None):
    """Run a JSON-lines replay job; returns the ``report`` event's report (raises on an ``error`` event).

    ``pycache``: where its processes keep their bytecode (:func:`job_environ`).
    """
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=cwd, env=job_environ(pycache))
    report, error = None, None
    with proc.stdout:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue   # a library's own print
            if not isinstance(event, dict):
                continue
            if event.get("event") == "progress" and progress:
                progress(event.get("done", 0), event.get("total", 0), event.get("message", ""))
            elif event.get("event") == "report":
                report = event.get("report")
            elif event.get("event") == "error":
                error = event.get("message")
            if report is not None or error is not None:
                break   # the last event: the job's worker processes may hold its output open a while longer
    proc.wait()
    if error:
        raise JuliusError(error)
    if report is None:
        raise JuliusError(f"the replay in {command[0]} stopped (exit {proc.returncode}) without a report")
    return report


@dataclass
class IsolatedReplay:
    """An isolated replay: the report (as the replay job gave it) and the environments built for it.

    ``verified``, ``steps``, ``results``, ``mismatches``, ``env_diff`` and ``summary()`` read
    as a ``ReplayReport``'s. The replay ran in another process: its cluster is gone, and
    ``getdata`` in this kernel does not give replayed values.
    """

    name: str
    report: dict
    environments: list

    @property
    def verified(self):
        return bool(self.report.get("verified"))

    @property
    def steps(self):
        return self.report.get("steps", 0)

    @property
    def total_steps(self):
        return self.report.get("total_steps", 0)

    @property
    def results(self):
        return self.report.get("results", 0)

    @property
    def mismatches(self):
        return self.report.get("mismatches") or []

    @property
    def env_diff(self):
        return self.report.get("env_diff") or {}

    @property
    def env_same(self):
        return bool((self.report.get("env_diff") or {}).get("same", True))

    def as_dict(self):
        return {"name": self.name, "report": self.report, "environments": [e.as_dict() for e in self.environments],
                "verified": self.verified}

    def summary(self):
        built = "; ".join(f"{'reused' if e.reused else 'built'} {e.path} ({len(e.pins.packages)} pins, "
                          f"{e.seconds:.1f}s)" for e in self.environments)
        r = self.report
        head = (f"Isolated replay of {self.name!r}: {r.get('steps')}/{r.get('total_steps')} steps, "
                f"{r.get('results')} results compared -> "
                + ("VERIFIED: every result fingerprint matched" if self.verified else "NOT VERIFIED"))
        lines = [head, f"  environment: {built}",
                 "  environment as recorded" if self.env_same else
                 "  the rebuilt environment differs from the recorded one:\n"
                 + "\n".join("    " + line for line in format_env_diff(r.get("env_diff") or {}).splitlines())]
        for m in r.get("mismatches") or []:
            lines.append(f"  differs: {m.get('label') or m.get('node')} ({m.get('node')}): recorded "
                         f"{m.get('recorded_value')}, replayed {m.get('replayed_value')}")
        return "\n".join(lines)

    __str__ = summary


def replay_isolated(name, store=None, n_workers=None, trust_key=None, python_install=False, progress=None,
                    build_progress=True, root=None, cwd=None, log=None, preload_workers=True):
    """Replay recording ``name`` inside its rebuilt environment.

    Parameters
    ----------
    name : str
    store : Store, str or None
    n_workers : int, optional
        Workers of the replay's LocalCluster (default: as recorded).
    trust_key : str, optional
        As for ``replay``: one more key to accept for this recording.
    python_install : bool
        Let uv install a missing Python minor.
    progress : callable, optional
        ``progress(done, total, message)`` for the replay's steps.
    build_progress : bool
        Show uv's own progress while building.
    root : str, optional
        Cache of environments (:func:`envs_root`).
    cwd : str, optional
        Folder the replay runs in (relative input paths resolve against it).
    log : callable, optional
        ``log(text)`` before and after each environment is built.
    preload_workers : bool
        Start the replay job's worker fork server first, so that it imports the workers'
        modules while the job imports its own and reads the recording (:func:`job_command`;
        ``benchmarks/bench_rebuild.py --warm-rounds`` measures both ways).

    Returns
    -------
    IsolatedReplay
    """
    say = log or (lambda text: None)
    store, recording, kernel, workers = recorded_environments(name, store, trust_key)
    kernel_pins, worker_pins = environments_for(kernel, workers)
    for pins in filter(None, (kernel_pins, worker_pins)):
        check_platform(pins)   # every pin set, before any is built
    envs = []
    with tempfile.TemporaryDirectory(prefix="julius-wheels-") as wheel_dir:
        wheels = recorded_wheels(recording, wheel_dir)
        for role, pins in (("kernel and workers" if worker_pins is None else "kernel", kernel_pins),
                           ("workers", worker_pins)):
            if pins is None:
                continue
            say(f"environment of the {role}: {len(pins.packages)} pins, Python {pins.python} "
                f"({os.path.join(root or envs_root(), pins.key)})")
            envs.append(build_environment(pins, wheels, python_install, build_progress, root))
            say(f"environment of the {role}: {'reused' if envs[-1].reused else 'built'} in {envs[-1].seconds:.1f}s")
    argv = [name, "--store", store.url]
    if n_workers:
        argv += ["-n", str(n_workers)]
    if trust_key:
        argv += ["--trust-key", trust_key]
    worker_python = envs[1].python if len(envs) > 1 else None
    report = run_job(job_command(envs[0].python, worker_python, argv, preload_workers), progress, cwd,
                     pycache=envs[0].pycache)
    return IsolatedReplay(name, report, envs)



# --- the isolated replay as a process: the same JSON lines as a replay job -------------------------
def run_isolated_job(name, write, **options):
    """Rebuild and replay ``name`` isolated, passing JSON-able events to ``write``; return the exit status.

    The events are those of a replay job (``{"event": "progress" | "report" | "error", ...}``):
    building the environment shows as progress messages, and the report carries
    ``"isolated": [environment, ...]`` besides the replay's own fields. Exit status:
    0 verified, 1 not verified, 2 refused or error.
    """
    def progress(done, total, message):
        write({"event": "progress", "done": done, "total": total, "message": message})

    try:
        result = replay_isolated(name, progress=progress, build_progress=False,
                                 log=lambda text: progress(0, 0, text), **options)
    except JuliusError as e:
        write({"event": "error", "message": str(e)})
        return 2
    write({"event": "report", "report": {**result.report, "isolated": [e.as_dict() for e in result.environments]}})
    return 0 if result.verified else 1


def main(argv=None):
    """``python -m julius_magics.recording.isolated NAME [--store URL] [-n N] [--trust-key FP] [--python-install]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m julius_magics.recording.isolated",
                                     description="Replay a recording in its rebuilt environment; JSON lines out.")
    parser.add_argument("name")
    parser.add_argument("--store", default=None)
    parser.add_argument("-n", "--workers", type=int, default=None)
    parser.add_argument("--trust-key", default=None, metavar="FINGERPRINT")
    parser.add_argument("--python-install", action="store_true")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"-n must be at least 1, not {args.workers}")
    out = sys.stdout

    def write(event):
        out.write(json.dumps(event, default=str) + "\n")
        out.flush()

    import contextlib

    with contextlib.redirect_stdout(sys.stderr):   # only events on stdout
        return run_isolated_job(args.name, write, store=args.store, n_workers=args.workers, trust_key=args.trust_key,
                                python_install=args.python_install)


if __name__ == "__main__":
    sys.exit(main())
