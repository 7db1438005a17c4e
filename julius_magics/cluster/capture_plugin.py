"""The scheduler and worker plugins that capture the work reaching a Dask cluster.

:class:`CapturePlugin` (on the scheduler) journals graphs, ``client.run`` calls,
scatters and plugin registrations; :class:`FingerprintWorkerPlugin` (on each
worker, installed by the scheduler plugin) fingerprints the wanted keys where
they are computed.  What they journal, and the events the kernel drains, are
described in :mod:`.capture`, which turns capture on and off from the kernel.

Both plugins are pickled to the scheduler by reference (this module's import
path), so the scheduler's Python must have julius_magics installed.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import pickle
import pickletools
import time

import cloudpickle
from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from .. import collector
from ..fingerprint import error_fingerprint_and_describe, fingerprint_and_describe

__all__ = [
    "PLUGIN_NAME",
    "CapturePlugin",
    "FingerprintWorkerPlugin",
    "key_text",
]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "julius-capture"
WORKER_PLUGIN_NAME = "julius-fingerprint"
ANNOTATION = "julius-fingerprint"
TOPIC = "julius-fingerprint"
WAITED_TOPIC = "julius-waited"   # the kernel waited for these keys (``distributed.wait``), unseen by the scheduler
INTERNAL_PREFIX = "julius-"
INTERNAL_MODULE = "julius_magics."
FLUSH_PREFIX = "julius-flush-"
FLUSH_SECONDS = 5.0
BATCH_SECONDS = 0.02   # how long a worker gathers finished keys before fingerprinting them together
TEARDOWN_SECONDS = 10  # how long a closing worker waits for its last fingerprints to be sent
HOLDER = "julius-capture-holder"   # the scheduler-side "client" that pins scattered data
ACTOR_REASON = ("an actor: its state lives on one worker and its method calls go straight to that worker, "
                "never through the scheduler, so they are not captured")


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


def _error_result(ts):
    """The result of an erred task: the error of the task that raised (itself or a dependency)."""
    blame = (ts.exception_blame or ts) if ts is not None else None
    return error_fingerprint_and_describe(getattr(blame, "exception_text", None) or "?")


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
        self.unserialized: list[_Unpickled] = []
        self.drained: set[int] = set()   # ids of graph events already handed to the kernel
        self.late: dict[int, dict] = {}  # graph seq -> fingerprints that came after its drain
        self.pinned: dict = {}           # scattered key -> event seq (held until drained)
        self.flushed: set = set()        # drain markers that arrived
        self.gathered: set[str] = set()  # keys clients fetched since the last graph: the next one came after them
        self.news = None                 # set when a marker or fingerprints arrive: a drain waiting for them wakes
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
        self.news = asyncio.Event()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="julius-capture")
        handlers = scheduler.handlers
        for op, wrap in (("broadcast", self._wrap_broadcast), ("register_worker_plugin", self._wrap_plugin(False)),
                         ("register_nanny_plugin", self._wrap_plugin(True)), ("update_data", self._wrap_update_data),
                         ("gather", self._wrap_fetch), ("who_has", self._wrap_fetch)):
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
            for op in ("broadcast", "register_worker_plugin", "register_nanny_plugin", "update_data", "gather",
                       "who_has"):
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
                self._tell_drain()
                return
        if not self._journaled(client):
            return
        started = time.perf_counter()
        after, self.gathered = self.gathered, set()   # results the client had fetched before it sent this graph
        state = scheduler.tasks
        specs, wanted = {}, []   # wanted in the order the client sent them: ``keys`` is a set (a new order each run)
        for key in tasks:
            if _is_internal_key(key):
                continue
            if key in keys:
                wanted.append(key)
            ts = state.get(key)
            if ts is not None and ts.run_spec is not None:
                specs[key] = ts.run_spec
        added = set(tasks)   # a list: a ``client.map`` of 10k keys spent a second in ``k not in tasks``
        wanted += [k for k in keys if k not in added and not _is_internal_key(k)]   # computed before (a future)
        if not wanted:
            return
        actors = sorted(key_text(k) for k in specs if state[k].actor)
        if actors:   # its state lives on one worker, and its method calls go there, not through the scheduler
            self._new_event("unreproducible", client=client, what="actor", name=", ".join(actors[:5]), op="submit",
                            reason=ACTOR_REASON)
        # Dependencies submitted earlier (persisted collections, futures passed as
        # arguments) join the graph so that it recomputes on its own; scattered data
        # (no run spec) is named, and replayed from its scatter step.
        scattered = set()
        frontier = [dep for key in specs for dep in state[key].dependencies if dep.key not in specs]
        reuses = {key_text(dep.key) for dep in frontier if dep.run_spec is not None}   # a replay keeps those
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
        event, wanted = self._graph_event(client, wanted, specs, scattered, reuses, after)
        for key in wanted:
            ts = state.get(key)
            if ts is None:
                continue
            if ts.actor:   # no value to fingerprint (reported as unreproducible above)
                continue
            if ts.state == "erred":   # a dependency had raised already
                event["fingerprints"][key_text(key)], event["descriptions"][key_text(key)] = _error_result(ts)
            elif ts.state == "memory" or key not in specs:
                # Computed before this graph: its fingerprint, if known, is the earlier one.
                known = self.latest_fingerprints.get(key_text(key))
                if known:
                    event["fingerprints"][key_text(key)], event["descriptions"][key_text(key)] = known
                elif key_text(key) in self.wanted:   # still running for an earlier graph
                    self.wanted[key_text(key)].append(event)
            else:
                ts.annotations = {**(ts.annotations or {}), ANNOTATION: True}
                self.wanted.setdefault(key_text(key), []).append(event)
        elapsed = time.perf_counter() - started
        self.stats["graphs"] += 1
        self.stats["tasks"] += len(specs)
        self.stats["hook_seconds_total"] += elapsed
        self.stats["hook_seconds_max"] = max(self.stats["hook_seconds_max"], elapsed)

    def _graph_event(self, client, wanted, specs, scattered, reuses, after):
        """The event of this graph, and its wanted keys not already in it.

        Graphs a client sends one after another between two drains (a loop of ``submit``,
        a ``map`` then ``submit`` calls) make one event, so one journal step: a step for
        each of thousands of one-task graphs cost more than their tasks.  Anything else
        the cluster sees in between (a scatter, a ``run``) ends the run.  A graph sent after
        the client fetched results (a ``gather``, a ``result()``, a ``compute`` before it)
        notes where it starts, what was fetched and when it was sent (``after``: ``[[its first
        key, fetched keys, time], ...]``): a replay sends it once those are computed.
        """
        last = self.unserialized[-1] if self.unserialized else None   # the last graph not drained yet
        if last is None or last.event is not self.events[-1] or last.event["client"] != client:
            event = self._new_event("graph", client=client, keys=[], ntasks=len(specs), graphs=0, specs=None,
                                    fingerprints={}, descriptions={}, scattered=[], reuses=[], after=[])
            last = _Unpickled(event)
            self.unserialized.append(last)
        event = last.event
        wanted = [k for k in wanted if key_text(k) not in last.known]
        if after and wanted:
            event["after"].append([key_text(wanted[0]), sorted(after), time.time()])
        last.known.update(key_text(k) for k in wanted)
        last.add(wanted, specs)
        event["keys"].extend(key_text(k) for k in wanted)
        event["graphs"] += 1
        if scattered:
            event["scattered"] = sorted(set(event["scattered"]) | scattered)
        if reuses:
            event["reuses"] = sorted(set(event["reuses"]) | reuses)
        return event, wanted

    def _serialize(self, jobs) -> list[tuple[dict, set[str]]]:
        """Pickle each drained graph event's specs (in a thread); the events that lost keys, with those keys."""
        started = time.perf_counter()
        salvaged = []
        with collector.paused():   # a full collection in a kernel of 20k futures took 0.28 s of a 0.38 s drain
            for job in jobs:
                wanted, specs = job.wanted, job.specs
                job.event["ntasks"] = len(specs)
                try:
                    job.event["specs"] = cloudpickle.dumps({"keys": wanted, "specs": specs}, protocol=5)
                except Exception as error:   # kept as a dropped graph: the recording says it is partial
                    lost = self._salvage(job, f"{type(error).__name__}: {error}")
                    if lost:
                        salvaged.append((job.event, lost))
                    self.stats["dropped"] += 1
        self.stats["serialize_seconds_total"] += time.perf_counter() - started
        return salvaged

    @staticmethod
    def _salvage(job, error) -> set[str]:
        """Keep the graphs of a merged event whose own specs pickle; the keys of the others.

        A graph that depends on a dropped one carries that one's specs too, so it is dropped as well.
        """
        event = job.event
        event["dropped"] = f"its run specs could not be pickled: {error}"
        kept, lost = [], []
        for wanted, spec_keys in job.graphs:
            specs = {k: job.specs[k] for k in spec_keys}
            try:
                cloudpickle.dumps(specs, protocol=5)
            except Exception:
                lost.extend(key_text(k) for k in wanted)
            else:
                kept.append((wanted, specs))
        if not kept:
            return set()
        wanted, specs = _merged(kept)
        event["specs"] = cloudpickle.dumps({"keys": wanted, "specs": specs}, protocol=5)
        event["ntasks"] = len(specs)
        event["dropped"] = f"{len(lost)} of its keys ({', '.join(lost[:5])}) dropped: " + event["dropped"]
        event["keys"] = [key_text(k) for k in wanted]
        event["after"] = [a for a in event["after"] if a[0] not in lost]
        return set(lost)

    def transition(self, key, start, finish, *args, **kwargs):
        if not self.wanted:
            return
        if finish == "memory" and start == "processing":
            text = key_text(key)
            if text in self.wanted:
                self.awaiting.add(text)
        elif finish == "erred" and start != "memory":
            # the user's code raised (here or in a dependency): its error is its result
            text = key_text(key)
            if text in self.wanted and text not in self.awaiting:
                self._arrived(text, *_error_result(self.scheduler.tasks.get(key)))
        elif finish == "forgotten" and start != "memory":
            # never computed (cancelled): no result to wait for.  Not at "released": a task
            # erring because a dependency did passes through it, and a released one may run again
            text = key_text(key)
            if text in self.wanted and text not in self.awaiting:
                del self.wanted[text]

    def log_event(self, topic, msg):
        if topic == WAITED_TOPIC:   # as a gather: a graph sent next comes after them
            if self.capturing:
                self.gathered.update(t for t in msg["keys"] if t in self.wanted or t in self.latest_fingerprints)
            return
        if topic != TOPIC:
            return
        for text, fp, summary in msg["fingerprints"]:
            self.latest_fingerprints[text] = (fp, summary)
            self.awaiting.discard(text)
            self._arrived(text, fp, summary)
        self._tell_drain()

    def _tell_drain(self):
        if self.news is not None:
            self.news.set()

    async def _wait_until(self, done, deadline):
        """Until ``done()`` or the deadline: woken by news, and every 10 ms (a key released,
        which no news tells of, ends a final drain's wait too)."""
        while not done() and (left := deadline - time.monotonic()) > 0:
            self.news.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.news.wait(), min(left, 0.01))

    def _arrived(self, text, fp, summary):
        """A wanted key's fingerprint, into each graph event that waits for it."""
        for event in self.wanted.pop(text, ()):
            if id(event) in self.drained:   # the kernel has it already: sent as a late fingerprint
                late = self.late.setdefault(event["seq"], {"fingerprints": {}, "descriptions": {}})
                late["fingerprints"][text], late["descriptions"][text] = fp, summary
            else:
                event["fingerprints"][text] = fp
                event["descriptions"][text] = summary

    # --- scattered data ----------------------------------------------------------
    def _wrap_fetch(self, original):
        """The scheduler's ``gather`` and ``who_has`` (a client fetching results, through the scheduler
        or straight from the workers): the keys it fetched."""
        def fetch(*args, keys=None, **kwargs):
            if self.capturing and keys:   # keys of journaled graphs only
                texts = (key_text(k) for k in keys if not _is_internal_key(k))
                self.gathered.update(t for t in texts if t in self.wanted or t in self.latest_fingerprints)
            return original(*args, keys=keys, **kwargs)

        return fetch

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

    # The scheduler's count after the change: a replay grows or shrinks its cluster to it, as
    # ``cluster.scale`` or ``adapt`` did; a restart (every worker leaving, then joining) nets out.
    def add_worker(self, scheduler, worker):
        if self.capturing:
            self._new_event("worker_joined", worker=worker, workers=len(scheduler.workers))

    def remove_worker(self, scheduler, worker, **kwargs):
        if self.capturing:
            self._new_event("worker_left", worker=worker, workers=len(scheduler.workers))

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
        await self._wait_until(lambda: set(markers) <= self.flushed, time.monotonic() + FLUSH_SECONDS)
        self.flushed -= set(markers)
        events, self.events = self.events, []
        jobs, self.unserialized = self.unserialized, []
        salvaged = await asyncio.wrap_future(self.executor.submit(self._serialize, jobs)) if jobs else []
        mine = {id(e) for e in events if e["kind"] == "graph"}

        def waiting_for():
            # polled on the event loop: unless final, only keys computed whose fingerprint is on its
            # way can qualify, not every wanted key (thousands of futures still running)
            keys = self.wanted if final else [t for t in self.awaiting if t in self.wanted]
            return [t for t in keys if any(id(e) in mine or id(e) in self.drained for e in self.wanted[t])
                    and (t in self.awaiting or (final and self._still_running(t)))]

        await self._wait_until(lambda: not waiting_for(), deadline)
        self.drained |= mine   # from now on, their fingerprints are late ones
        for event, lost in salvaged:
            self._forget(event, lost)
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

    def _forget(self, event, lost):
        """A salvaged event (:meth:`_salvage`) neither holds nor waits for the fingerprints of keys it lost."""
        for text in lost:
            event["fingerprints"].pop(text, None)
            event["descriptions"].pop(text, None)
            others = [e for e in self.wanted.pop(text, ()) if e is not event]
            if others:
                self.wanted[text] = others

    def release_pinned(self, keys) -> None:
        """Let scattered keys go once their values were gathered (or could not be)."""
        known = [k for k in keys if k in self.pinned]
        for k in known:
            del self.pinned[k]
        known = [k for k in known if k in self.scheduler.tasks]
        if known and HOLDER in self.scheduler.clients:
            self.scheduler.client_releases_keys(keys=known, client=HOLDER, stimulus_id=f"julius-release-{time.time()}")


