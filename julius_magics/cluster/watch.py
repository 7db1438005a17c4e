"""Everything a recorder needs from the Dask clusters of this kernel, in one object.

While recording, :class:`ClusterWatch` adopts every client the kernel creates
or connects to (:mod:`.adopt`), turns capture on for it on its scheduler
(:mod:`.capture`), notes input files in the kernel and on every worker
(:mod:`.inputs`), and hands the recorder plain data at each :meth:`drain`.
One recording may span several clusters in turn; each is described once, when
it is first seen.

Recorder-facing API::

    watch = ClusterWatch(skip=[store_root], sink=sink)
    watch.start(session_client)          # adopt existing clients, note (and snapshot) reads from now on
    for item in watch.drain(): ...       # in order: new clusters, then each cluster's events, then files
    chunks = watch.file_chunks(entry)    # an input not in the store yet: its bytes, read where it was read
    watch.stop(); watch.drain(final=True)

Each item is a dict with ``"kind"``:

- ``"cluster"``: ``spec`` (:func:`.adopt.describe_cluster`), ``client`` (its id),
  ``captured`` and ``reason`` (a scheduler refusing the plugin), ``owned`` (the
  julius session's own cluster), ``handle`` (the client object, not JSON),
  ``environments``: ``{worker address: environment}``, None (not taken), or a
  function that waits for them (a live cluster's, still being taken: call it in a thread);
- the capture events of :func:`.capture.drain_capture` (``graph``, ``run``,
  ``worker_plugin``, ``scatter``, ``fingerprints``, ``dropped``,
  ``worker_joined``, ``worker_left``), each with ``address`` (its scheduler) and ``handle``;
  a ``worker_joined`` item has the worker's ``environment`` (None when it could not be taken);
- ``"files"``: ``inputs``, ``outputs``, ``remote``, ``problems`` as
  :func:`.inputs.drain_reads` returns them, each entry with ``reader``
  (``"kernel"`` or a worker address) and ``address`` (its scheduler, or None);
  ``pending`` (snapshots not done yet: they come in a later drain) and
  ``stats`` (``{reader: stats}``).

Input files are snapshotted where they were read, in the background
(:mod:`.inputs`): a drain hands out those done, and only the final one (or a
closing cluster's) waits for the rest.  With a ``sink`` (the recording's local
store, ``recording.files.BlobSink``) the readers that see it store the bytes
themselves; the others' bytes come through Dask (:meth:`file_chunks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
import threading
import uuid

from . import adopt, capture, inputs

__all__ = ["ClusterWatch", "SNAPSHOT_CHUNK"]

SNAPSHOT_CHUNK = 32 << 20   # bytes of an input fetched from its reader at a time: memory stays bounded
SET_UP_SECONDS = 60   # how long what is taken of a cluster at its adoption (its spec, its environments) may take
SPILL_PREFIX = f"{inputs.TEMP_PREFIX}snapshot-"   # a julius temp name: the file hooks never take it for an input


async def in_a_thread(function, *args):
    """``function(*args)`` for ``client.run``, in a thread of the worker: its event loop stays free for
    its heartbeats and its peers, and for the other runs meanwhile (a drain of its reads may hash files
    or wait for another process's claim; an environment takes 30 ms)."""
    return await asyncio.to_thread(function, *args)


class ClusterWatch:
    """Adopted clusters, their capture and the input files read, for one recording.

    Parameters
    ----------
    skip : iterable of str
        Folders whose files are never inputs (the recording's store, caches).
    hash_remote : bool
        Hash remote inputs that have neither ETag nor version id (reads them once).
    """

    def __init__(self, skip=(), hash_remote=True, worker_environment=None, embed=True, sink=None):
        self.embed = embed
        self.sink = sink           # where readers store the bytes they read (embed only), or None
        self.token = uuid.uuid4().hex   # readers of one host share snapshots of this recording
        self.chunk_size = SNAPSHOT_CHUNK
        self.skip = tuple(str(s) for s in skip if s)
        self.hash_remote = hash_remote
        self.worker_environment = worker_environment   # run on each worker at adoption: {address: env}
        self._final = []         # items drained from clusters while their client closed
        self.clients = {}        # client id -> Adopted, in the order they came
        self.described = set()   # client ids whose cluster item was handed out
        self.owned = set()       # client ids of the julius session
        self._new = []
        self._lock = threading.Lock()
        self.started = False

    # --- adoption --------------------------------------------------------------
    def _on_adopted(self, adopted):
        # in the client's event-loop thread: only note it
        with self._lock:
            if adopted.client.id not in self.clients:
                self.clients[adopted.client.id] = adopted
                self._new.append(adopted)

    def _on_setup(self):
        """What is taken of a cluster at its adoption, in the client's loop (the notebook may close it
        before any drain): its spec (which the first drain waits for), then its workers' environments."""
        on_setup = {"spec": adopt.describe_cluster_async}
        if self.worker_environment is not None:
            on_setup["environments"] = self._take_environments
        return on_setup

    async def _take_environments(self, client):
        return await client.run(in_a_thread, self.worker_environment)

    async def _on_teardown(self, client):
        """The client is closing (its comms still work): drain its cluster now, asynchronously."""
        address = client.scheduler.address
        adopted = self.clients.get(client.id)
        if adopted is not None:   # the cluster as it was adopted, before it goes
            await adopted.set_up()
        others = [a.client for a in self._live() if a.address == address and a.client is not client]
        if others:   # another client of this kernel goes on using that scheduler: drained with it later
            return
        marker = f"{capture.FLUSH_PREFIX}{uuid.uuid4().hex}"
        client.submit(capture._marker, key=marker, pure=False).release()
        events = await client.run_on_scheduler(capture._drain, 10.0, True, [marker])
        scatters = [e for e in events if e["kind"] == "scatter"]
        if scatters:
            keys = [k for e in scatters for k in e.pop("key_objects")]
            where = await client.run_on_scheduler(capture._who_has, keys)
            values = {}
            for key, workers in where.items():
                if workers:
                    got = await client.run(capture._pickled_values, [key], workers=[workers[0]])
                    values.update(got.get(workers[0], {}))
            for event in scatters:
                event["values"] = {t: values[t] for t in event["keys"] if t in values}
                if len(event["values"]) < len(event["keys"]):
                    event["dropped"] = "scattered data was gone before it could be gathered"
            await client.run_on_scheduler(capture._release_pinned, keys)
        reports = await client.run(in_a_thread, inputs.drain_reads, self.hash_remote, True)   # every snapshot done
        spilled = {}
        for worker, report in reports.items():   # the bytes not stored yet too: the workers go with the client
            for entry in report["inputs"] if self.embed else ():
                if not entry.get("stored"):
                    spilled[(worker, entry["abspath"])] = await self._spill(client, worker, entry)
        items = [{**e, "address": address, "handle": None} for e in events]
        files = self._merge([(w, address, r) for w, r in reports.items()])
        for entry in files[0]["inputs"] if files else ():
            if (entry["reader"], entry["abspath"]) in spilled:
                entry["spill"] = spilled[(entry["reader"], entry["abspath"])]
        with self._lock:
            self._final.extend(items + files)
            if adopted is not None:
                adopted.captured_final = True

    def add_client(self, client, owned=False):
        """Adopt ``client`` now (the julius session's own client, or one made before recording)."""
        if owned:
            self.owned.add(client.id)
        if client.id not in self.clients:
            adopt.adopt(client, self._on_adopted)

    def start(self, session_client=None):
        """Adopt the session's client and every running client, note reads, adopt new clients."""
        sink = self.sink if self.embed else None
        inputs.sweep_claims()
        inputs.start_reads(skip=self.skip, sink=sink, token=self.token)
        plugin = inputs.InputsWorkerPlugin(recording=True, skip=self.skip, sink=sink, token=self.token)
        adopt.enable_adoption(self._on_adopted, [plugin], on_setup=self._on_setup(), on_teardown=self._on_teardown)
        if session_client is not None:
            self.add_client(session_client, owned=True)
        adopt.adopt_existing(self._on_adopted)
        self.started = True

    def stop(self):
        """Stop adopting and noting; call :meth:`drain` with ``final`` afterwards for what is left."""
        adopt.disable_adoption()
        inputs.stop_reads()
        for adopted in self._live():
            with contextlib.suppress(Exception):
                adopted.client.register_plugin(inputs.InputsWorkerPlugin(recording=False))
        self.started = False

    def forget(self, client):
        """A client the kernel closed: drain it before calling this."""
        self.clients.pop(client.id, None)

    def _live(self):
        return [a for a in self.clients.values() if a.captured and not a.asynchronous
                and a.client.status == "running"]

    # --- draining ----------------------------------------------------------------
    def drain(self, final=False, timeout=10.0):
        """Everything seen since the last drain, as items (see the module docstring), in order."""
        items = []
        with self._lock:
            new, self._new = self._new, []
        for adopted in new:
            items.append(self._describe(adopted))
        with self._lock:
            closed, self._final = self._final, []
        items.extend(closed)
        by_scheduler = {}
        for adopted in self._live():
            by_scheduler.setdefault(adopted.address, []).append(adopted.client)
        for address, clients in by_scheduler.items():
            first, *others = clients
            try:
                events = capture.drain_capture(first, timeout=timeout, final=final, also_flush=others)
            except Exception as error:   # a cluster that went away: what it held is lost
                items.append({"kind": "dropped", "what": "cluster", "keys": [], "address": address,
                              "reason": f"the scheduler at {address} could not be drained: {type(error).__name__}: {error}"})
                continue
            self._take_joined_environments(first, events)
            for event in events:
                items.append({**event, "address": address, "handle": first})
        items.extend(self._files(by_scheduler, wait=final))
        return items

    def _describe(self, adopted):
        item = {"kind": "cluster", "client": adopted.client.id, "captured": adopted.captured,
                "reason": adopted.reason, "owned": adopted.client.id in self.owned, "address": adopted.address,
                "handle": adopted.client, "spec": None}
        item["environments"] = adopted.extra.get("environments")
        live = adopted.captured and not adopted.asynchronous and adopted.client.status == "running"
        if adopted.extra.get("spec") and not live:   # closed already: as it was when adopted
            item["spec"] = adopted.extra["spec"]
        elif live:
            try:
                item["spec"] = self._spec(adopted)
                if self.worker_environment is not None:
                    item["environments"] = functools.partial(self._environments, adopted, set(item["spec"]["workers"]))
            except Exception as error:
                item["captured"], item["reason"] = False, f"the cluster could not be described: {error}"
        elif adopted.asynchronous and adopted.captured:
            item["reason"] = "an asynchronous client: its graphs are captured, but the kernel cannot replay its own awaits"
        return item

    @staticmethod
    def _spec(adopted):
        """A live adopted cluster's spec, as it is now: the one taken at its adoption while it has the
        same workers (asking each worker again took the end of the cell that made the cluster 20 -
        35 ms), else taken now (workers that joined since it connected; a client adopted from the
        kernel's thread)."""
        if adopted.setting_up("spec"):
            adopted.client.sync(adopted.set_up, "spec", callback_timeout=SET_UP_SECONDS)
        spec = adopted.extra.get("spec")
        if spec is not None and adopted.client.run_on_scheduler(adopt.worker_addresses) == sorted(spec["workers"]):
            return spec
        return adopt.describe_cluster(adopted.client)

    def _environments(self, adopted, workers):
        """``{address: environment}`` of ``workers`` of an adopted cluster: those taken since its
        adoption (in the background), the others now.  It waits for them: call it in a thread."""
        if adopted.setting_up("environments"):
            adopted.client.sync(adopted.set_up, "environments", callback_timeout=SET_UP_SECONDS)
        taken = dict(adopted.extra.get("environments") or {})
        missing = sorted(set(workers) - set(taken))
        if missing:
            taken.update(adopted.client.run(in_a_thread, self.worker_environment, workers=missing))
        return taken

    def _take_joined_environments(self, client, events):
        """Each ``worker_joined`` event's ``environment``: a cluster scaled up by ten asks its ten new
        workers at once (one after the other, a cell's end waited 0.05 s a worker)."""
        joined = [e for e in events if e["kind"] == "worker_joined"]
        if not joined or self.worker_environment is None:
            return
        try:   # a worker gone since gives its exception, not an environment
            taken = client.run(in_a_thread, self.worker_environment, workers=sorted({e["worker"] for e in joined}),
                               on_error="return")
        except Exception:   # the cluster itself went: the steps say their environment is unknown
            taken = {}
        for event in joined:
            env = taken.get(event["worker"])
            event["environment"] = env if isinstance(env, dict) else None

    def _files(self, by_scheduler, wait=False):
        reports = [("kernel", None, inputs.drain_reads(self.hash_remote, wait))]
        for address, clients in by_scheduler.items():
            try:
                for worker, report in clients[0].run(in_a_thread, inputs.drain_reads, self.hash_remote, wait).items():
                    reports.append((worker, address, report))
            except Exception:
                continue
        if wait and not self.started:   # the last drain, done everywhere: the hosts' claims go
            for clients in by_scheduler.values():
                with contextlib.suppress(Exception):
                    clients[0].run(inputs.end_claims)
            inputs.end_claims()
        return self._merge(reports)

    def _merge(self, reports):
        merged = {"kind": "files", "inputs": [], "outputs": [], "remote": [], "problems": [], "pending": 0,
                  "stats": {}}
        for reader, address, report in reports:
            for part in ("inputs", "outputs", "remote", "problems"):
                for entry in report[part]:   # a threads cluster's workers read in the kernel's own process
                    ours = entry.get("pid") == os.getpid()
                    merged[part].append({**entry, "reader": "kernel" if ours else reader,
                                         "address": None if ours else address})
            merged["pending"] += report.get("pending", 0)
            merged["stats"][reader] = report.get("stats", {})
        snapshotted = any(s.get("passes") or s.get("shared") for s in merged["stats"].values())
        return [merged] if snapshotted or any(merged[p] for p in ("inputs", "outputs", "remote", "problems",
                                                                 "pending")) else []

    async def _spill(self, client, worker, entry):
        """Copy an input from a closing cluster's worker to a kernel temp file, a chunk at a time.

        Returns the file's path, or the error that stopped the copy (the recorder names it).
        """
        fd, path = tempfile.mkstemp(prefix=SPILL_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                for offset in range(0, max(entry["size"], 1), self.chunk_size):
                    got = await client.run(inputs.read_file_chunk, entry["abspath"], offset, self.chunk_size,
                                           workers=[worker])
                    f.write(got[worker])
        except Exception as error:
            os.unlink(path)
            return error
        return path

    def file_chunks(self, entry):
        """The bytes of an input entry, in chunks of :attr:`chunk_size`, read where it was read.

        A worker sends them through Dask one chunk at a time (the next one is asked for
        while the kernel writes the last), so a file of any size never sits whole in the
        kernel.  Nothing is checked here: the store checks the SHA-256 before it commits.
        """
        spill = entry.get("spill")
        if isinstance(spill, Exception):   # its cluster closed before the bytes could be copied
            raise spill
        if spill is not None or entry["reader"] == "kernel":   # a local file: the copy, or what the kernel read
            try:
                for offset in range(0, entry["size"], self.chunk_size):
                    yield inputs.read_file_chunk(spill or entry["abspath"], offset, self.chunk_size)
            finally:
                self.discard(entry)
            return
        client = next(a.client for a in self._live() if a.address == entry["address"])

        def ask(offset):
            return client.submit(inputs.read_file_chunk, entry["abspath"], offset, self.chunk_size,
                                 workers=[entry["reader"]], allow_other_workers=False,
                                 key=f"julius-read-input-{uuid.uuid4().hex}")

        offsets = iter(range(0, entry["size"], self.chunk_size))
        pending = None
        try:
            following = next(offsets, None)
            pending = ask(following) if following is not None else None
            while pending is not None:
                following = next(offsets, None)
                current, pending = pending, ask(following) if following is not None else None
                chunk = current.result()
                current.release()
                yield chunk
        finally:
            if pending is not None:
                pending.release()

    def discard(self, entry):
        """Let go of an input's copy taken while its cluster closed (not embedded after all)."""
        spill = entry.pop("spill", None)
        if isinstance(spill, str):
            with contextlib.suppress(OSError):
                os.unlink(spill)

    def file_bytes(self, entry) -> bytes:
        """The whole bytes of a (small) input entry: :meth:`file_chunks` joined."""
        return b"".join(self.file_chunks(entry))
