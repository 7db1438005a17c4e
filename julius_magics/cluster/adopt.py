"""Adopting every Dask client the kernel creates or connects to while recording.

A notebook makes its own clusters (``client = Client(LocalCluster())``,
``Client("tcp://...")``); none of them goes through julius's session.  Dask's
supported hook for this is the *client preload*: while adoption is enabled,
the config ``distributed.client.preload`` names this module, and every
``Client`` runs :func:`dask_setup` when it has connected.  That installs the
capture plugin on the client's scheduler (``client.register_plugin``), turns
capture on for the client, and hands an :class:`Adopted` to the kernel-side
callback (the recorder).  Clients made before adoption was enabled, still
running, are adopted by :func:`adopt_existing`.  ``distributed.wait``, which
no scheduler sees, tells an adopted client's scheduler the keys it waited for,
as a gather would: a replay sends the graphs that came next after them.

Kernel-facing API::

    enable_adoption(on_adopted)       # on_adopted(Adopted) for each new client
    adopted = adopt_existing(on_adopted)   # clients already running
    disable_adoption()
    spec = describe_cluster(client)   # workers, threads, memory, processes, BLAS/OpenMP threads
    ThreadpoolLimits(blas=2, openmp=2)   # worker plugin: the recorded thread counts, on replay
    client, cluster, differences = start_like(spec, n_workers=None, address=None)   # replay's cluster

``on_adopted`` runs in the client's event-loop thread: it must be quick and must
not call the client's blocking methods (queue the client, look at it later).

A scheduler that refuses the plugin (``distributed.scheduler.pickle: False``,
a scheduler without julius installed) leaves ``Adopted.captured`` False with
the reason; a one-line warning is printed to stderr.

Work a replay cannot reproduce is noted, never dropped: each adopted client's
scheduler calls that feed a ``Queue``, ``Variable``, ``Event``, ``Lock``,
``Semaphore`` or ``MultiLock`` from the kernel (outside any graph) are noted
and handed out by :func:`drain_unreproducible`.  They are watched on the
kernel's side, on the adopted client's scheduler connection: the scheduler's
``event_set``, ``semaphore_acquire`` and ``multi_lock_acquire`` handlers are
not told which client calls them (distributed 2026.8), and the same calls from
tasks (through their workers' clients, never adopted) are part of the graphs,
which reproduce them.  So is each compute that Dask's local scheduler runs in the
kernel while no Client exists: no cluster sees it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import sys
import threading

import dask
import dask.callbacks
import distributed.client
from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import JuliusError
from ..recording.redaction import scrub_text
from .capture import PLUGIN_NAME, CapturePlugin, _has_plugin, _set_capturing
from .capture_plugin import WAITED_TOPIC, key_text

__all__ = ["Adopted", "PRELOAD", "enable_adoption", "disable_adoption", "adoption_enabled", "adopt",
           "adopt_existing", "dask_setup", "dask_teardown", "describe_cluster", "describe_cluster_async",
           "worker_addresses", "process_facts", "threadpool_counts", "ThreadpoolLimits", "SHAPE", "shape_differences",
           "start_like", "drain_unreproducible", "unreproducible_note"]

PRELOAD = __name__
_CONFIG = "distributed.client.preload"
_STATE = {"on_adopted": None, "previous": None, "worker_plugins": (), "on_setup": None, "on_teardown": None}
_WAIT = distributed.client._wait   # what ``distributed.wait`` runs; while adopting, through :func:`_told_wait`
_lock = threading.Lock()
_NOTES: dict = {}   # (address, what, name) -> unreproducible note, until drained


class _QuietAboutUs(logging.Filter):
    """Leaves out ``distributed.preloading``'s INFO lines about this module: a notebook being recorded would
    show two on stderr at each ``Client`` it makes (other preloads' lines stay)."""

    def filter(self, record):
        return record.levelno > logging.INFO or PRELOAD not in record.getMessage()


_QUIET = _QuietAboutUs()

# scheduler operations that feed coordination objects: what they feed and why a replay cannot repeat it
_FEEDS = {
    "queue_put": ("Queue", "items put into it from the kernel reach tasks outside any graph"),
    "variable_set": ("Variable", "set from the kernel: tasks that read it see a value outside any graph"),
    "event_set": ("Event", "set or cleared from the kernel: tasks that wait on it follow the kernel's timing"),
    "event_clear": ("Event", "set or cleared from the kernel: tasks that wait on it follow the kernel's timing"),
    "semaphore_acquire": ("Semaphore", "acquired from the kernel: tasks that wait on it follow the kernel's timing"),
    "multi_lock_acquire": ("MultiLock", "acquired from the kernel: tasks that wait on it follow the kernel's timing"),
}
LOCAL_COMPUTE = ("it ran on Dask's local scheduler in the kernel, with no Client: no cluster saw its graph, so it is "
                 "not recorded (make a Client, or run `%cluster start`, before computing)")
ASYNCHRONOUS = ("an asynchronous client: the recorder cannot drain it from the kernel's thread, so its work is "
                "recorded only if it closes before the recording stops, and never in step with the kernel's")


def unreproducible_note(what, name, reason, address=None, client=None, op=None) -> dict:
    """The data of an ``unreproducible`` step: what it was, its name, why a replay cannot repeat it."""
    return {"what": what, "name": name, "reason": reason, "address": address, "client": client, "op": op}


def _note(note):
    with _lock:
        key = (note["address"], note["what"], note["name"])
        if key in _NOTES:
            _NOTES[key]["count"] += 1
        else:
            _NOTES[key] = {**note, "count": 1}


def drain_unreproducible() -> list[dict]:
    """The unreproducible work noted since the last call (:func:`unreproducible_note` dicts, with ``count``)."""
    with _lock:
        notes = list(_NOTES.values())
        _NOTES.clear()
    return notes


class _LocalComputes(dask.callbacks.Callback):
    """Notes each compute that Dask's local schedulers (threads, processes, sync) run while adopting.

    Only without any Client: with one, ``dask.compute`` goes to its cluster, and a local
    compute is one Dask makes for itself while building a graph.
    """

    def _start(self, dsk):
        from distributed.client import _get_global_client

        if _get_global_client() is None:
            _note(unreproducible_note("local compute", "dask.compute without a Client", LOCAL_COMPUTE))


_LOCAL_COMPUTES = _LocalComputes()


def _watch_coordination(client):
    """Note the kernel's own calls that feed coordination objects, on ``client``'s scheduler connection."""
    rpc, address = client.scheduler, _address(client)
    if vars(rpc).get("_julius_watched"):   # not getattr: the rpc answers every name with a remote call
        return
    leases = {}   # semaphore name -> max leases (a Lock is a Semaphore of one lease)

    def watched(op, send):
        def call(*args, **kwargs):
            what, reason = _FEEDS[op] if op in _FEEDS else (None, None)
            if op == "semaphore_register":
                leases[kwargs.get("name")] = kwargs.get("max_leases")
            elif what is not None and _STATE["on_adopted"] is not None:
                name = kwargs.get("name") or ", ".join(map(str, kwargs.get("locks") or ()))
                if what == "Semaphore" and leases.get(name) == 1:
                    what = "Lock"
                _note(unreproducible_note(what, name, reason, address, client.id, op))
            return send(*args, **kwargs)

        return call

    for op in (*_FEEDS, "semaphore_register"):
        setattr(rpc, op, watched(op, getattr(rpc, op)))
    rpc._julius_watched = True


@dataclasses.dataclass
class Adopted:
    """A client adopted for capture.

    Attributes
    ----------
    client : distributed.Client
    address : str
        Its scheduler's address.
    captured : bool
        Whether the capture plugin runs on that scheduler for this client.
    reason : str or None
        Why not, when ``captured`` is False.
    asynchronous : bool
        An asynchronous client: its work is captured on the scheduler like any other,
        but the recorder cannot call it from the kernel's thread.
    extra : dict
        What each of :func:`enable_adoption`'s ``on_setup`` returned, by name, once it is done
        (:meth:`set_up` waits for them); a name is missing when its call failed.
    """

    client: object
    address: str
    captured: bool
    reason: str | None = None
    asynchronous: bool = False
    extra: dict = dataclasses.field(default_factory=dict)
    pending: dict = dataclasses.field(default_factory=dict)   # name -> the task running it, in the client's loop

    async def set_up(self, *names) -> dict:
        """Wait (in the client's loop) for the ``on_setup`` calls named (all by default), which run in
        the background from adoption on."""
        waited = [task for name, task in self.pending.items() if not names or name in names]
        if waited:   # not gather: a wait cut short (a timeout) must not cancel them for the others
            await asyncio.wait(waited)
        return self.extra

    def setting_up(self, *names) -> bool:
        """Whether any of the ``on_setup`` calls named (all by default) is not done yet."""
        return any(not task.done() for name, task in self.pending.items() if not names or name in names)


def adoption_enabled() -> bool:
    """Whether new clients are adopted (:func:`enable_adoption` was called and not undone)."""
    return _STATE["on_adopted"] is not None


def enable_adoption(on_adopted, worker_plugins=(), on_setup=None, on_teardown=None) -> None:
    """Adopt every ``Client`` made from now on in this process; ``on_adopted(Adopted)`` is told of each.

    ``worker_plugins`` are registered on each adopted cluster before its client is handed
    back (so its workers note input files from its first graph on).  Adds this module to
    the ``distributed.client.preload`` config (kept as it was otherwise).

    ``on_setup`` is ``{name: coroutine function}``; each ``on_setup[name](client)`` runs in
    the client's loop from its adoption on, in the background, one after the other in that
    order (they share the workers' time); its result lands in ``Adopted.extra[name]`` as soon
    as it is done (:meth:`Adopted.set_up` waits for the ones named).
    ``on_teardown(client)`` runs in the client's loop when it
    closes (``dask_teardown``, while its comms still work: the last chance to drain a
    cluster the notebook closes itself).
    """
    with _lock:
        if _STATE["on_adopted"] is None:
            _NOTES.clear()   # a recording's notes are its own
        _STATE["worker_plugins"] = tuple(worker_plugins)
        _STATE["on_setup"], _STATE["on_teardown"] = on_setup, on_teardown
        if _STATE["on_adopted"] is None:
            current = dask.config.get(_CONFIG, default=[]) or []
            current = [current] if isinstance(current, str) else list(current)
            _STATE["previous"] = current
            if PRELOAD not in current:
                dask.config.set({_CONFIG: [*current, PRELOAD]})
            logging.getLogger("distributed.preloading").addFilter(_QUIET)   # once: a set of filters
            _LOCAL_COMPUTES.register()
            distributed.client._wait = _told_wait
        _STATE["on_adopted"] = on_adopted


def disable_adoption() -> None:
    """Stop adopting new clients; the preload config is restored."""
    with _lock:
        if _STATE["on_adopted"] is None:
            return
        _STATE["on_adopted"] = None
        _LOCAL_COMPUTES.unregister()
        distributed.client._wait = _WAIT
        previous = _STATE["previous"] or []
        dask.config.set({_CONFIG: [p for p in previous if p != PRELOAD]})
        _STATE["worker_plugins"] = ()
        _STATE["on_setup"] = _STATE["on_teardown"] = None


async def _told_wait(fs, *args, **kwargs):
    """``distributed.wait`` while adopting, which its scheduler never sees: the keys that were waited for
    are told to it, so that a replay sends the graphs that come next after them, as after a gather."""
    done_and_not = await _WAIT(fs, *args, **kwargs)
    waited = {}
    for future in done_and_not.done:
        if getattr(future.client, "_julius_adopted", False):
            waited.setdefault(future.client, []).append(key_text(future.key))
    for client, keys in waited.items():
        try:   # awaited: the next graph the kernel sends reaches the scheduler after this
            await client.scheduler.log_event(topic=WAITED_TOPIC, msg={"keys": keys})
        except Exception:   # never keep a notebook's wait from returning
            pass
    return done_and_not


def _skipped(client) -> bool:
    # clients tasks make (get_client, worker_client) belong to the graph that made them
    return client.id.startswith("Client-worker-") or getattr(client, "_julius_no_adopt", False)


def _refused(client, error) -> Adopted:
    reason = (f"the scheduler at {_address(client)} refused julius's capture plugin "
              f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else 'no reason given'})")
    print(f"julius: warning: {scrub_text(reason)}; its work is not recorded (the recording will be partial)",
          file=sys.stderr)   # an address or an error may hold a credential
    return Adopted(client, _address(client), False, reason, bool(client._asynchronous))


