"""Replay of captured Dask work on another cluster.

The events that :func:`.capture.drain_capture` journals (``graph``, ``scatter``,
``run``) are sent again, as they were, to a client's cluster (usually a fresh
one); the wanted keys of each graph are fingerprinted where they are computed,
so that the replayed results can be compared with the recorded fingerprints.

Kernel-facing API::

    replay_graph(other_client, event) -> {key: fingerprint}
    submit_graph(other_client, event, hold=True) -> ({key: future}, held futures)
    batch = GraphBatch(other_client); batch.submit(event); batch.gather(); batch.release()
    replay_scatter(other_client, event, values) -> futures
    replay_run(other_client, event)

Only events of a verified recording may be replayed: their payloads are
unpickled here.
"""

from __future__ import annotations

import asyncio
import pickle
import time
import uuid

import cloudpickle

from ..errors import JuliusError
from ..fingerprint import error_fingerprint_and_describe, fingerprint_and_describe
from .capture_plugin import INTERNAL_PREFIX, _key_from_text, key_text

__all__ = ["submit_graph", "replay_graph", "GraphBatch", "replay_scatter", "replay_run"]


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
    return _submit(client, event, _captured(event), hold=hold)


def _captured(event) -> dict:
    """``{"keys", "specs"}`` of a captured graph event, checked to be replayable."""
    if event.get("kind") != "graph" or not event.get("specs"):
        raise JuliusError(f"Captured graph {event.get('seq')} cannot be replayed: "
                          + (event.get("dropped") or "it has no run specs") + ".")
    captured = cloudpickle.loads(event["specs"])
    scattered = set(event.get("scattered") or ())
    missing = [key_text(k) for k in captured["keys"] if k not in captured["specs"] and key_text(k) not in scattered]
    if missing:
        raise JuliusError(f"Captured graph {event.get('seq')} cannot be replayed: no run spec for {', '.join(missing[:5])}.")
    return captured


def _submit(client, event, captured, keys=None, hold=False, needed=None):
    """Send ``keys`` (default: all) of a captured graph, with the tasks they need only (``needed``, when
    the caller has them: :func:`_needed`)."""
    from dask.task_spec import Task, TaskRef

    keys = captured["keys"] if keys is None else keys
    specs = captured["specs"]
    if needed is None and keys is not captured["keys"]:
        needed = _needed(specs, keys)
    graph = dict(specs) if needed is None else dict(needed)
    targets = {}
    run_id = uuid.uuid4().hex  # fresh keys: a replayed graph may be replayed again on the same cluster
    for i, key in enumerate(keys):
        fp_key = f"{INTERNAL_PREFIX}replay-fingerprint-{run_id}-{i}"
        graph[fp_key] = Task(fp_key, fingerprint_and_describe, TaskRef(key))
        targets[fp_key] = key_text(key)
    wanted = list(targets) + ([k for k in keys if k in specs] if hold else [])
    futures = client.get(graph, wanted, sync=False)
    return dict(zip(targets.values(), futures)), futures[len(targets):]


def _needed(specs, keys) -> dict | None:
    """The run specs ``keys`` need, theirs and their dependencies' (those in ``specs``); None when some spec
    does not tell what it needs (then all may be)."""
    needed, frontier = {}, [k for k in keys if k in specs]
    while frontier:
        key = frontier.pop()
        if key not in needed:
            needed[key] = specs[key]
            dependencies = getattr(specs[key], "dependencies", None)
            if dependencies is None:   # not a task spec: no way to tell what it needs
                return None
            frontier.extend(d for d in dependencies if d in specs and d not in needed)
    return needed


def _segments(event, captured) -> list[tuple[list, set, float | None]]:
    """``[(keys, fetched before, when sent)]``: a merged event's graphs, cut where the client had fetched
    results first (``when sent`` is None in recordings that did not note it)."""
    starts = {start[0]: start[1:] for start in event.get("after") or ()}
    segments = [([], set(), event.get("time"))]
    for key in captured["keys"]:
        start = starts.get(key_text(key))
        if start is not None:
            segments.append(([], set(start[0]), start[1] if len(start) > 1 else None))
        segments[-1][0].append(key)
    return [segment for segment in segments if segment[0]]


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


