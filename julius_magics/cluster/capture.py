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
    drain_capture(client, final=True)  # at the end: waits for every wanted key
    replay_graph(other_client, event) -> {key: fingerprint}
    submit_graph(other_client, event, hold=True) -> ({key: future}, held futures)
    replay_scatter(other_client, event, values) -> futures
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
``{"kind": "scatter", "seq", "time", "client", "keys", "nbytes", "values": {key: bytes}}``
    data a client scattered (it has no run spec): ``values`` are cloudpickles of
    each value, gathered by :func:`drain_capture` (the keys are pinned on the
    scheduler until then, so a future released meanwhile is not lost).
``{"kind": "fingerprints", "seq", "time", "graph": seq, "fingerprints", "descriptions"}``
    fingerprints of wanted keys that finished after their graph was drained
    (``persist``, futures still running at a cell's end): "later collected".
``{"kind": "worker_joined", "seq", "time", "worker"}``
    a worker that joined while capturing (its environment is still to record).
``{"kind": "dropped", "seq", "time", "what", "keys", "reason"}``
    something capture could not keep (a final drain's fingerprints that never
    came, specs that would not pickle): a recording holding one is *partial*.

A graph event also lists ``pending`` (wanted keys whose fingerprint had not
arrived when it was drained: a later ``fingerprints`` event brings them),
``scattered`` (keys of scattered data it depends on) and, when its specs could
not be pickled, ``dropped`` (the reason) with ``specs`` None.

The handler wrapping uses private scheduler API; distributed is pinned to
2026.8.0 and the tests exercise it.
"""

from __future__ import annotations

import ast
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
    "submit_graph",
    "replay_scatter",
    "GraphBatch",
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
FLUSH_PREFIX = "julius-flush-"
FLUSH_SECONDS = 5.0
HOLDER = "julius-capture-holder"   # the scheduler-side "client" that pins scattered data


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
    """Scheduler plugin that journals graphs, scatters, ``client.run`` calls and plugin registrations.

    Parameters
    ----------
    capturing : bool, optional
        Start with capture on (default off: see :func:`start_capture`).
    clients : iterable of str, optional
        Only these clients' graphs and scatters are journaled (default: every client's).
    """

    name = PLUGIN_NAME

    def __init__(self, capturing: bool = False, clients=()):
        self.capturing = capturing
        self.clients = set(clients)   # empty: every client's work is journaled
        self._reset()

    def _reset(self):
        self.scheduler = None
        self.events: list[dict] = []
        self.seq = 0
        # key text -> events whose wanted key it is, until its fingerprint arrives
        self.wanted: dict[str, list[dict]] = {}
        # wanted keys computed whose fingerprint has not arrived yet
        self.awaiting: set[str] = set()
        self.latest_fingerprints: dict[str, tuple[str, str]] = {}
        self.unserialized: list[tuple] = []
        self.drained: set[int] = set()   # ids of graph events already handed to the kernel
        self.late: dict[int, dict] = {}  # graph seq -> fingerprints that came after its drain
        self.pinned: dict = {}           # scattered key -> event seq (held until drained)
        self.flushed: set = set()        # drain markers that arrived
        self.executor = None
        self.stats = {"graphs": 0, "tasks": 0, "scatters": 0, "dropped": 0, "hook_seconds_max": 0.0,
                      "hook_seconds_total": 0.0, "serialize_seconds_total": 0.0}

    def __getstate__(self):
        # Sent to the scheduler by ``client.register_plugin``: only the settings travel.
        return {"capturing": self.capturing, "clients": sorted(self.clients)}

    def __setstate__(self, state):
        self.capturing = state["capturing"]
        self.clients = set(state.get("clients", ()))
        self._reset()

    def _journaled(self, client) -> bool:
        if not self.capturing or not client or client.startswith("Client-worker-"):
            return False
        return not self.clients or client in self.clients

    # --- lifecycle -------------------------------------------------------------
    async def start(self, scheduler):
        self.scheduler = scheduler
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="julius-capture")
        handlers = scheduler.handlers
        for op, wrap in (("broadcast", self._wrap_broadcast), ("register_worker_plugin", self._wrap_plugin(False)),
                         ("register_nanny_plugin", self._wrap_plugin(True)), ("update_data", self._wrap_update_data)):
            original = getattr(handlers[op], "__julius_original__", handlers[op])
            wrapped = wrap(original)
            wrapped.__julius_original__ = original
            handlers[op] = wrapped
        # Scheduler.scatter calls self.update_data directly, not through the handler.
        scheduler.update_data = handlers["update_data"]
        # Not through the wrapped handler: our own plugin is not journalled.
        await scheduler.register_worker_plugin(None, pickle.dumps(FingerprintWorkerPlugin()), WORKER_PLUGIN_NAME, idempotent=True)

    async def close(self):
        if self.scheduler is not None:
            for op in ("broadcast", "register_worker_plugin", "register_nanny_plugin", "update_data"):
                original = getattr(self.scheduler.handlers[op], "__julius_original__", None)
                if original is not None:
                    self.scheduler.handlers[op] = original
            self.scheduler.__dict__.pop("update_data", None)
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def _new_event(self, kind: str, **fields) -> dict:
        self.seq += 1
        event = {"kind": kind, "seq": self.seq, "time": time.time(), **fields}
        self.events.append(event)
        return event

    # --- graphs ------------------------------------------------------------------
    def update_graph(self, scheduler, *, client, keys, tasks, annotations=None, priority=None, stimulus_id=None, **kwargs):
        for key in keys:   # a drain's marker: everything this client sent before it has arrived
            if isinstance(key, str) and key.startswith(FLUSH_PREFIX):
                self.flushed.add(key)
                return
        if not self._journaled(client):
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
        # arguments) join the graph so that it recomputes on its own; scattered data
        # (no run spec) is named, and replayed from its scatter step.
        scattered = set()
        frontier = [dep for key in specs for dep in state[key].dependencies if dep.key not in specs]
        while frontier:
            dep = frontier.pop()
            if dep.key in specs:
                continue
            if dep.run_spec is None:
                scattered.add(key_text(dep.key))
            else:
                specs[dep.key] = dep.run_spec
                frontier.extend(d for d in dep.dependencies if d.key not in specs)
        for key in wanted:   # a wanted key may itself be scattered data (client.compute of a future)
            ts = state.get(key)
            if ts is not None and ts.run_spec is None and key not in specs:
                scattered.add(key_text(key))
        event = self._new_event("graph", client=client, keys=[key_text(k) for k in wanted], ntasks=len(specs),
                                specs=None, fingerprints={}, descriptions={}, scattered=sorted(scattered))
        for key in wanted:
            ts = state.get(key)
            if ts is None:
                continue
            if ts.state == "memory" or key not in specs:
                # Computed before this graph: its fingerprint, if known, is the earlier one.
                known = self.latest_fingerprints.get(key_text(key))
                if known:
                    event["fingerprints"][key_text(key)], event["descriptions"][key_text(key)] = known
                elif key_text(key) in self.wanted:   # still running for an earlier graph
                    self.wanted[key_text(key)].append(event)
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

    def _serialize(self, jobs):
        started = time.perf_counter()
        for event, wanted, specs in jobs:
            try:
                event["specs"] = cloudpickle.dumps({"keys": wanted, "specs": specs}, protocol=5)
            except Exception as error:   # kept as a dropped graph: the recording says it is partial
                event["dropped"] = f"its run specs could not be pickled: {type(error).__name__}: {error}"
                self.stats["dropped"] += 1
        self.stats["serialize_seconds_total"] += time.perf_counter() - started

    def transition(self, key, start, finish, *args, **kwargs):
        if not self.wanted:
            return
        if finish == "memory" and start == "processing":
            text = key_text(key)
            if text in self.wanted:
                self.awaiting.add(text)
        elif finish in ("erred", "released", "forgotten") and start != "memory":
            # never computed (failed or cancelled): no result to wait for
            text = key_text(key)
            if text in self.wanted and text not in self.awaiting:
                del self.wanted[text]

    def log_event(self, topic, msg):
        if topic != TOPIC:
            return
        text, fp, summary = msg["key"], msg["fingerprint"], msg["description"]
        self.latest_fingerprints[text] = (fp, summary)
        self.awaiting.discard(text)
        for event in self.wanted.pop(text, ()):
            if id(event) in self.drained:   # the kernel has it already: sent as a late fingerprint
                late = self.late.setdefault(event["seq"], {"fingerprints": {}, "descriptions": {}})
                late["fingerprints"][text], late["descriptions"][text] = fp, summary
            else:
                event["fingerprints"][text] = fp
                event["descriptions"][text] = summary

    # --- scattered data ----------------------------------------------------------
    def _wrap_update_data(self, original):
        def update_data(*args, who_has, nbytes, client=None, **kwargs):
            result = original(*args, who_has=who_has, nbytes=nbytes, client=client, **kwargs)
            if self._journaled(client):
                keys = list(who_has)
                # pinned until the kernel gathered them: a future released meanwhile stays capturable
                self.scheduler.client_desires_keys(keys=keys, client=HOLDER)
                event = self._new_event("scatter", client=client, keys=[key_text(k) for k in keys], key_objects=keys,
                                        nbytes={key_text(k): nbytes.get(k, -1) for k in keys}, values=None)
                for key in keys:
                    self.pinned[key] = event["seq"]
                self.stats["scatters"] += 1
            return result

        return update_data

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

    def add_worker(self, scheduler, worker):
        if self.capturing:
            self._new_event("worker_joined", worker=worker)

    # --- draining ------------------------------------------------------------------
    def _still_running(self, text) -> bool:
        """Whether a wanted key may still bring a fingerprint (it is computing or queued)."""
        if text in self.awaiting:
            return True
        ts = self.scheduler.tasks.get(_key_from_text(text, self.scheduler.tasks))
        return ts is not None and ts.state in ("waiting", "processing", "queued", "no-worker")

    async def drain(self, timeout: float, final: bool = False, markers=()) -> list[dict]:
        """Return and forget the events so far, every graph with its pickled specs.

        Events and unpickled specs are taken together, before anything is awaited, so a
        graph arriving meanwhile waits whole for the next drain.  Waits (at most
        ``timeout`` seconds) for the fingerprints of the drained graphs' keys that are
        computed; with ``final``, for every key still computing too, and what never came
        is returned as a ``dropped`` event.  Keys still computing otherwise come later,
        as ``fingerprints`` events.  ``markers`` are keys of marker graphs the kernel's
        clients sent just before (:func:`drain_capture`): their arrival means every
        graph those clients sent earlier has arrived too.
        """
        deadline = time.monotonic() + timeout
        flush_deadline = time.monotonic() + FLUSH_SECONDS
        while not set(markers) <= self.flushed and time.monotonic() < flush_deadline:
            await asyncio.sleep(0.002)
        self.flushed -= set(markers)
        events, self.events = self.events, []
        jobs, self.unserialized = self.unserialized, []
        if jobs:
            await asyncio.wrap_future(self.executor.submit(self._serialize, jobs))
        mine = {id(e) for e in events if e["kind"] == "graph"}
        self.drained |= mine

        def waiting_for():
            return [t for t, evs in self.wanted.items() if any(id(e) in self.drained for e in evs)
                    and (t in self.awaiting or (final and self._still_running(t)))]

        while waiting_for() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for event in events:
            if event["kind"] == "graph":
                event["pending"] = sorted(set(event["keys"]) - set(event["fingerprints"]))
        for seq, late in sorted(self.late.items()):
            events.append({"kind": "fingerprints", "seq": seq, "time": time.time(), "graph": seq, **late})
        self.late = {}
        if final:
            lost = sorted(t for t, evs in self.wanted.items() if any(id(e) in self.drained for e in evs)
                          and self._still_running(t))
            if lost:
                self.stats["dropped"] += len(lost)
                events.append({"kind": "dropped", "seq": self.seq, "time": time.time(), "what": "fingerprints",
                               "keys": lost, "reason": f"no fingerprint within {timeout:g} s of the end of the recording"})
            self.wanted = {}
            self.awaiting = set()
            self.drained = set()
        else:   # forget drained events whose keys all came
            alive = {id(e) for evs in self.wanted.values() for e in evs}
            self.drained &= alive
        return events

    def release_pinned(self, keys) -> None:
        """Let scattered keys go once their values were gathered (or could not be)."""
        known = [k for k in keys if k in self.pinned]
        for k in known:
            del self.pinned[k]
        known = [k for k in known if k in self.scheduler.tasks]
        if known and HOLDER in self.scheduler.clients:
            self.scheduler.client_releases_keys(keys=known, client=HOLDER, stimulus_id=f"julius-release-{time.time()}")


def _key_from_text(text, tasks):
    """The Dask key whose :func:`key_text` is ``text`` (string keys are their text)."""
    if text in tasks:
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


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

    Other clients of the same cluster (a colleague on a shared deployment) are not
    journaled, unless capture is started for them too.
    """
    install_capture(client)
    client.run_on_scheduler(_set_capturing, True, client.id)