def _address(client) -> str:
    try:
        return client.scheduler.address
    except Exception:
        return "?"


async def dask_setup(client):
    """The client preload: install capture on ``client``'s scheduler and tell the callback.

    Runs in the client's event loop, after it connected (``Client.__init__`` waits for it),
    so no graph of this client is sent before capture is on.
    """
    on_adopted = _STATE["on_adopted"]
    if on_adopted is None or _skipped(client):
        return
    try:
        if not await client.run_on_scheduler(_has_plugin):
            await client.register_plugin(CapturePlugin(capturing=True, clients=[client.id]), name=PLUGIN_NAME)
        await client.run_on_scheduler(_set_capturing, True, client.id)
        for plugin in _STATE["worker_plugins"]:
            await client.register_plugin(plugin)
        _watch_coordination(client)
        adopted = Adopted(client, _address(client), True, None, bool(client._asynchronous))
        if adopted.asynchronous:
            _note(unreproducible_note("asynchronous client", client.id, ASYNCHRONOUS, adopted.address, client.id))
        after = None
        for name, function in (_STATE["on_setup"] or {}).items():   # not awaited: Client() need not wait
            after = adopted.pending[name] = asyncio.ensure_future(_set_up(adopted, name, function, after))
    except Exception as error:
        adopted = _refused(client, error)
    client._julius_adopted = adopted.captured
    on_adopted(adopted)


