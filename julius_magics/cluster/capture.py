"""Scheduler-side capture of the work that reaches a Dask cluster.

While capture is on, a scheduler plugin (:class:`CapturePlugin`, name
``"julius-capture"``) journals, in arrival order:

- every graph a client submits (``dask.dataframe``, ``dask.array``,
  ``delayed``, futures, ``persist``...): the client id, the wanted keys and the
  run specs of the graph's tasks and of the tasks they depend on, so that each
  captured graph can be recomputed on its own on a fresh cluster;
- ``client.run`` calls (by wrapping the scheduler's ``broadcast`` handler);
- worker and nanny plugin registrations.

It leaves out graphs that tasks submit themselves (clients named
``Client-worker-*``), keys starting with ``"julius-"`` (the rule engine
journals its own dispatches) and ``client.run`` of functions whose module
starts with ``julius_magics.`` (julius's own plumbing).

The results of the wanted keys are fingerprinted where they are computed: the
plugin marks those keys with the annotation ``"julius-fingerprint"``, a worker
plugin (:class:`FingerprintWorkerPlugin`) fingerprints each marked key that
finishes executing, in a thread, and sends the fingerprint back with
``worker.log_event`` to the scheduler plugin's ``log_event`` hook.  Big values
never travel to the kernel.

Pickling the run specs (~13 µs a task) happens in a thread, off the
scheduler's event loop; the hook itself only collects references.

Kernel-facing API::

    LocalCluster(scheduler_kwargs={"plugins": capture_plugins()})  # or
    install_capture(client)        # on a running cluster, idempotent
    start_capture(client); ...; stop_capture(client)
    events = drain_capture(client)  # list of dicts, in arrival order
    replay_graph(other_client, event) -> {key: fingerprint}
    replay_run(other_client, event)

Each event is a dict, JSON-able except its ``bytes`` payload:

``{"kind": "graph", "seq", "time", "client", "keys", "ntasks", "specs": bytes,
"fingerprints": {key: fp}, "descriptions": {key: text}}``
    ``keys`` are the wanted keys in string form (:func:`key_text`); ``specs``
    unpickles (cloudpickle) to ``{"keys": [original keys], "specs": {key:
    run_spec}}``.
``{"kind": "run", "seq", "time", "client", "name", "workers", "nanny", "wait",
"function": bytes}``
    ``function`` unpickles to ``{"function", "args", "kwargs"}``, each the
    pickle bytes the client sent.
``{"kind": "worker_plugin", "seq", "time", "name", "nanny", "plugin": bytes}``

The handler wrapping uses private scheduler API; distributed is pinned to
2026.8.0 and the tests exercise it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import pickle
import pickletools
import time
import uuid

import cloudpickle
from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from julius_magics.errors import JuliusError
from julius_magics.fingerprint import describe, fingerprint, fingerprint_and_describe

__all__ = [
    "PLUGIN_NAME",
    "CapturePlugin",
    "FingerprintWorkerPlugin",
    "capture_plugins",
    "install_capture",
    "start_capture",
    "stop_capture",
    "drain_capture",
    "capture_stats",
    "replay_graph",
    "replay_run",
    "key_text",
]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "julius-capture"
WORKER_PLUGIN_NAME = "julius-fingerprint"
ANNOTATION = "julius-fingerprint"
TOPIC = "julius-fingerprint"
INTERNAL_PREFIX = "julius-"
INTERNAL_MODULE = "julius_magics."


def key_text(key) -> str:
    """Return the JSON-safe string form of a Dask key.

    Strings stay as they are; tuple keys become their ``repr``.

    Examples
    --------
    >>> key_text("x-1a2b")
    'x-1a2b'
    >>> key_text(("x-1a2b", 0, 1))
    "('x-1a2b', 0, 1)"
    """
    return key if isinstance(key, str) else repr(key)


def _is_internal_key(key) -> bool:
    first = key[0] if isinstance(key, tuple) and key else key
    return isinstance(first, str) and first.startswith(INTERNAL_PREFIX)


def _pickled_global(data: bytes) -> str | None:
    """Return ``module.name`` of the first global a pickle refers to, without unpickling it.

    A module-level function pickles as a reference to its global, so this is
    its qualified name; a function cloudpickled by value starts with
    cloudpickle's own globals.
    """
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            elif opcode.name == "GLOBAL":
                return arg.replace(" ", ".")
    except Exception:  # not a pickle we can read: not internal
        return None
    return None


class CapturePlugin(SchedulerPlugin):
    """Scheduler plugin that journals graphs, ``client.run`` calls and plugin registrations.

    Parameters
    ----------
    capturing : bool, optional
        Start with capture on (default off: see :func:`start_capture`).
    """

    name = PLUGIN_NAME

    def __init__(self, capturing: bool = False):
        self.capturing = capturing
        self.client_id = None   # only this client's graphs are journaled (None: every client's)
        self._reset()

    def _reset(self):
        self.scheduler = None
        self.events: list[dict] = []
        self.seq = 0
        # key text -> (event, key) for wanted keys whose fingerprint may still arrive
        self.wanted: dict[str, list[dict]] = {}
        # wanted keys computed whose fingerprint has not arrived yet
        self.awaiting: set[str] = set()
        self.latest_fingerprints: dict[str, tuple[str, str]] = {}
        self.pending: list[concurrent.futures.Future] = []
        self.unserialized: list[tuple] = []
        self.executor = None
        self.stats = {"graphs": 0, "tasks": 0, "hook_seconds_max": 0.0, "hook_seconds_total": 0.0, "serialize_seconds_total": 0.0}

    def __getstate__(self):
        # Sent to the scheduler by ``client.register_plugin``: only the setting travels.
        return {"capturing": self.capturing}

    def __setstate__(self, state):
        self.capturing = state["capturing"]
        self.client_id = None
        self._reset()

    # --- lifecycle -------------------------------------------------------------
    async def start(self, scheduler):
        self.scheduler = scheduler
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="julius-capture")
        handlers = scheduler.handlers
        for op, wrap in (("broadcast", self._wrap_broadcast), ("register_worker_plugin", self._wrap_plugin(False)), ("register_nanny_plugin", self._wrap_plugin(True))):
            original = getattr(handlers[op], "__julius_original__", handlers[op])
            wrapped = wrap(original)
            wrapped.__julius_original__ = original
            handlers[op] = wrapped
        # Not through the wrapped handler: our own plugin is not journalled.
        await scheduler.register_worker_plugin(None, pickle.dumps(FingerprintWorkerPlugin()), WORKER_PLUGIN_NAME, idempotent=True)

    async def close(self):
        if self.scheduler is not None:
            for op in ("broadcast", "register_worker_plugin", "register_nanny_plugin"):
                original = getattr(self.scheduler.handlers[op], "__julius_original__", None)
                if original is not None:
                    self.scheduler.handlers[op] = original
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def _new_event(self, kind: str, **fields) -> dict:
        self.seq += 1
        event = {"kind": kind, "seq": self.seq, "time": time.time(), **fields}
        self.events.append(event)
        return event

    # --- graphs ------------------------------------------------------------------
    def update_graph(self, scheduler, *, client, keys, tasks, annotations=None, priority=None, stimulus_id=None, **kwargs):
        if not self.capturing or client.startswith("Client-worker-") or client != (self.client_id or client):
            return
        started = time.perf_counter()
        state = scheduler.tasks
        specs = {}
        for key in tasks:
            ts = state.get(key)
            if ts is not None and ts.run_spec is not None and not _is_internal_key(key):
                specs[key] = ts.run_spec
        wanted = [k for k in keys if not _is_internal_key(k)]
        if not wanted:
            return
        # Dependencies submitted earlier (persisted collections, futures passed as
        # arguments) join the graph so that it recomputes on its own.
        frontier = [dep for key in specs for dep in state[key].dependencies if dep.key not in specs]
        while frontier:
            dep = frontier.pop()
            if dep.key not in specs and dep.run_spec is not None:
                specs[dep.key] = dep.run_spec
                frontier.extend(d for d in dep.dependencies if d.key not in specs)
        event = self._new_event("graph", client=client, keys=[key_text(k) for k in wanted], ntasks=len(specs), specs=None, fingerprints={}, descriptions={})
        for key in wanted:
            ts = state.get(key)
            if ts is None:
                continue
            if ts.state == "memory" or key not in specs:
                # Computed before this graph: its fingerprint, if known, is the earlier one.
                known = self.latest_fingerprints.get(key_text(key))
                if known:
                    event["fingerprints"][key_text(key)], event["descriptions"][key_text(key)] = known
            else:
                ts.annotations = {**(ts.annotations or {}), ANNOTATION: True}
                self.wanted.setdefault(key_text(key), []).append(event)
        # pickled when drained, in a thread: not while the graph runs, when the GIL it would
        # take is the scheduler's (it cost ~10 % of a 20k-task graph's time)
        self.unserialized.append((event, wanted, specs))
        elapsed = time.perf_counter() - started
        self.stats["graphs"] += 1
        self.stats["tasks"] += len(specs)
        self.stats["hook_seconds_total"] += elapsed
        self.stats["hook_seconds_max"] = max(self.stats["hook_seconds_max"], elapsed)

    def _serialize(self, event, wanted, specs):
        started = time.perf_counter()
        event["specs"] = cloudpickle.dumps({"keys": wanted, "specs": specs}, protocol=5)
        self.stats["serialize_seconds_total"] += time.perf_counter() - started

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "memory" and self.wanted and start == "processing":
            text = key_text(key)
            if text in self.wanted:
                self.awaiting.add(text)

    def log_event(self, topic, msg):
        if topic != TOPIC:
            return
        text, fp, summary = msg["key"], msg["fingerprint"], msg["description"]
        self.latest_fingerprints[text] = (fp, summary)
        self.awaiting.discard(text)
        for event in self.wanted.pop(text, ()):
            event["fingerprints"][text] = fp
            event["descriptions"][text] = summary

    # --- client.run and plugin registrations -----------------------------------
    def _wrap_broadcast(self, original):
        async def broadcast(**kwargs):
            msg = kwargs.get("msg") or {}
            if self.capturing and msg.get("op") in ("run", "run_coroutine"):
                name = _pickled_global(msg.get("function", b""))
                if not (name or "").startswith(INTERNAL_MODULE):
                    payload = {part: msg.get(part) for part in ("function", "args", "kwargs")}
                    self._new_event(
                        "run",
                        client=None,
                        name=name or "<dynamic function>",
                        workers=list(kwargs.get("workers") or []) or None,
                        nanny=bool(kwargs.get("nanny")),
                        wait=bool(msg.get("wait", True)),
                        function=pickle.dumps(payload, protocol=5),
                    )
            return await original(**kwargs)

        return broadcast

    def _wrap_plugin(self, nanny: bool):
        def wrap(original):
            async def register(comm=None, *, plugin, name, **kwargs):
                if self.capturing and not str(name).startswith(INTERNAL_PREFIX):
                    self._new_event("worker_plugin", name=name, nanny=nanny, plugin=bytes(plugin))
                return await original(comm, plugin=plugin, name=name, **kwargs)

            return register

        return wrap

    # --- draining ------------------------------------------------------------------
    async def drain(self, timeout: float) -> list[dict]:
        """Wait (at most ``timeout`` seconds) for pending pickles and fingerprints; return and forget the events."""
        deadline = time.monotonic() + timeout
        for job in self.unserialized:
            self.pending.append(self.executor.submit(self._serialize, *job))
        self.unserialized = []
        pending, self.pending = self.pending, []
        for future in pending:
            await asyncio.wait_for(asyncio.wrap_future(future), max(0.1, deadline - time.monotonic()))
        while self.awaiting and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        events, self.events = self.events, []
        drained = {id(e) for e in events}
        # Keys still running stay awaited only for events not yet drained.
        self.wanted = {k: [e for e in evs if id(e) not in drained] for k, evs in self.wanted.items()}
        self.wanted = {k: evs for k, evs in self.wanted.items() if evs}
        return events


class FingerprintWorkerPlugin(WorkerPlugin):
    """Worker plugin: fingerprints each marked key that finishes executing, in a thread."""

    name = WORKER_PLUGIN_NAME

    def setup(self, worker):
        self.worker = worker
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="julius-fingerprint")

    def teardown(self, worker):
        self.executor.shutdown(wait=False)

    def transition(self, key, start, finish, **kwargs):
        if finish != "memory" or start != "executing":
            return
        ts = self.worker.state.tasks.get(key)
        if ts is None or not ts.annotations or ANNOTATION not in ts.annotations:
            return
        value = self.worker.data[key]
        self.executor.submit(self._send, key, value)

    def _send(self, key, value):
        try:
            msg = {"key": key_text(key), "fingerprint": fingerprint(value), "description": describe(value)}
        except Exception as error:  # an unhashable value must not break the worker
            msg = {"key": key_text(key), "fingerprint": f"error: {type(error).__name__}: {error}", "description": type(value).__name__}
        self.worker.log_event(TOPIC, msg)


# --- kernel-facing API ------------------------------------------------------------
def capture_plugins(capturing: bool = False) -> list[SchedulerPlugin]:
    """Return the scheduler plugins to pass to a new cluster.

    Examples
    --------
    >>> from distributed import LocalCluster
    >>> cluster = LocalCluster(scheduler_kwargs={"plugins": capture_plugins()})  # doctest: +SKIP
    """
    return [CapturePlugin(capturing=capturing)]


def install_capture(client) -> None:
    """Install the capture plugins on the cluster of ``client`` (idempotent)."""
    if not client.run_on_scheduler(_has_plugin):
        client.register_plugin(CapturePlugin(), name=PLUGIN_NAME)


def start_capture(client) -> None:
    """Turn capture on for the graphs of ``client`` (installing the plugins if needed).

    Other clients of the same cluster (a colleague on a shared deployment) are not journaled.
    """
    install_capture(client)
    client.run_on_scheduler(_set_capturing, True, client.id)


def stop_capture(client) -> None:
    """Turn capture off; events captured so far stay until drained."""
    client.run_on_scheduler(_set_capturing, False)


def drain_capture(client, timeout: float = 10.0) -> list[dict]:
    """Return the captured events in arrival order and forget them.

    Waits, at most ``timeout`` seconds, until the run specs are pickled and the
    fingerprints of the wanted keys that finished computing have arrived.
    """
    return client.run_on_scheduler(_drain, timeout)


def capture_stats(client) -> dict:
    """Return counters of the plugin: graphs, tasks, time spent in the hook and in pickling."""
    return client.run_on_scheduler(_stats)


def _plugin(dask_scheduler) -> CapturePlugin:
    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    if plugin is None:
        raise JuliusError(f"No capture plugin on the scheduler at {dask_scheduler.address}: call install_capture(client) first.")
    return plugin


def _has_plugin(dask_scheduler) -> bool:
    return PLUGIN_NAME in dask_scheduler.plugins


def _set_capturing(on: bool, client_id=None, dask_scheduler=None) -> None:
    plugin = _plugin(dask_scheduler)
    plugin.capturing = on
    plugin.client_id = client_id


async def _drain(timeout: float, dask_scheduler=None) -> list[dict]:
    return await _plugin(dask_scheduler).drain(timeout)


def _stats(dask_scheduler=None) -> dict:
    return dict(_plugin(dask_scheduler).stats)


# --- replay ----------------------------------------------------------------------
def replay_graph(client, event: dict, *, with_descriptions: bool = False) -> dict:
    """Recompute a captured graph on ``client``'s cluster and fingerprint its wanted keys there.

    Parameters
    ----------
    client : distributed.Client
        Usually a client of a fresh cluster.
    event : dict
        A ``"graph"`` event from :func:`drain_capture`.
    with_descriptions : bool, optional
        Return ``{key: (fingerprint, description)}`` instead.

    Returns
    -------
    dict
        ``{key_text: fingerprint}`` of the wanted keys.
    """
    from dask.task_spec import Task, TaskRef

    if event.get("kind") != "graph" or not event.get("specs"):
        raise JuliusError(f"replay_graph needs a captured graph event with its specs, got kind={event.get('kind')!r} (seq {event.get('seq')}).")
    captured = cloudpickle.loads(event["specs"])
    graph = dict(captured["specs"])
    missing = [key_text(k) for k in captured["keys"] if k not in graph]
    if missing:
        raise JuliusError(f"Captured graph {event.get('seq')} cannot be replayed: no run spec for {', '.join(missing[:5])} (scattered data is not captured).")
    targets = {}
    run_id = uuid.uuid4().hex  # fresh keys: a replayed graph may be replayed again on the same cluster
    for i, key in enumerate(captured["keys"]):
        fp_key = f"{INTERNAL_PREFIX}replay-fingerprint-{run_id}-{i}"
        graph[fp_key] = Task(fp_key, fingerprint_and_describe, TaskRef(key))
        targets[fp_key] = key_text(key)
    results = client.get(graph, list(targets))
    return {text: (result if with_descriptions else result[0]) for text, result in zip(targets.values(), results)}


def replay_run(client, event: dict):
    """Repeat a captured ``client.run`` call on ``client``'s cluster; return its results by worker."""
    if event.get("kind") != "run":
        raise JuliusError(f"replay_run needs a captured run event, got kind={event.get('kind')!r} (seq {event.get('seq')}).")
    payload = pickle.loads(event["function"])
    function = pickle.loads(payload["function"])
    args = pickle.loads(payload["args"]) if payload.get("args") else ()
    kwargs = pickle.loads(payload["kwargs"]) if payload.get("kwargs") else {}
    return client.run(function, *args, nanny=event.get("nanny", False), wait=event.get("wait", True), **kwargs)