def stop_capture(client, everyone: bool = False) -> None:
    """Stop journaling ``client``'s work (with ``everyone``, every client's); events stay until drained."""
    client.run_on_scheduler(_set_capturing, False, None if everyone else client.id)


def drain_capture(client, timeout: float = 10.0, final: bool = False, also_flush=()) -> list[dict]:
    """Return the captured events in arrival order and forget them.

    Every graph ``client`` (and each client in ``also_flush``, other clients of
    this kernel on the same scheduler) sent before this call is in the result: a
    marker graph sent first on each client's stream is awaited on the scheduler.

    Waits, at most ``timeout`` seconds, until the run specs are pickled and the
    fingerprints of the wanted keys that finished computing have arrived; with
    ``final`` (at the end of a recording), for the keys still computing as well.
    Scattered values are gathered here (``values`` of the ``scatter`` events), then
    released on the scheduler.
    """
    markers = []
    for each in (client, *also_flush):
        marker = f"{FLUSH_PREFIX}{uuid.uuid4().hex}"
        each.submit(_marker, key=marker, pure=False).release()
        markers.append(marker)
    events = client.run_on_scheduler(_drain, timeout, final, markers)
    scatters = [e for e in events if e["kind"] == "scatter"]
    if scatters:
        _gather_scattered(client, scatters)
    return events