async def _set_up(adopted, name, function, after):
    if after is not None:   # after the one before (done, failed or cancelled): they share the workers' time
        await asyncio.wait([after])
    try:
        adopted.extra[name] = await function(adopted.client)
    except Exception:   # what it would have told is asked again later, of a live cluster
        pass


async def dask_teardown(client):
    """The client preload's end: let the recorder drain the cluster before the client goes."""
    on_teardown = _STATE["on_teardown"]
    if on_teardown is not None and getattr(client, "_julius_adopted", False):
        try:
            await on_teardown(client)
        except Exception as error:   # never keep a notebook's client from closing
            print(f"julius: warning: could not capture the end of {scrub_text(f'{_address(client)}: {error}')}",
                  file=sys.stderr)


def adopt(client, on_adopted=None, worker_plugins=None) -> Adopted:
    """Adopt a running (synchronous) client from the kernel's thread: capture on, callback told.

    ``worker_plugins`` default to those given to :func:`enable_adoption`.
    """
    try:
        if not client.run_on_scheduler(_has_plugin):
            client.register_plugin(CapturePlugin(capturing=True, clients=[client.id]), name=PLUGIN_NAME)
        client.run_on_scheduler(_set_capturing, True, client.id)
        for plugin in _STATE["worker_plugins"] if worker_plugins is None else worker_plugins:
            client.register_plugin(plugin)
        _watch_coordination(client)
        adopted = Adopted(client, _address(client), True)
        client._julius_adopted = True
    except Exception as error:
        adopted = _refused(client, error)
    if on_adopted is not None:
        on_adopted(adopted)
    return adopted