def _failed(error) -> str:
    return f"the graph failed on replay: {type(error).__name__}: {error}"


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
        self.held = []      # futures of the wanted keys, and of their fingerprints once gathered
        self.started = None  # when the first graph of the batch was sent: the batch's compute runs from then

    def __len__(self):
        return len(self.pending)

    def submit(self, event, before=None) -> None:
        """Send a captured graph event; a part of it the client sent after fetching results (its
        ``after``) once those are computed, as the notebook waited for them.

        ``before(sent)`` is called before each part is sent, with the time it was sent when
        recorded (seconds since the epoch, or None).
        """
        if not self.pending:
            self.started = time.monotonic()
        futures = {}
        self.pending.append((event, futures, None))
        try:
            captured = _captured(event)
            for keys, fetched, sent_at in _segments(event, captured):
                # fetched keys that this part depends on, the scheduler waits for itself: sent at once, an
                # as_completed loop's graphs keep their concurrency whatever order their inputs end in here
                needed = _needed(captured["specs"], keys)
                self._wait_for(fetched - {key_text(k) for k in needed} if needed is not None else fetched)
                if before is not None:
                    before(sent_at)
                sent, held = _submit(self.client, event, captured, keys, hold=True, needed=needed)
                futures.update(sent)
                self.held.extend(held)
        except Exception as error:
            self.pending[-1] = (event, None, _failed(error))

    def wait(self) -> None:
        """Wait until every graph sent so far is computed (or failed)."""
        futures = [f for _, fs, _ in self.pending if fs for f in fs.values()]
        if futures:   # their fingerprints: small
            self.client.gather(futures, errors="skip")

    def _wait_for(self, keys) -> None:
        """Wait until those of ``keys`` that this batch computes are computed (or failed)."""
        futures = [f for _, fs, _ in self.pending if fs for k, f in fs.items() if k in keys]
        if futures:   # their fingerprints: small
            self.client.gather(futures, errors="skip")

    def gather(self) -> list:
        """``[(event, {key_text: (fingerprint, description)}, failure)]`` in submission order.

        ``failure`` is None, the text of why the graph could not be submitted, or
        ``{key_text: why}`` for the keys that raised: their result is their error (as
        recorded for a task that raised then), and one failing task of a loop's graph
        fails only its own result.
        One gather for the whole batch: a round trip per graph costs more than a small
        graph computes (500 futures: seconds).  A key that failed is told by its
        future's status once the gather returns.
        """
        submitted = [f for _, futures, _ in self.pending if futures for f in futures.values()]
        self.held.extend(submitted)
        results = self.client.gather(submitted, errors="skip")
        values = dict(zip((f.key for f in submitted if f.status == "finished"), results))
        done = []
        for event, futures, failure in self.pending:
            if futures is None:
                done.append((event, {}, failure))
                continue
            errors = {k: f.exception() for k, f in futures.items() if f.key not in values}
            replayed = {k: tuple(values[f.key]) if f.key in values else error_fingerprint_and_describe(repr(errors[k]))
                        for k, f in futures.items()}
            done.append((event, replayed, {k: _failed(e) for k, e in errors.items()} or None))
        self.pending = []
        return done

    def release(self, keep=frozenset()) -> None:
        """Let the cluster forget the batch's keys, but those in ``keep`` (later graphs reuse them),
        before this returns: a graph submitted again under the same keys (the replay's
        non-determinism re-check) is computed anew."""
        held = [f for f in self.held if key_text(f.key) not in keep]
        self.held = [f for f in self.held if key_text(f.key) in keep]
        if held:
            # Not client.cancel: its recursion over dependents fails on the scheduler
            # (``assert ts.who_wants``, distributed 2026.8) when a held key has dependents
            # nobody wants, as a persisted collection's chunks do, and the client's stream dies.
            for future in held:
                future.release()
            # The releases go out on the client's loop, two callbacks deep: one round trip
            # through it puts them ahead of anything this thread sends next.
            self.client.sync(asyncio.sleep, 0)


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