def _gather_scattered(client, scatters):
    """Fill each scatter event's ``values`` with cloudpickles taken where the data is (``who_has``)."""
    keys = [k for e in scatters for k in e.pop("key_objects")]
    try:
        where = client.run_on_scheduler(_who_has, keys)
        by_worker = {}
        for key, workers in where.items():
            if workers:
                by_worker.setdefault(workers[0], []).append(key)
        values = {}
        for worker, some in by_worker.items():
            values.update(client.run(_pickled_values, some, workers=[worker])[worker])
        for event in scatters:
            event["values"] = {t: values[t] for t in event["keys"] if t in values}
            lost = [t for t in event["keys"] if t not in event["values"]]
            if lost:
                event["dropped"] = f"scattered data {', '.join(lost[:3])} was gone before it could be gathered"
    except Exception as error:   # reported on the events: the recording becomes partial
        for event in scatters:
            event["values"] = event.get("values") or {}
            event["dropped"] = f"scattered data could not be gathered: {type(error).__name__}: {error}"
    finally:
        client.run_on_scheduler(_release_pinned, keys)


def _who_has(keys, dask_scheduler=None) -> dict:
    tasks = dask_scheduler.tasks
    return {k: [ws.address for ws in (tasks[k].who_has or ())] if k in tasks else [] for k in keys}