def adopt_existing(on_adopted=None) -> list[Adopted]:
    """Adopt the clients of this process made earlier and still running (not asynchronous ones)."""
    from distributed import Client

    adopted = []
    for client in list(Client._instances):
        if client.status == "running" and not client._asynchronous and not _skipped(client):
            adopted.append(adopt(client, on_adopted))
    return adopted


# --- the cluster's shape ------------------------------------------------------------
def threadpool_counts() -> dict:
    """BLAS and OpenMP thread counts of this process (threadpoolctl), after loading NumPy if installed.

    Returns
    -------
    dict
        ``{"blas": n or None, "openmp": n or None, "libraries": [{"api", "library", "version", "threads"}]}``
    """
    import importlib.util

    from threadpoolctl import threadpool_info

    if "numpy" not in sys.modules and importlib.util.find_spec("numpy") is not None:
        import numpy  # noqa: F401  (loads the BLAS threadpoolctl reports)
    libraries = [{"api": lib.get("user_api"), "library": lib.get("internal_api"), "version": lib.get("version"),
                  "threads": lib.get("num_threads")} for lib in threadpool_info()]
    counts = {}
    for api in ("blas", "openmp"):
        threads = [lib["threads"] for lib in libraries if lib["api"] == api]
        counts[api] = max(threads) if threads else None
    return {**counts, "libraries": libraries}


