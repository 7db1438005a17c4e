"""The kinds of journal steps: one table, used by the recorder, the replay and the summaries.

Each :class:`StepKind` says what a step of that kind holds (its JSON fields and
binary parts), how ``julius show`` summarises it in one line, how a replay
replays it, and which recorded results (fingerprints) it holds. Adding a kind
is adding one entry to :data:`KINDS`; ``docs/format.md``'s table of step kinds
is checked against this one by ``tests/recording/test_steps.py``
(:func:`format_table` prints it).

A replay function is called as ``replay(context, step)``; the context (made by
:mod:`.replaying`) gives ``session`` (a fresh :class:`~julius_magics.cluster.session.Session`),
``unpickle(step, part)``, ``part(step, part)``, ``compare(step, replayed, recompute)``
and ``compute(refs, key_rules)`` (timed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import JuliusError, RemoteError
from .schema import environment

__all__ = ["StepKind", "KINDS", "kind_of", "summary", "results", "input_files", "recorded_environment", "format_table"]


@dataclass(frozen=True)
class StepKind:
    """One kind of journal step.

    Attributes
    ----------
    name : str
        The ``kind`` written in the journal entry.
    fields : dict
        JSON field -> what it holds.
    parts : dict
        Binary part -> what it holds (``{}``: none).
    summarise : callable
        ``summarise(data) -> str``: one line for ``julius show`` and the sidebar.
    replay : callable or None
        ``replay(context, step)``; ``None``: nothing to replay (set up before the
        journal is replayed, or kept for people to read).
    results : callable or None
        ``results(data) -> {node id or key: {"label", "fp", "describe"}}``: the
        recorded results a replay must reproduce.
    inputs : bool
        Its ``files`` are input files read while recording (``julius show``'s and
        ``julius diff``'s data).
    """

    name: str
    fields: dict
    parts: dict = field(default_factory=dict)
    summarise: Callable = None
    replay: Callable | None = None
    results: Callable | None = None
    inputs: bool = False


# --- summaries ---------------------------------------------------------------------
def _first_line(d):
    first = next((line for line in d["source"].splitlines() if line.strip()), "")
    more = " ..." if d["source"].strip().count("\n") else ""
    extra = f" (push {', '.join(d['push'])})" if d.get("push") else ""
    return f"{first[:70]}{more}{extra}"


def _targets(d):
    return ", ".join(t["label"] or t["key"] for t in d["targets"])


def _graphs(d):   # "3 dask graphs" when the step holds several, sent in a row
    return f"{d['graphs']} dask graphs" if d.get("graphs", 1) > 1 else "dask graph"


def _raised(d):   # ", 2 raised" when some of its keys' results are their errors
    raised = sum(text.startswith("raised ") for text in (d.get("descriptions") or {}).values())
    return f", {raised} raised" if raised else ""


# --- replays -----------------------------------------------------------------------
def _replay_remote(context, step, send):
    try:
        send()
    except RemoteError:
        if not step.data.get("failed"):   # it failed when recorded too: replayed as it happened
            raise


def _not_as_recorded(step):
    """True when what a replay would run is not what was run: its source was stored redacted (it held a
    credential), or its pushed values were not stored. The recording says so (it is partial); not run."""
    return "source" in step.data.get("redacted", ()) or bool(step.data.get("dropped"))


def _replay_remote_eval(context, step):
    if _not_as_recorded(step):
        return
    push = context.unpickle(step, "pushed") if "pushed" in step.part_names else {}
    _replay_remote(context, step, lambda: context.session.remote_eval(step.data["source"], push=push))


def _replay_rules(context, step):
    if _not_as_recorded(step):
        return
    _replay_remote(context, step, lambda: context.session.add_rules(step.data["ns"], step.data["source"]))


def _replay_dispatch(context, step):
    if step.data.get("dropped"):   # its node references were not stored: each result is reported not reproduced
        context.compare(step, {}, None, failure=step.data["dropped"])
        return
    wanted = {r.id: r for r in context.unpickle(step, "targets") + context.unpickle(step, "jobs")}
    # the recorded key jobs become targets too, so each recorded result has a value to compare
    context.compute(list(wanted.values()), step.data["key_rules"], recorded_seconds=step.data.get("seconds", 0.0))
    session = context.session
    replayed = session.fingerprint({nid: session.futures[nid] for nid in step.data["results"]})
    replayed = {nid: (r["fp"], r["describe"]) for nid, r in replayed.items()}
    context.compare(step, replayed, lambda nid: session.recompute(wanted[nid]))


def _replay_graph(context, step):
    if hasattr(context, "submit_graph"):   # graphs in flight together are submitted together
        context.submit_graph(step)
        return
    if "specs" not in step.part_names:
        context.compare(step, {}, None, failure=f"it cannot be replayed: {step.data.get('dropped') or 'no run specs'}")
        return
    event = dict(step.data, specs=context.part(step, "specs"))
    try:
        replayed = context.session.replay_graph(event, with_descriptions=True)
    except Exception as e:   # reported per result, like any other difference
        context.compare(step, {}, None, failure=f"the graph failed on replay: {type(e).__name__}: {e}")
        return
    again = {}   # the graph computed once more, only if some result differs

    def recompute(key):
        if not again:
            again.update(context.session.replay_graph(event))
        return again.get(key)

    context.compare(step, replayed, recompute)


def _replay_run(context, step):
    if hasattr(context, "client_for"):
        from ..cluster.resubmit import replay_run

        replay_run(context.client_for(step.data.get("address")), dict(step.data, function=context.part(step, "function")))
        return
    context.session.replay_run(dict(step.data, function=context.part(step, "function")))


def _replay_worker_plugin(context, step):   # e.g. UploadFile: later graphs may need what it installed
    from distributed.protocol.pickle import loads

    plugin = loads(context.part(step, "plugin"))
    if hasattr(context, "client_for"):
        context.client_for(step.data.get("address")).register_plugin(plugin, name=step.data["name"])
        return
    context.session.register_plugin(plugin, name=step.data["name"])


def _replay_resize(context, step):   # worker_joined, worker_left: cluster.scale or adapt while recording
    context.resize(step)


def _replay_adopted_cluster(context, step):
    context.use_cluster(step)


def _replay_scatter(context, step):
    context.replay_scatter(step)


def _replay_fingerprints(context, step):
    context.compare_later(step)


def _replay_outputs(context, step):
    context.compare_outputs(step)


# --- results -----------------------------------------------------------------------
def _dispatch_results(d):
    return {nid: {"label": r.get("label"), "fp": r["fp"], "describe": r.get("describe")}
            for nid, r in d["results"].items()}


def _graph_results(d):
    return {key: {"label": f"dask key {key}", "fp": fp, "describe": d.get("descriptions", {}).get(key)}
            for key, fp in d.get("fingerprints", {}).items()}


def _output_results(d):
    from ..cluster.serve import recorded_fingerprint, written_by_a_task   # a replay runs the graphs, not the cells

    return {f["abspath"]: {"label": f"output {f['path']}", "fp": recorded_fingerprint(f),
                           "describe": f"{f.get('size') or 0:,} B"}
            for f in d["files"] if f.get("sha256") and written_by_a_task(f)}


def _shape(spec):
    if not spec:
        return "not described"
    kind = "processes" if spec.get("processes", True) else "threads in the kernel"
    return f"{spec.get('n_workers')} workers x {spec.get('threads_per_worker')} threads ({kind}) at {spec.get('address')}"


def _count(d):
    return f" ({d['workers']} workers)" if d.get("workers") is not None else ""


def _files(d, key="path"):
    shown = ", ".join(f"{f[key]} ({f.get('size') or 0:,} B)" for f in d["files"][:5])
    return shown + (f" and {len(d['files']) - 5} more" if len(d["files"]) > 5 else "")


KINDS = {k.name: k for k in [
    StepKind(
        "cluster",
        {"mode": "`start` or `connect`", "n_workers": "", "threads_per_worker": "", "memory_limit": "",
         "address": "the scheduler's", "seed": "the session seed"},
        summarise=lambda d: (f"{d.get('mode')} cluster, {d.get('n_workers')} workers x "
                             f"{d.get('threads_per_worker')} threads"),
    ),
    StepKind(
        "environment",
        {"kernel": "blob SHA-256 of the kernel's environment JSON",
         "workers": "`{address: blob SHA-256}` (identical environments share one blob)",
         "wheels": "`{name: {filename, sha256}}`: wheels of the kernel's editable/local installs, as blobs "
                   "(`--with-local-packages`; first environment step only)"},
        summarise=lambda d: f"kernel and {len(d['workers'])} workers",
    ),
    StepKind(
        "remote_eval",
        {"source": "", "push": "names of the pushed kernel variables",
         "failed": "true when it raised on some worker (replayed as it happened)",
         "dropped": "why its pushed values were not stored (they held a credential): not replayed"},
        {"pushed": "cloudpickle of `{name: value}` (only when something was pushed)"},
        summarise=_first_line, replay=_replay_remote_eval,
    ),
    StepKind(
        "rules",
        {"ns": "namespace", "source": "", "rules": "names of the rules defined",
         "failed": "true when it raised on some worker"},
        summarise=lambda d: f"{d['ns']}: {', '.join(d['rules'])}", replay=_replay_rules,
    ),
    StepKind(
        "cell",
        {"source": "of a recorded cell"},
        summarise=_first_line,
    ),
    StepKind(
        "dispatch",
        {"targets": "`[{id, key, label}]`", "key_rules": "", "seed": "", "nodes": "count", "jobs": "count of key jobs",
         "seconds": "compute time", "results": "`{node id: {fp, describe, label, target}}`",
         "dropped": "why its node references were not stored (they held a credential): its results are reported "
                    "not reproduced"},
        {"targets": "cloudpickle of the target node references", "jobs": "cloudpickle of the key jobs' node references"},
        summarise=lambda d: (f"{_targets(d)}: {d['nodes']} nodes in {d['jobs']} key jobs, "
                             f"{len(d['results'])} results"),
        replay=_replay_dispatch, results=_dispatch_results,
    ),
    StepKind(
        "graph",
        {"kind": "", "seq": "", "time": "", "client": "", "keys": "wanted keys as text", "ntasks": "",
         "graphs": "how many graphs the client sent one after another (a loop of `submit`) that this step holds",
         "fingerprints": "`{key: fp}` (of a key that raised: of its error, described `raised ...`)",
         "descriptions": "`{key: text}`",
         "pending": "wanted keys whose fingerprint came later (a `fingerprints` step)",
         "scattered": "keys of scattered data it depends on (a `scatter` step)",
         "reuses": "keys of earlier graphs it depends on (a persisted collection, a future passed on): a replay "
                   "keeps them",
         "after": "`[[key, fetched keys, time]]`: the graphs from that key on were sent (at that time) after the "
                  "client fetched those (`gather`, `result()`) or waited for them (`wait`); a replay sends them once "
                  "the fetched keys they do not depend on are computed (the scheduler waits for the others)",
         "address": "its scheduler's (the cluster it ran on)",
         "dropped": "why its specs, or some of its graphs, are missing (the recording is then partial)"},
        {"specs": "cloudpickle of the run specs"},
        summarise=lambda d: (f"{_graphs(d)} of {d.get('ntasks')} tasks, "
                             f"{len(d.get('keys', []))} outputs{_raised(d)}"),
        replay=_replay_graph, results=_graph_results,
    ),
    StepKind(
        "run",
        {"kind": "", "seq": "", "time": "", "client": "", "name": "", "workers": "", "nanny": "", "wait": "",
         "address": ""},
        {"function": "the pickles of `{function, args, kwargs}` a `client.run` call sent"},
        summarise=lambda d: f"client.run {d.get('name')}", replay=_replay_run,
    ),
    StepKind(
        "worker_plugin",
        {"kind": "", "seq": "", "time": "", "name": "", "nanny": "", "address": ""},
        {"plugin": "the pickled plugin a `register_plugin` call sent"},
        summarise=lambda d: f"worker plugin {d.get('name')}", replay=_replay_worker_plugin,
    ),
    StepKind(
        "adopted_cluster",
        {"client": "the client's id", "address": "its scheduler's", "captured": "false when its scheduler refused "
         "the capture plugin (the recording is then partial)", "reason": "why not", "owned": "",
         "spec": "`{address, cluster, n_workers, threads_per_worker, memory_limit, processes, nanny, workers: "
                 "{address: {nthreads, memory_limit, host, pid, cwd, threadpools: {blas, openmp}}}, kernel}`"},
        summarise=lambda d: f"cluster {_shape(d.get('spec'))}" + ("" if d.get("captured") else f" NOT CAPTURED: {d.get('reason')}"),
        replay=_replay_adopted_cluster,
    ),
    StepKind(
        "scatter",
        {"kind": "", "seq": "", "time": "", "client": "", "keys": "scattered keys as text", "nbytes": "",
         "values": "`{key: blob SHA-256}`: each value's cloudpickle, content-addressed", "address": "",
         "dropped": "why some value is missing"},
        summarise=lambda d: f"scattered {len(d.get('keys', []))} value(s)", replay=_replay_scatter,
    ),
    StepKind(
        "fingerprints",
        {"kind": "", "seq": "", "time": "", "graph": "the `seq` of the graph event they belong to",
         "fingerprints": "`{key: fp}`", "descriptions": "`{key: text}`", "address": ""},
        summarise=lambda d: f"{len(d.get('fingerprints', {}))} later result(s) of graph {d.get('graph')}",
        replay=_replay_fingerprints, results=_graph_results,
    ),
    StepKind(
        "dropped",
        {"kind": "", "seq": "", "time": "", "what": "fingerprints, cluster, file, or the kind of a step not stored "
         "(`run`, `worker_plugin`: its pickle held a credential)", "name": "", "keys": "", "reason": "",
         "address": "", "files": "the files concerned"},
        summarise=lambda d: f"NOT CAPTURED ({d.get('what')}): {d.get('reason')}",
    ),
    StepKind(
        "unreproducible",
        {"kind": "", "seq": "", "time": "", "what": "asynchronous client, actor, Queue, Variable, Event, Lock, "
         "Semaphore or MultiLock", "name": "its name (a key for an actor, a client id)", "op": "the call seen",
         "count": "how many such calls", "reason": "why a replay cannot repeat it", "client": "", "address": ""},
        summarise=lambda d: f"NOT REPRODUCIBLE ({d.get('what')} {d.get('name')}): {d.get('reason')}",
    ),
    StepKind(
        "worker_joined",
        {"kind": "", "seq": "", "time": "", "address": "its scheduler's", "worker": "",
         "workers": "how many its scheduler then had: a replay grows its cluster to that count",
         "environment": "blob SHA-256 of its environment JSON"},
        summarise=lambda d: f"worker {d.get('worker')} joined{_count(d)}", replay=_replay_resize,
    ),
    StepKind(
        "worker_left",
        {"kind": "", "seq": "", "time": "", "address": "its scheduler's", "worker": "",
         "workers": "how many its scheduler then had: a replay shrinks its cluster to that count"},
        summarise=lambda d: f"worker {d.get('worker')} left{_count(d)}", replay=_replay_resize,
    ),
    StepKind(
        "inputs",
        {"files": "`[{path, abspath, cwd, size, mtime_ns, sha256, reader, host, embedded}]`: files read by any code, "
                  "where it ran (`reader`: kernel or a worker's address; `path` as the code wrote it; embedded: the "
                  "bytes are the store blob of that SHA-256; a file read in several versions, as cells rewrote it, "
                  "has an entry for each: a replay serves each graph the version current, by `mtime_ns`, when it "
                  "was sent)"},
        summarise=_files, inputs=True,
    ),
    StepKind(
        "remote_inputs",
        {"files": "`[{url, path, cwd, size, etag, version_id, sha256, blob, reader}]`: remote files read "
                  "(`blob` with `--data embed-remote`)"},
        summarise=lambda d: _files(d, "url"),
    ),
    StepKind(
        "outputs",
        {"files": "`[{path, abspath, cwd, existed, size, mtime_ns, sha256, content, reader, in_task, rewritten}]`: "
                  "files the session wrote; a replay writes them into its sandbox and compares their hashes "
                  "(`content`, where the format stamps the time it was written: the fingerprint of what gzip, zip or "
                  "HDF5 holds), except those the kernel's own code wrote outside any task (`in_task` false), which a "
                  "replay does not run, and those a cell rewrote after a task wrote them (`rewritten`: no hash)"},
        summarise=_files, replay=_replay_outputs, results=_output_results,
    ),
    StepKind(
        "data",
        {"files": "`[{path, size, sha256, embedded}]`: input files read by nodes "
                  "(embedded: the bytes are the store blob of that SHA-256)"},
        summarise=lambda d: ", ".join(f"{f['path']} ({f['size']:,} B)" for f in d["files"]),
        inputs=True,
    ),
]}


def kind_of(step, where="recording"):
    """The :class:`StepKind` of ``step`` (``JuliusError`` naming it when unknown)."""
    try:
        return KINDS[step.kind]
    except KeyError:
        raise JuliusError(f"{where}: step {step.seq} has unknown kind {step.kind!r}") from None


def summary(step):
    """One line about ``step`` for people (its kind when unknown to this version)."""
    kind = KINDS.get(step.kind)
    return kind.summarise(step.data) if kind is not None else step.kind


def results(step):
    """``{node id or key: {"label", "fp", "describe"}}`` recorded in ``step`` (``{}`` for most kinds)."""
    kind = KINDS.get(step.kind)
    return kind.results(step.data) if kind is not None and kind.results is not None else {}


def input_files(step):
    """The input files ``step`` recorded (``[]`` for kinds that record none)."""
    kind = KINDS.get(step.kind)
    return list(step.data.get("files") or []) if kind is not None and kind.inputs else []


def recorded_environment(recording):
    """``(kernel environment, {worker: environment})`` of a recording's ``environment`` step, or ``(None, {})``."""
    def read(sha, whose):
        return environment(recording.blob(sha), f"Recording '{recording.name}': the environment of {whose} "
                                                f"(blob {sha[:12]}…)")

    for step in recording.steps:
        if step.kind == "environment":
            return read(step.data["kernel"], "the kernel"), {w: read(sha, f"worker {w}")
                                                             for w, sha in step.data["workers"].items()}
    return None, {}


def format_table():
    """The Markdown table of step kinds that ``docs/format.md`` holds."""
    lines = ["| kind | data (JSON) | parts (bytes) | replayed | results |", "|---|---|---|---|---|"]
    for kind in KINDS.values():
        data = ", ".join(f"`{name}`" + (f": {text}" if text else "") for name, text in kind.fields.items())
        parts = ", ".join(f"`{name}`: {text}" for name, text in kind.parts.items()) or "—"
        lines.append(f"| `{kind.name}` | {data} | {parts} | {'yes' if kind.replay else '—'} | "
                     f"{'yes' if kind.results else '—'} |")
    return "\n".join(lines)
