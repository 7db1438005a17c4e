"""What runs inside worker processes: the remote namespace, rule sync, key jobs.

Every action that changes workers is an entry of the session's *history*
(``{"seq": n, "kind": "remote_eval" | "rules", ...}``), kept on the scheduler.
A worker applies each entry once, in order, whether it gets it live (``client.run``)
or on joining (``JuliusWorkerPlugin.setup`` reads the whole history).
"""

from __future__ import annotations

import contextlib
import io
import threading
import traceback

import cloudpickle
from distributed import WorkerPlugin, get_worker

from ..errors import NodeError
from ..rules.atoms import INPUT_HOOKS, INPUTS_READ
from ..rules.evaluate import CompiledJob, run_job
from ..rules.node import REMOTE_NAMESPACE, REMOTE_STATE
from ..rules.registry import RULES, top_level_names

HISTORY_KEY = ("julius", "history")
_applied = {}   # session id -> last applied seq
_lock = threading.Lock()


def exec_remote(source, pushed, namespace, filename="<remote_eval>"):
    """Run a remote_eval cell in ``namespace`` after binding the pushed values; note its names for rules."""
    namespace.setdefault("__builtins__", __builtins__)
    namespace.setdefault("__name__", "julius_remote")
    namespace.update(pushed)
    REMOTE_STATE["generation"] += 1
    exec(compile(source, filename, "exec"), namespace)
    bound, _ = top_level_names(source)
    RULES.note_remote_names(bound | set(pushed))


def apply_entry(entry):
    """Apply one history entry in this process."""
    if entry["kind"] == "remote_eval":
        pushed = cloudpickle.loads(entry["pushed"]) if entry.get("pushed") else {}
        exec_remote(entry["source"], pushed, REMOTE_NAMESPACE)
    elif entry["kind"] == "rules":
        RULES.define(entry["ns"], entry["source"], filename=f"<addrules {entry['ns']}>")
    elif entry["kind"] == "input_map":
        mapping = dict(entry["map"])
        INPUT_HOOKS["resolve"] = lambda path: mapping.get(path, path)
    else:
        raise ValueError(f"unknown history entry kind {entry['kind']!r}")


def apply_history(entries):
    """Apply the entries this process has not applied yet; return what they printed or raised.

    A failing entry does not stop the ones after it (the kernel already reported it when
    it first ran).  Returns ``{"output": str, "error": traceback text or None}``.
    """
    out = io.StringIO()
    errors = []
    with _lock, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        for entry in sorted(entries, key=lambda e: (e["session"], e["seq"])):
            if entry["seq"] <= _applied.get(entry["session"], 0):
                continue
            _applied[entry["session"]] = entry["seq"]
            try:
                apply_entry(entry)
            except BaseException:
                errors.append(_remote_traceback(entry))
    return {"output": out.getvalue(), "error": "\n".join(errors) or None}


def _remote_traceback(entry):
    """The traceback of the failing cell, without julius's own frames."""
    lines = traceback.format_exc().splitlines(keepends=True)
    cell = next((i for i, line in enumerate(lines) if '"<remote_eval>"' in line or '"<addrules' in line), None)
    if cell is not None:
        lines = lines[:1] + lines[cell:]
    return "".join(lines)


class JuliusWorkerPlugin(WorkerPlugin):
    """Brings a worker that joins later up to date: every remote_eval and rule, in order."""

    name = "julius-sync"

    async def setup(self, worker):
        history = await worker.scheduler.get_metadata(keys=list(HISTORY_KEY), default={})
        result = apply_history(list(history.values()))
        if result["error"]:
            worker.log_event("julius", {"action": "sync-failed", "error": result["error"]})


def run_key_job(job_bytes, seed, *dep_values):
    """The Dask task of a key job: run its compiled sub-graph (``CompiledJob.to_bytes``), the other key jobs' values given."""
    try:
        return run_job(CompiledJob.from_bytes(job_bytes), dep_values, seed)
    except NodeError as e:
        e.worker = get_worker().address
        raise


def drain_inputs():
    """The input files nodes in this process read since the last call."""
    paths = sorted(INPUTS_READ)
    INPUTS_READ.clear()
    return paths


def worker_versions():
    """What this worker knows: applied history, namespaces and rules (for status and tests)."""
    return {"applied": dict(_applied), "rules": RULES.names(),
            "remote_names": sorted(k for k in REMOTE_NAMESPACE if not k.startswith("__"))}