def process_facts() -> dict:
    """Where and how this process runs: host, pid, working directory, thread pools."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "cwd": os.getcwd(), "threadpools": threadpool_counts()}


def worker_addresses(dask_scheduler) -> list:
    """The addresses of the scheduler's workers, sorted (``client.run_on_scheduler``)."""
    return sorted(dask_scheduler.workers)


def describe_cluster(client) -> dict:
    """The spec of ``client``'s cluster, enough to build one of the same shape on replay.

    Returns
    -------
    dict
        ``address``; ``cluster`` (the class of the cluster object this kernel made, or
        None for a connected one); ``n_workers``; ``threads_per_worker`` (the most);
        ``memory_limit`` (bytes per worker, the least; 0 when unlimited);
        ``processes`` (False when the workers run in the kernel's process); ``nanny``;
        ``workers``: ``{address: {nthreads, memory_limit, host, pid, cwd, threadpools}}``;
        ``kernel``: the kernel's own facts.
    """
    return _spec(client, client.scheduler_info(n_workers=-1), client.run(process_facts))


async def describe_cluster_async(client) -> dict:
    """:func:`describe_cluster` from inside the client's event loop (a preload)."""
    import inspect

    try:
        info = await client.scheduler.identity(n_workers=-1)
    except TypeError:
        info = await client.scheduler.identity()
    if inspect.isawaitable(info):
        info = await info
    return _spec(client, info, await client.run(process_facts))


def _spec(client, info, facts) -> dict:
    kernel = process_facts()
    workers = {}
    for address, w in sorted(info["workers"].items()):
        workers[address] = {"nthreads": w.get("nthreads"), "memory_limit": w.get("memory_limit") or 0,
                            "nanny": bool(w.get("nanny")), **facts.get(address, {})}
    threads = [w["nthreads"] for w in workers.values() if w["nthreads"]]
    limits = [w["memory_limit"] for w in workers.values()]
    cluster = getattr(client, "cluster", None)
    return {
        "address": info.get("address") or _address(client),
        "cluster": type(cluster).__name__ if cluster is not None else None,
        "n_workers": len(workers),
        "threads_per_worker": max(threads) if threads else 1,
        "memory_limit": min(limits) if limits else 0,
        "processes": not any(w.get("pid") == kernel["pid"] and w.get("host") == kernel["host"] for w in workers.values()),
        "nanny": any(w["nanny"] for w in workers.values()),
        "workers": workers,
        "kernel": kernel,
    }


