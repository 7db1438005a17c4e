"""The kernel-side recorder: turns a session's actions into journal steps.

The recorder observes a ``Session`` (``session.observers``) and the cells the
front-end hands it; the scheduler plugin (``cluster.capture``, through
``Session.drain_capture``) supplies what reached the cluster from plain Dask
code.  Before each kernel-side step, the plugin's events are drained so the
journal keeps the order things happened in.

Plain Dask work needs no julius call: a :class:`~julius_magics.cluster.watch.ClusterWatch`
adopts every client the kernel creates or connects to while recording (a client
preload), so each adopted cluster becomes an ``adopted_cluster`` step with its
environment, and its graphs, scatters and the files read anywhere (kernel and
workers) become steps too.  Whatever could not be captured is journaled as a
``dropped`` step and the recording's meta says ``partial`` (with the reasons).

No secret is written (the writer scrubs every step's data, :mod:`.redaction`); a part
(a pickle: it cannot be scrubbed) that holds one is not stored, and says so; a source
a replay runs that held one is stored redacted; either makes the recording partial.

The kinds of steps, their fields and parts are listed in :mod:`.steps`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import getpass
import json
import os
import platform
import sys
import tempfile

import cloudpickle

from ..cluster.adopt import drain_unreproducible
from ..cluster.watch import ClusterWatch
from ..errors import IntegrityError, RecordingError
from ..progress import progress_bar
from ..rules.registry import top_level_names
from .environment import capture_environment, file_path
from .journal import BLOBS
from .redaction import known_secrets, scrub
from .steps import KINDS
from .store import Store

__all__ = ["Recorder", "active_recorder"]

_ACTIVE = {"recorder": None}
HEADLINES = 8   # labelled results kept in the manifest for lists (the latest ones)
ENVIRONMENT_SECONDS = 120   # how long the last drain waits for an environment still being taken
#: What each part holds, for the reason it was not stored.
PART_TEXT = {"specs": "run specs", "function": "function and arguments", "plugin": "plugin",
             "pushed": "pushed values", "targets": "target node references", "jobs": "key job node references"}


def active_recorder():
    """The recorder currently recording in this kernel, or None."""
    return _ACTIVE["recorder"]


def _json_env(env):
    return json.dumps(env, sort_keys=True, default=str).encode()


class Recorder:
    """Records a session into a new recording of ``store``.

    Parameters
    ----------
    session : Session
    name : str
    store : Store or str or None
    data : {"embed", "hash", "embed-remote"}
        Embed the input files' bytes (content-addressed), or only their hashes;
        ``embed-remote`` embeds remote inputs (``s3://``...) too.
    note : str, optional
    with_local_packages : bool
        Build wheels of the kernel's editable and local installs and embed them in the
        recording's first ``environment`` step, for ``julius replay --isolated``.
    """

    def __init__(self, session, name, store=None, data="embed", note=None, with_local_packages=False):
        if data not in ("embed", "hash", "embed-remote"):
            raise ValueError(f"--data must be 'embed', 'hash' or 'embed-remote', not {data!r}")
        if active_recorder() is not None:
            raise RecordingError(f"already recording {active_recorder().name!r}: run `%record stop` first")
        self.session = session
        self.store = Store.coerce(store)
        self.name = name
        self.data_mode = data
        self.with_local_packages = with_local_packages
        self.wheels_embedded = False   # wheels go into the first environment step only
        self.files = {}          # (reader, host, abspath, sha256) -> size of the inputs recorded so far
        self.snapshots = {}      # reader -> its snapshot stats ({passes, bytes, seconds, cpu, shared}: drain_reads)
        self.steps = 0
        # scrubbed before the store sees it (the writer scrubs what comes after)
        self.writer = self.store.create(name, meta=scrub({
            "note": note or "", "data_mode": data, "user": getpass.getuser(), "host": platform.node(),
            "julius_version": _version(),
        }, known_secrets()))
        self.partial = []        # reasons the recording is partial
        self.workers = None      # its first cluster's worker count (the manifest meta's "workers")
        self.headlines = {}      # label -> value of the labelled targets computed (the manifest meta's "headlines")
        self.captured = {"clusters": 0, "graphs": 0, "results": 0, "files": 0, "outputs": 0}
        # Environments are taken in a thread, so that the end of the cell that made a cluster does
        # not wait for them: each comes as a step at the first drain after (the last drain waits).
        self.environment_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="julius-environment")
        self.owed_environments = []   # futures of those environments, in the order their clusters came
        self.file_versions = set()   # (path or URL, hash): a file two processes read is one input file
        # readers that see the store write what they read into it themselves (--data embed)
        self.sink = self.store.files.blob_sink(self.store.files.path(BLOBS)) if data != "hash" else None
        self.watch = ClusterWatch(skip=_own_folders(self.store), hash_remote=True,
                                  worker_environment=capture_environment, embed=data != "hash", sink=self.sink)
        session.observers.append(self.on_event)
        _ACTIVE["recorder"] = self
        try:
            self.watch.start(session.client if session.active else None)
            if session.active:
                self._record_cluster(session.spec)
            for entry in session.history:   # code and rules sent before the recording started
                self._record_entry(entry)
        except BaseException:
            self.abort()   # stays "incomplete" in the store, with what was written
            raise

    # --- steps -------------------------------------------------------------------
    def _step(self, kind, data, parts=None):
        # data are encoded once, as they come (a JSON round trip first took the drain of 20k futures
        # 0.1 s more); those that are not plain JSON (a NumPy number, a tuple key) take that round trip
        try:
            self.steps = self.writer.add_step(kind, data, parts)
        except ValueError:
            self.steps = self.writer.add_step(kind, _jsonable(data), parts)
        return self.steps

    def _drain(self, final=False):
        """Journal what the clusters and the file hooks saw since the last step."""
        with self.writer.batch():   # the drain's steps reach the disk with one flush, not two fsyncs a step
            for item in self.watch.drain(final=final):
                self._record_item(item)
            for note in drain_unreproducible():   # seen in the kernel: coordination objects fed from here, async clients
                self._record_unreproducible(note)
            self._record_environments_taken(wait=final)

    def on_event(self, event, payload):
        """Session observer: one step per action."""
        if event == "cluster":   # the session's own cluster: journaled as a `cluster` step below
            self.watch.add_client(self.session.client, owned=True)
        self._drain()
        if event == "cluster":
            self._record_cluster(payload)
        elif event in ("remote_eval", "rules"):
            self._record_entry(payload["entry"])
        elif event == "dispatch":   # the inputs it read were journaled by the drain just above
            self._record_dispatch(payload)
        elif event == "stop":
            self.session.stop_capture()

    def _record_entry(self, entry):
        """A remote_eval or rules entry of the session's history, as a step."""
        if entry["kind"] == "remote_eval":
            data = {"source": entry["source"], "push": entry["push"], "failed": entry.get("failed", False)}
            parts = self._parts_without_secrets({"pushed": entry["pushed"]} if entry["pushed"] else {}, data)
            seq = self._step("remote_eval", data, parts)
        elif entry["kind"] == "rules":
            data = {"ns": entry["ns"], "source": entry["source"], "failed": entry.get("failed", False),
                    "rules": top_level_names(entry["source"])[1]}
            seq = self._step("rules", data)
        else:
            return
        if data.get("dropped"):
            self._partial(f"{entry['kind']} step {seq}: {data['dropped']}")
        if self.writer.scrub(entry["source"]) != entry["source"]:   # stored redacted: a replay cannot run it
            self._partial(f"{entry['kind']} step {seq}: its source held a credential, stored redacted: "
                          "a replay cannot run it as recorded")

    def _parts_without_secrets(self, parts, data):
        """``parts`` but those that hold a secret (a pickle cannot be scrubbed): not stored, and ``data["dropped"]``
        says why."""
        kept = {}
        for name, value in parts.items():
            where = self.writer.secret_in(value)
            if where is None:
                kept[name] = value
                continue
            why = f"its {PART_TEXT.get(name, name)} hold a credential ({where}); not stored"
            data["dropped"] = f"{data['dropped']}; {why}" if data.get("dropped") else why
        return kept

    def cell_starts(self, source):
        """Learn the secrets a cell's source holds before it runs (the front-end calls this): the pickles of
        the graphs it sends (``submit(f, password="...")``) may hold them, and its source is journaled after."""
        self.writer.scrub(source)

    def add_cell(self, source):
        """A recorded cell's source (the front-end calls this after the cell ran)."""
        with self.writer.batch():   # the drain's steps and the cell's, flushed together
            self._drain()
            if source.strip():
                self._step("cell", {"source": source})

    def _record_item(self, item):
        """One item of :meth:`ClusterWatch.drain` as journal steps."""
        kind = item.pop("kind")
        item.pop("handle", None)   # the client object, not JSON
        if kind == "cluster":
            environments = item.pop("environments", None)
            if item["owned"]:
                return
            self._step("adopted_cluster", item)
            self.captured["clusters"] += 1
            if not item["captured"]:
                self._partial(item["reason"])
            elif item["spec"] is not None:
                self._record_environment(environments or {})
                self._note_workers(item["spec"]["n_workers"])
        elif kind == "files":
            self._record_files(item)
        elif kind == "scatter":
            values = {}
            for text, data in (item.pop("values") or {}).items():
                where = self.writer.secret_in(data)
                if where is None:
                    values[text] = self.writer.add_blob(data)
                else:
                    why = f"scattered data {text} holds a credential ({where}); not stored"
                    item["dropped"] = f"{item['dropped']}; {why}" if item.get("dropped") else why
            self._step("scatter", {**item, "kind": kind, "values": values})
            if item.get("dropped"):
                self._partial(item["dropped"])
        elif kind == "dropped":
            self._step("dropped", {**item, "kind": kind})
            self._partial(item["reason"])
        elif kind == "worker_left":
            self._step("worker_left", {**item, "kind": kind})
        elif kind == "unreproducible":   # seen on the scheduler: actors
            self._record_unreproducible(item)
        elif kind == "worker_joined":
            env = item.pop("environment", None)
            data = {**item, "kind": kind, "environment": self._env_blob(env) if env else None}
            self._step("worker_joined", data)
        else:   # graph, run, worker_plugin, fingerprints
            parts = {name: item.pop(name) for name in KINDS[kind].parts if item.get(name) is not None}
            for name in KINDS[kind].parts:
                item.pop(name, None)
            # checked here, in the kernel, not on the scheduler: its event loop stays as cheap as it was
            kept = self._parts_without_secrets(parts, item)
            if kind != "graph" and len(kept) < len(parts):   # nothing a replay could run: journaled as dropped
                self._step("dropped", {**item, "kind": "dropped", "what": kind, "keys": [], "reason": item["dropped"]})
                self._partial(f"{kind} {item.get('name') or item.get('seq')}: {item['dropped']}")
                return
            self._step(kind, {**item, "kind": kind}, kept)
            if kind == "graph":
                self.captured["graphs"] += item.get("graphs", 1)
                self.captured["results"] += len(item.get("fingerprints", {}))
                if item.get("dropped"):
                    self._partial(f"graph {item['seq']}: {item['dropped']}")
            elif kind == "fingerprints":
                self.captured["results"] += len(item.get("fingerprints", {}))

    def _record_unreproducible(self, note):
        """Work a replay cannot repeat: journaled with what it was and why; the recording is partial."""
        self._step("unreproducible", {**note, "kind": "unreproducible"})
        self._partial(f"{note['what']} {note['name']}: {note['reason']}")

    def _note_workers(self, n_workers):
        """The recording's ``workers``: its first cluster's, the one a replay starts first."""
        if self.workers is None:
            self.workers = n_workers
            self.writer.update_meta(workers=n_workers)

    def _partial(self, reason):
        reason = self.writer.scrub(reason) if reason else reason   # printed at the end, as well
        if reason and reason not in self.partial:
            self.partial.append(reason)
            self.writer.update_meta(partial=True, partial_reasons=self.partial[:20])

    def _record_files(self, item):
        """Inputs read anywhere (snapshotted where read; embedded from there), outputs, remote inputs, problems.

        Readers that see the store stored the bytes themselves (checked here: the blob is
        there with its size before a step lists it); the others' bytes are streamed now,
        once per version, and checked against the SHA-256 before they are stored.
        """
        embed = self.data_mode in ("embed", "embed-remote")
        self.snapshots.update(item.get("stats") or {})
        todo = []
        for e in item["inputs"]:   # each reader of each file version, once
            key = (e["reader"], e["host"], e["abspath"], e["sha256"])
            if key in self.files:
                self.watch.discard(e)
            else:
                self.files[key] = e["size"]
                todo.append(e)
        failed = set()
        missing = [e for e in todo if embed and not self._in_store(e)]
        with progress_bar(sum(e["size"] for e in missing), "julius data snapshot", "B", unit_scale=True,
                          delay=1.0, leave=False, disable=not missing) as bar:
            for entry in missing:
                if not self._in_store(entry):   # not stored by another reader of that version meanwhile
                    kernel = entry["reader"] == "kernel"
                    try:
                        self.writer.add_blob(entry["abspath"] if kernel else self.watch.file_chunks(entry),
                                             sha256=entry["sha256"], size=entry["size"])
                    except IntegrityError:
                        self._record_problem(entry, "changed after it was read, before it was stored")
                        failed.add(id(entry))
                    except Exception as error:
                        self._record_problem(entry, f"could not be read for the recording: {error}")
                        failed.add(id(entry))
                bar.update(entry["size"])
        new = []
        for entry in todo:
            if id(entry) in failed:
                continue
            if embed:
                self.writer.add_stored_blob(entry["sha256"], entry["size"])
            self.watch.discard(entry)
            new.append({k: entry.get(k) for k in ("path", "abspath", "cwd", "size", "mtime_ns", "sha256", "reader", "host")}
                       | {"embedded": embed})
        if new:
            self._step("inputs", {"files": new})
            self._count_files((e["abspath"], e["sha256"]) for e in new)
        if item["remote"]:
            remote = []
            for entry in item["remote"]:
                entry = {k: entry.get(k) for k in ("url", "path", "cwd", "size", "etag", "version_id", "sha256", "reader")}
                stored = self.writer.scrub(entry["url"])
                if stored != entry["url"]:   # ?token=, a presigned URL's signature: not stored, so not checkable
                    self._partial(f"remote input {stored}: its URL holds a credential, stored redacted: "
                                  "a replay cannot check it")
                if self.data_mode == "embed-remote":
                    try:
                        from ..cluster.inputs import read_remote

                        entry["blob"] = self.writer.add_blob(read_remote(entry["url"]))
                    except Exception as error:
                        self._partial(f"remote input {entry['url']} could not be embedded: {error}")
                remote.append(entry)
            self._step("remote_inputs", {"files": remote})
            self._count_files((e["url"], e.get("etag") or e.get("version_id") or e.get("sha256")) for e in remote)
        fields = ("path", "abspath", "cwd", "existed", "size", "mtime_ns", "sha256", "content", "reader", "in_task",
                  "rewritten")
        outputs = [{k: o.get(k) for k in fields} for o in item["outputs"] if not o.get("gone")]
        if outputs:
            self._step("outputs", {"files": outputs})
            self.captured["outputs"] += len(outputs)
        for problem in item["problems"]:
            self._record_problem(problem, problem["problem"])

    def _count_files(self, versions):
        self.file_versions.update(versions)
        self.captured["files"] = len(self.file_versions)

    def _in_store(self, entry):
        """Whether the store holds the blob of an input, with its size."""
        files = self.store.files
        return files.size(files.path(BLOBS, entry["sha256"])) == entry["size"]

    def _record_problem(self, entry, problem):
        reason = self.writer.scrub(f"input file {entry['path']} {problem}")   # a remote input's URL, an error
        print(f"julius: warning: {reason}; the recording is partial", file=sys.stderr)
        self._step("dropped", {"what": "file", "keys": [], "files": [entry.get("abspath")], "reason": reason})
        self._partial(reason)

    def _record_environment(self, workers):
        """Take the kernel's environment and the workers' in a thread.

        ``workers`` is ``{address: environment}``, or a function that takes it (it waits for the
        workers).  The step is written by :meth:`_record_environments_taken`.
        """
        def take():
            try:
                kernel_env = capture_environment()
            except RuntimeError:   # the notebook changed os.environ or the Dask config while it was read
                kernel_env = capture_environment()
            try:
                return kernel_env, workers() if callable(workers) else workers, None
            except Exception as error:   # the kernel's is still worth keeping
                return kernel_env, {}, f"the workers' environments could not be taken: {type(error).__name__}: {error}"

        self.owed_environments.append(self.environment_thread.submit(take))

    def _record_environments_taken(self, wait=False):
        """An ``environment`` step for each environment taken (all of them, with ``wait``), in order."""
        while self.owed_environments and (wait or self.owed_environments[0].done()):
            try:
                kernel_env, environments, problem = self.owed_environments.pop(0).result(ENVIRONMENT_SECONDS)
            except Exception as error:   # a timeout, or the kernel's environment would not be read
                self._partial(f"an environment could not be taken: {type(error).__name__}: {error}")
                continue
            kernel = self._env_blob(kernel_env)
            workers = {w: self._env_blob(env) for w, env in environments.items()}
            self._step("environment", {"kernel": kernel, "workers": workers, **self._local_wheels(kernel_env)})
            if problem:
                self._partial(problem)

    def _env_blob(self, env):
        """An environment, scrubbed where it was taken, as a blob: the kernel's known secrets cut out too
        (a worker's environment does not know the kernel's fsspec credentials)."""
        return self.writer.add_blob(_json_env(self.writer.scrub(env, names=False)))

    def _local_wheels(self, kernel_env):
        """``{"wheels": {name: {filename, sha256}}}`` the first time, with ``--with-local-packages``; else ``{}``.

        One wheel per editable or local install of the kernel, built from its source
        folder.  One that cannot be built is named in a one-line warning: the recording
        goes on without it (an isolated replay then needs it installed at its version).
        """
        if not self.with_local_packages or self.wheels_embedded:
            return {}
        from .pins import RebuildError
        from .venvs import build_local_wheels

        self.wheels_embedded = True
        local = {name: dist for name, dist in (kernel_env.get("distributions") or {}).items()
                 if (dist.get("origin") or {}).get("kind") in ("editable", "local")}
        versions = kernel_env.get("packages") or {}
        wheels = {}
        with progress_bar(len(local), "julius local package wheels", "wheel", delay=1.0, leave=False,
                          disable=not local) as bar:
            for name, dist in sorted(local.items()):
                why = None
                # tempfile's own names: the file hooks never take julius's reads of it for inputs
                with tempfile.TemporaryDirectory() as out_dir:
                    try:
                        for built, path in build_local_wheels({"distributions": {name: dist}}, out_dir).items():
                            wheels[built] = {"filename": os.path.basename(path), "sha256": self.writer.add_blob(path)}
                    except RebuildError as error:
                        why = str(error)
                if why is None and name not in wheels:
                    why = f"its source {file_path(dist['origin'].get('url'))} is not a folder to build a wheel from"
                if why is not None:
                    why = self.writer.scrub(why)   # a VCS origin's URL
                    bar.write(f"julius: warning: {name} is not embedded ({why}); an isolated replay needs {name} "
                              f"{versions.get(name, '')} installed here", file=sys.stderr)   # on its own line
                bar.update(1)
        return {"wheels": wheels}

    def _record_cluster(self, spec):
        self.session.start_capture()
        self.captured["clusters"] += 1
        self._step("cluster", {**spec, "seed": self.session.seed})
        self._record_environment(functools.partial(self.session.run_on_workers, capture_environment))
        self._record_environments_taken(wait=True)   # `%cluster start` takes seconds: its environment follows it
        self._note_workers(spec.get("n_workers"))

    def _record_dispatch(self, payload):
        plan, jobs = payload["plan"], payload["jobs"]
        results = self.session.fingerprint(jobs)
        self.captured["results"] += len(results)
        target_ids = {r.id for r in payload["targets"]}
        for nid, result in results.items():
            result["label"] = plan.nodes[nid].ref.display() if nid in plan.nodes else None
            result["target"] = nid in target_ids
        self._note_headlines(payload["targets"], results)
        data = {
            "targets": [{"id": r.id, "key": r.key, "label": r.label} for r in payload["targets"]],
            "key_rules": payload["key_rules"], "seed": self.session.seed,
            "nodes": len(plan.nodes), "jobs": len(plan.jobs), "results": results, "seconds": payload["seconds"],
        }
        parts = self._parts_without_secrets({
            "targets": cloudpickle.dumps(list(payload["targets"])),
            "jobs": cloudpickle.dumps([plan.nodes[j].ref for j in plan.jobs if j in plan.nodes])}, data)
        seq = self._step("dispatch", data, parts)
        if data.get("dropped"):
            self._partial(f"dispatch step {seq}: {data['dropped']}")

    def _note_headlines(self, targets, results):
        """Labelled targets' values in the manifest, so lists show them without opening the journal."""
        for r in targets:
            if r.label and r.id in results and results[r.id].get("describe") is not None:
                self.headlines[r.label] = str(results[r.id]["describe"])[:80]
        if self.headlines:
            self.writer.update_meta(headlines=dict(list(self.headlines.items())[-HEADLINES:]))

    # --- end -------------------------------------------------------------------------
    def stop(self):
        """Finish the recording; returns its ``RecordingInfo``.

        Prints one line of what was captured (clusters, graphs, results, files), and
        warns when that is nothing or when the recording is partial.
        """
        try:
            self.watch.stop()
            self._drain(final=True)   # waits for every snapshot
            if self.session.active:
                self.session.stop_capture()
        finally:
            self.watch.stop()
            self.environment_thread.shutdown(wait=False, cancel_futures=True)
            if self.sink is not None:
                self.sink.close()
            if self.on_event in self.session.observers:
                self.session.observers.remove(self.on_event)
            _ACTIVE["recorder"] = None
        self.writer.update_meta(files=len(self.files), captured=dict(self.captured))
        info = self.writer.close()
        print(self.captured_text())
        return info

    def captured_text(self):
        """``Captured: 1 cluster, 3 graphs, 12 results, 4 input files`` (+ warnings), for ``%record stop``."""
        c = self.captured
        text = (f"Captured: {c['clusters']} cluster(s), {c['graphs']} graph(s), {c['results']} result(s), "
                f"{c['files']} input file(s), {c['outputs']} output(s)")
        if not (c["clusters"] or c["graphs"] or c["results"]):
            text += "\njulius: warning: nothing reached a Dask cluster while recording: the replay will have nothing to verify"
        if self.partial:
            more = f"\n  and {len(self.partial) - 8} more" if len(self.partial) > 8 else ""
            text += ("\njulius: warning: the recording is partial (it will not verify):\n  "
                     + "\n  ".join(self.partial[:8]) + more)
        return text

    def abort(self):
        """Stop observing; the recording stays ``incomplete`` with every step written so far."""
        with contextlib.suppress(Exception):
            self.watch.stop()
        self.environment_thread.shutdown(wait=False, cancel_futures=True)
        if self.sink is not None:
            self.sink.close()
        if self.on_event in self.session.observers:
            self.session.observers.remove(self.on_event)
        _ACTIVE["recorder"] = None
        if self.session.active:
            with contextlib.suppress(Exception):
                self.session.stop_capture()


def _own_folders(store):
    """Folders whose files are never inputs: the store (when local) and julius's cache."""
    folders = [os.path.join(os.path.expanduser("~"), ".julius")]
    url = getattr(store, "url", "") or ""
    if "://" not in url or url.startswith("file://"):
        folders.append(os.path.abspath(url.replace("file://", "", 1)))
    return folders


def _jsonable(event):
    return json.loads(json.dumps(event, default=str))


def _version():
    from .. import __version__

    return __version__
