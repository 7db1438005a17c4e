"""The kernel-side recorder: turns a session's actions into journal steps.

The recorder observes a ``Session`` (``session.observers``) and the cells the
front-end hands it; the scheduler plugin (``cluster.capture``, through
``Session.drain_capture``) supplies what reached the cluster from plain Dask
code.  Before each kernel-side step, the plugin's events are drained so the
journal keeps the order things happened in.

The kinds of steps, their fields and parts are listed in :mod:`.steps`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import platform

import cloudpickle
from tqdm.auto import tqdm

from ..cluster.worker import drain_inputs
from ..errors import RecordingError
from ..rules.registry import top_level_names
from .environment import capture_environment
from .journal import file_digest
from .steps import KINDS
from .store import Store

__all__ = ["Recorder", "active_recorder"]

_ACTIVE = {"recorder": None}


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
    data : {"embed", "hash"}
        Embed the input files' bytes (content-addressed), or only their hashes.
    note : str, optional
    """

    def __init__(self, session, name, store=None, data="embed", note=None):
        if data not in ("embed", "hash"):
            raise ValueError(f"--data must be 'embed' or 'hash', not {data!r}")
        if active_recorder() is not None:
            raise RecordingError(f"already recording {active_recorder().name!r}: run `%record stop` first")
        self.session = session
        self.store = Store.coerce(store)
        self.name = name
        self.data_mode = data
        self.files = {}          # path -> (size, sha) recorded so far
        self.steps = 0
        self.writer = self.store.create(name, meta={
            "note": note or "", "data_mode": data, "user": getpass.getuser(), "host": platform.node(),
            "julius_version": _version(),
        })
        session.observers.append(self.on_event)
        _ACTIVE["recorder"] = self
        try:
            if session.active:
                self._record_cluster(session.spec)
            for entry in session.history:   # code and rules sent before the recording started
                self._record_entry(entry)
        except BaseException:
            self.abort()   # stays "incomplete" in the store, with what was written
            raise

    # --- steps -------------------------------------------------------------------
    def _step(self, kind, data, parts=None):
        self.steps = self.writer.add_step(kind, data, parts)
        return self.steps

    def _drain(self):
        """Journal what the scheduler plugin saw since the last step."""
        if not self.session.active:
            return
        for event in self.session.drain_capture():
            kind = event["kind"]
            parts = {name: event.pop(name) for name in KINDS[kind].parts}
            self._step(kind, _jsonable(event), parts)
        self._record_inputs()

    def on_event(self, event, payload):
        """Session observer: one step per action."""
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
            parts = {"pushed": entry["pushed"]} if entry["pushed"] else None
            self._step("remote_eval", {"source": entry["source"], "push": entry["push"],
                                       "failed": entry.get("failed", False)}, parts)
        elif entry["kind"] == "rules":
            self._step("rules", {"ns": entry["ns"], "source": entry["source"], "failed": entry.get("failed", False),
                                 "rules": top_level_names(entry["source"])[1]})

    def add_cell(self, source):
        """A recorded cell's source (the front-end calls this after the cell ran)."""
        self._drain()
        if source.strip():
            self._step("cell", {"source": source})

    def _record_cluster(self, spec):
        self.session.start_capture()
        self._step("cluster", {**spec, "seed": self.session.seed})
        kernel = self.writer.add_blob(_json_env(capture_environment()))
        workers = {w: self.writer.add_blob(_json_env(env))
                   for w, env in self.session.run_on_workers(capture_environment).items()}
        self._step("environment", {"kernel": kernel, "workers": workers})
        self.writer.update_meta(workers=spec.get("n_workers"))

    def _record_dispatch(self, payload):
        plan, jobs = payload["plan"], payload["jobs"]
        results = self.session.fingerprint(jobs)
        target_ids = {r.id for r in payload["targets"]}
        for nid, result in results.items():
            result["label"] = plan.nodes[nid].ref.display() if nid in plan.nodes else None
            result["target"] = nid in target_ids
        self._step("dispatch", {
            "targets": [{"id": r.id, "key": r.key, "label": r.label} for r in payload["targets"]],
            "key_rules": payload["key_rules"], "seed": self.session.seed,
            "nodes": len(plan.nodes), "jobs": len(plan.jobs), "results": results, "seconds": payload["seconds"],
        }, {"targets": cloudpickle.dumps(list(payload["targets"])),
            "jobs": cloudpickle.dumps([plan.nodes[j].ref for j in plan.jobs if j in plan.nodes])})

    def _record_inputs(self):
        """Hash (and embed) the input files nodes read since the last look."""
        if not self.session.active:
            return
        seen = set()
        for paths in self.session.run_on_workers(drain_inputs).values():
            seen.update(paths)
        paths = [p for p in sorted(seen) if p not in self.files and os.path.isfile(p)]
        new = []
        with tqdm(total=sum(os.path.getsize(p) for p in paths), desc="julius data snapshot", unit="B",
                  unit_scale=True, delay=1.0, leave=False, disable=not paths) as bar:
            for path in paths:
                if self.data_mode == "embed":   # the store hashes what it stores: read the file once
                    size, sha = os.path.getsize(path), self.writer.add_blob(path)
                else:
                    size, sha = file_digest(path)
                self.files[path] = (size, sha)
                new.append({"path": path, "size": size, "sha256": sha, "embedded": self.data_mode == "embed"})
                bar.update(size)
        if new:
            self._step("data", {"files": new})

    # --- end -------------------------------------------------------------------------
    def stop(self):
        """Finish the recording; returns its ``RecordingInfo``."""
        try:
            self._drain()
            if self.session.active:
                self.session.stop_capture()
        finally:
            if self.on_event in self.session.observers:
                self.session.observers.remove(self.on_event)
            _ACTIVE["recorder"] = None
        self.writer.update_meta(files=len(self.files))
        return self.writer.close()

    def abort(self):
        """Stop observing; the recording stays ``incomplete`` with every step written so far."""
        if self.on_event in self.session.observers:
            self.session.observers.remove(self.on_event)
        _ACTIVE["recorder"] = None
        if self.session.active:
            with contextlib.suppress(Exception):
                self.session.stop_capture()


def _jsonable(event):
    return json.loads(json.dumps(event, default=str))


def _version():
    from .. import __version__

    return __version__