@dataclasses.dataclass
class _Unpickled:
    """A graph event not drained yet, with what its specs are pickled from at the drain, in a thread.

    Not while the graph runs: the GIL that pickling takes is the scheduler's (it cost ~10 % of a
    20k-task graph's time).  The event's graphs are merged as they come; each keeps the keys of
    its own, so that those that pickle are kept when the merged specs do not.  Tuples of keys, not
    a list and a dict per graph: the garbage collector stops walking them (a loop of 10k
    ``submit`` calls kept 30k containers that each full collection of the kernel walked).
    """

    event: dict
    known: set[str] = dataclasses.field(default_factory=set)   # the event's keys, as text
    wanted: list = dataclasses.field(default_factory=list)     # its graphs' wanted keys, in order
    specs: dict = dataclasses.field(default_factory=dict)      # its graphs' run specs, merged
    graphs: list = dataclasses.field(default_factory=list)     # (wanted keys, run specs' keys) of each graph

    def add(self, wanted, specs):
        """One more graph (on the scheduler's event loop: the first graph's specs are kept, not copied)."""
        self.wanted.extend(wanted)
        if self.specs:
            self.specs.update(specs)
        else:
            self.specs = specs
        self.graphs.append((tuple(wanted), tuple(specs)))


def _merged(graphs) -> tuple[list, dict]:
    """The wanted keys and the run specs of graphs (``(wanted, specs)`` each), as one graph."""
    wanted, specs = [], {}
    for keys, graph in graphs:
        wanted.extend(keys)
        specs.update(graph)
    return wanted, specs