def _pickled_values(keys, dask_worker=None) -> dict:
    """On a worker: ``{key_text: cloudpickle of the value}`` of the keys it holds."""
    return {key_text(k): cloudpickle.dumps(dask_worker.data[k], protocol=5) for k in keys if k in dask_worker.data}


def capture_stats(client) -> dict:
    """Return counters of the plugin: graphs, tasks, scatters, dropped items, time in the hook and in pickling."""
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
    if on:
        if client_id:
            plugin.clients.add(client_id)
        plugin.capturing = True
    else:
        if client_id:
            plugin.clients.discard(client_id)
        else:
            plugin.clients.clear()
        plugin.capturing = bool(plugin.clients)


async def _drain(timeout: float, final: bool = False, markers=(), dask_scheduler=None) -> list[dict]:
    return await _plugin(dask_scheduler).drain(timeout, final, markers)


def _marker():
    return None


def _release_pinned(keys, dask_scheduler=None) -> None:
    _plugin(dask_scheduler).release_pinned(keys)


def _stats(dask_scheduler=None) -> dict:
    return dict(_plugin(dask_scheduler).stats)


# --- replay ----------------------------------------------------------------------
def submit_graph(client, event: dict, hold: bool = False):
    """Send a captured graph to ``client``'s cluster without waiting for it.

    Its wanted keys are fingerprinted there.  Scattered data it depends on must be
    in memory already (:func:`replay_scatter`).

    Parameters
    ----------
    client : distributed.Client
    event : dict
        A ``"graph"`` event (with its ``specs`` bytes).
    hold : bool, optional
        Also return futures of the wanted keys themselves, so that later graphs that
        depend on them reuse the values instead of recomputing them.

    Returns
    -------
    (dict, list)
        ``{key_text: future of (fingerprint, description)}`` and the held futures.
    """
    from dask.task_spec import Task, TaskRef

    if event.get("kind") != "graph" or not event.get("specs"):
        raise JuliusError(f"Captured graph {event.get('seq')} cannot be replayed: "
                          + (event.get("dropped") or "it has no run specs") + ".")
    captured = cloudpickle.loads(event["specs"])
    graph = dict(captured["specs"])
    scattered = set(event.get("scattered") or ())
    missing = [key_text(k) for k in captured["keys"] if k not in graph and key_text(k) not in scattered]
    if missing:
        raise JuliusError(f"Captured graph {event.get('seq')} cannot be replayed: no run spec for {', '.join(missing[:5])}.")
    targets = {}
    run_id = uuid.uuid4().hex  # fresh keys: a replayed graph may be replayed again on the same cluster
    for i, key in enumerate(captured["keys"]):
        fp_key = f"{INTERNAL_PREFIX}replay-fingerprint-{run_id}-{i}"
        graph[fp_key] = Task(fp_key, fingerprint_and_describe, TaskRef(key))
        targets[fp_key] = key_text(key)
    wanted = list(targets) + ([k for k in captured["keys"] if k in captured["specs"]] if hold else [])
    futures = client.get(graph, wanted, sync=False)
    return dict(zip(targets.values(), futures)), futures[len(targets):]


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
    futures, _ = submit_graph(client, event)
    results = client.gather(list(futures.values()))
    return {text: (tuple(result) if with_descriptions else result[0]) for text, result in zip(futures, results)}