class ThreadpoolLimits(WorkerPlugin):
    """Worker plugin: set BLAS and OpenMP thread counts (threadpoolctl), as recorded.

    Worker processes started by a nanny get one BLAS thread by default; a recording
    made with threads in the kernel's process had more, and float results differ in
    the last bits when the counts differ.  ``None`` leaves a count alone.
    """

    name = "julius-threadpools"

    def __init__(self, blas=None, openmp=None):
        self.blas, self.openmp = blas, openmp

    def setup(self, worker):
        from threadpoolctl import threadpool_limits

        threadpool_counts()   # loads NumPy's BLAS first, so that the limit applies to it
        limits = {api: n for api, n in (("blas", self.blas), ("openmp", self.openmp)) if n}
        self._limits = threadpool_limits(limits=limits) if limits else None


SHAPE = ("workers in processes", "threads per worker")   # how the cluster runs tasks, beyond the thread pools


def shape_differences(recorded: dict, actual: dict) -> dict:
    """How a cluster computes, where ``actual`` differs from ``recorded`` (two :func:`describe_cluster` specs).

    Threads or processes, threads per worker and the workers' BLAS/OpenMP thread counts
    change the last bits of floating-point reductions; the worker count does not.

    Returns
    -------
    dict
        ``{name: [recorded, actual]}``, as :func:`~julius_magics.recording.environment.env_diff`'s
        ``threads`` section.

    Examples
    --------
    >>> shape_differences({"processes": False, "threads_per_worker": 2, "workers": {}},
    ...                   {"processes": True, "threads_per_worker": 2, "workers": {}})
    {'workers in processes': [False, True]}
    """
    def pool(spec, api):
        counts = [(w.get("threadpools") or {}).get(api) for w in (spec.get("workers") or {}).values()]
        return max((c for c in counts if c), default=None)

    pairs = {SHAPE[0]: (recorded.get("processes"), actual.get("processes")),
             SHAPE[1]: (recorded.get("threads_per_worker"), actual.get("threads_per_worker")),
             **{f"workers' {api.replace('blas', 'BLAS').replace('openmp', 'OpenMP')} threads": (pool(recorded, api), pool(actual, api))
                for api in ("blas", "openmp")}}
    return {name: [old, new] for name, (old, new) in pairs.items() if old is not None and new is not None and old != new}


def client_at(address, set_as_default=False):
    """A client of the Dask scheduler at ``address``; one clear error when it cannot be reached."""
    from distributed import Client

    try:
        return Client(address, set_as_default=set_as_default, timeout="10s")
    except (OSError, TimeoutError, ValueError) as e:   # refused, timed out, or not an address
        raise JuliusError(f"cannot connect to the Dask scheduler at {address}: {e}") from None


def start_like(spec, n_workers=None, address=None):
    """A client of a cluster shaped like a recorded ``spec`` (:func:`describe_cluster`).

    A fresh ``LocalCluster`` with the recorded workers (or ``n_workers``), threads per
    worker, memory limit and processes-or-threads, or the existing cluster at ``address``;
    either way the recorded BLAS/OpenMP thread counts are set on its workers.

    Returns
    -------
    (distributed.Client, LocalCluster or None, dict)
        The client (not the default one), the cluster to close (None at ``address``)
        and what could not be matched (:func:`shape_differences`: e.g. other thread counts).
    """
    import logging

    from distributed import Client, LocalCluster

    if address:
        client, cluster = client_at(address), None
        client._julius_no_adopt = True
    else:
        processes = spec.get("processes", True)
        kwargs = {"n_workers": n_workers or spec.get("n_workers") or 1,
                  "threads_per_worker": spec.get("threads_per_worker") or 1,
                  "processes": processes, "dashboard_address": ":0", "silence_logs": logging.CRITICAL}
        if spec.get("memory_limit"):
            kwargs["memory_limit"] = spec["memory_limit"]
        cluster = LocalCluster(**kwargs)
        try:
            client = Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
    counts = [w.get("threadpools") or {} for w in (spec.get("workers") or {}).values()]
    blas = max((c.get("blas") or 0 for c in counts), default=0) or None
    openmp = max((c.get("openmp") or 0 for c in counts), default=0) or None
    if blas or openmp:
        client.register_plugin(ThreadpoolLimits(blas=blas, openmp=openmp))
    return client, cluster, shape_differences(spec, describe_cluster(client))