AT_ONCE_BYTES = 1 << 16   # an array this small hashes in ~30 us: no thread for it
_SCALARS = (type(None), bool, int, float, complex)


def _fingerprinted_at_once(value) -> bool:
    """Whether ``value`` is fingerprinted where it finishes: a scalar, or short text or bytes, or a small
    NumPy array of plain numbers (not by Dask's ``sizeof``, which sees a user's object holding an array
    as small)."""
    kind = type(value)
    if kind in _SCALARS:
        return kind is not int or value.bit_length() <= 4096
    if kind in (str, bytes):
        return len(value) <= AT_ONCE_BYTES
    if kind.__module__ == "numpy" and hasattr(value, "dtype"):   # an array or a NumPy scalar
        return value.nbytes <= AT_ONCE_BYTES and not value.dtype.hasobject
    return False


def _fingerprint(key, value) -> tuple[str, str, str]:
    """(key text, fingerprint, description) of a finished key's value."""
    try:
        return key_text(key), *fingerprint_and_describe(value)
    except Exception as error:  # an unhashable value must not break the worker
        return key_text(key), f"error: {type(error).__name__}: {error}", type(value).__name__


def _key_from_text(text, tasks):
    """The Dask key whose :func:`key_text` is ``text`` (string keys are their text)."""
    if text in tasks:
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class FingerprintWorkerPlugin(WorkerPlugin):
    """Worker plugin: fingerprints each marked key that finishes executing.

    A small scalar or array (:func:`_fingerprinted_at_once`) is fingerprinted where it
    finishes, in microseconds; any other value in a thread, since hashing it may take
    long and the worker's event loop must stay free.  The fingerprints go to the
    scheduler as one event per batch, at most one every :data:`BATCH_SECONDS`, and
    the thread gets its values in batches too: waking a thread for each of thousands
    of tiny tasks cost the worker more than the tasks (the GIL changing hands each
    time).  A key that finishes after a quiet spell goes at once: the last result of a
    cell is what the drain at its end waits for.
    """

    name = WORKER_PLUGIN_NAME

    def setup(self, worker):
        self.worker = worker
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="julius-fingerprint")
        self.batch = []   # (key, value) finished since the last hand-off, for the thread
        self.fingerprinted = []   # (key text, fingerprint, description) taken at once since then
        self.due = False  # a hand-off is coming
        self.handed_off = float("-inf")   # time.monotonic() of the last hand-off
        self.sent = None  # the latest batch's send (one thread: it ends after the earlier ones)

    async def teardown(self, worker):
        # A worker that goes (retired by a scale down or adapt, or its cluster closed) sends what it
        # fingerprinted first: the scheduler would otherwise wait for those keys in vain.
        self._hand_off()
        self.executor.shutdown(wait=False)
        if self.sent is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(self.sent), TEARDOWN_SECONDS)

    def transition(self, key, start, finish, **kwargs):
        # long-running: a task that seceded (worker_client, get_client) finishes from there
        if finish != "memory" or start not in ("executing", "long-running"):
            return
        ts = self.worker.state.tasks.get(key)
        if ts is None or not ts.annotations or ANNOTATION not in ts.annotations or key not in self.worker.data:
            return
        value = self.worker.data[key]
        if _fingerprinted_at_once(value):
            self.fingerprinted.append(_fingerprint(key, value))
        else:
            self.batch.append((key, value))
        if not self.due:
            self.due = True
            quiet_for = time.monotonic() - self.handed_off
            if quiet_for >= BATCH_SECONDS:
                self._hand_off()
            else:
                self.worker.loop.call_later(BATCH_SECONDS - quiet_for, self._hand_off)

    def _hand_off(self):
        self.due, self.handed_off = False, time.monotonic()
        fingerprinted, self.fingerprinted = self.fingerprinted, []
        batch, self.batch = self.batch, []
        if fingerprinted:
            self.worker.log_event(TOPIC, {"fingerprints": fingerprinted})
        if batch:
            self.sent = self.executor.submit(self._send, batch)

    def _send(self, batch):
        results = [_fingerprint(key, value) for key, value in batch]
        self.worker.log_event(TOPIC, {"fingerprints": results})