class GraphBatch:
    """Captured graphs replayed together, as they were in flight together when recorded.

    Each :meth:`submit` sends a graph at once (in the recorded order); :meth:`gather`
    waits for all of them and returns what each replayed.  The wanted keys stay
    held until :meth:`release`, so a later graph of the batch that depends on them
    reuses the values instead of recomputing them.
    """

    def __init__(self, client):
        self.client = client
        self.pending = []   # (event, {key: future} or None, failure text or None)
        self.held = []

    def __len__(self):
        return len(self.pending)

    def submit(self, event) -> None:
        try:
            futures, held = submit_graph(self.client, event, hold=True)
        except Exception as error:
            self.pending.append((event, None, f"the graph failed on replay: {type(error).__name__}: {error}"))
            return
        self.held.extend(held)
        self.pending.append((event, futures, None))

    def gather(self) -> list:
        """``[(event, {key_text: (fingerprint, description)}, failure or None)]`` in submission order."""
        done = []
        for event, futures, failure in self.pending:
            if futures is None:
                done.append((event, {}, failure))
                continue
            try:
                results = self.client.gather(list(futures.values()))
                done.append((event, {k: tuple(r) for k, r in zip(futures, results)}, None))
            except Exception as error:
                done.append((event, {}, f"the graph failed on replay: {type(error).__name__}: {error}"))
        self.pending = []
        return done

    def release(self) -> None:
        self.held = []


def replay_scatter(client, event: dict, values: dict):
    """Scatter recorded data again, under its recorded keys; returns the futures (keep them).

    Parameters
    ----------
    event : dict
        A ``"scatter"`` event (its ``keys``).
    values : dict
        ``{key_text: cloudpickle bytes}`` of the values (only from a verified recording).
    """
    data = {_key_from_text(text, ()) if text.startswith("(") else text: cloudpickle.loads(values[text])
            for text in event["keys"]}
    return client.scatter(data, hash=False)


def replay_run(client, event: dict):
    """Repeat a captured ``client.run`` call on ``client``'s cluster; return its results by worker."""
    if event.get("kind") != "run":
        raise JuliusError(f"replay_run needs a captured run event, got kind={event.get('kind')!r} (seq {event.get('seq')}).")
    payload = pickle.loads(event["function"])
    function = pickle.loads(payload["function"])
    args = pickle.loads(payload["args"]) if payload.get("args") else ()
    kwargs = pickle.loads(payload["kwargs"]) if payload.get("kwargs") else {}
    return client.run(function, *args, nanny=event.get("nanny", False), wait=event.get("wait", True), **kwargs)
