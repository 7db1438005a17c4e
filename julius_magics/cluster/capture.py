"""Scheduler-side capture of the work that reaches a Dask cluster.

While capture is on, a scheduler plugin (:class:`CapturePlugin`, name
``"julius-capture"``, in :mod:`.capture_plugin`) journals, in arrival order:

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

Replaying the captured events on another cluster is :mod:`.resubmit`'s job.

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
``{"kind": "worker_joined", "seq", "time", "worker", "workers"}``
    a worker that joined while capturing (its environment is still to record);
    ``workers``: how many the scheduler then had.
``{"kind": "worker_left", "seq", "time", "worker", "workers"}``
    a worker that left while capturing (retired by ``scale`` or ``adapt``, or lost).
``{"kind": "unreproducible", "seq", "time", "client", "what", "name", "op", "reason"}``
    work a replay cannot repeat (an actor: its method calls never reach the
    scheduler): a recording holding one is *partial*.
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

import uuid

import cloudpickle
from distributed.diagnostics.plugin import SchedulerPlugin

from ..errors import JuliusError
from .capture_plugin import FLUSH_PREFIX, PLUGIN_NAME, CapturePlugin, FingerprintWorkerPlugin, key_text

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
    "key_text",
]


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
