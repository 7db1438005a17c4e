"""The state behind the REST API: one recording store and the replay jobs.

``RecordingsManager`` is plain Python (no HTTP) so it is tested directly; the
handlers in :mod:`julius_magics.server.routes` only parse requests and call it.

Replays run in a subprocess, ``python -m julius_magics.recording.replay_job``,
whose typed progress events (JSON lines, see that module) an asyncio task reads
line by line, so a replay can never block the server's event loop. Store
calls (listing, describing, diffing, deleting) may touch a remote filesystem,
so they run in a worker thread.

A replay is one structure, listed field by field in :meth:`ReplayProcess.as_dict`::

    id        str   hex id, the key in the URL ``/julius/api/replays/ID``
    name      str   the recording replayed
    workers   int | None   worker count asked for (None: as recorded)
    state     str   "running" | "verified" | "failed" | "error"
    done      int   steps replayed so far
    total     int   steps in the journal (0 until the first progress event)
    message   str   the last progress or error message
    report    dict | None  ``ReplayReport.as_dict()`` once the replay ended
    started   float        time.time() at start
    finished  float | None time.time() at the end
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import partial

from traitlets import Unicode
from traitlets.config import Configurable

# The store's own rule, checked before any store call, so no name with a path
# in it reaches a file system, whatever the store backend does.
from ..errors import UntrustedRecordingError
from ..recording.integrity import untrusted_message
from ..recording.keys import check_fingerprint
from ..recording.report import Progress
from ..recording.replay_job import Error, Report, read_event
from ..recording.store import Store, validate_name

RUNNING, VERIFIED, FAILED, ERROR = "running", "verified", "failed", "error"

# The documented replay entry point, run with the current Python (same environment).
REPLAY_COMMAND = ("-m", "julius_magics.recording.replay_job")
MAX_WORKERS_ENV = "JULIUS_MAX_REPLAY_WORKERS"
_log = logging.getLogger("julius_magics.server")
#: An isolated replay (in the recording's rebuilt environment): the same JSON lines, the report
#: with ``"isolated": [environment built, ...]`` besides.
ISOLATED_COMMAND = ("-m", "julius_magics.recording.isolated")

# Lines of the child's stderr kept to explain a crash.
_STDERR_TAIL = 20


class JuliusRecordings(Configurable):
    """Server config of the extension: ``c.JuliusRecordings.store = "s3://bucket/prefix"``."""

    store = Unicode(None, allow_none=True, config=True,
                    help="fsspec URL or folder of the recording store "
                         "(default: $JULIUS_STORE, else ~/.julius/recordings).")


class JobNotFoundError(KeyError):
    """No replay job of that id (the server restarted, or a wrong id)."""

    def __str__(self):
        return f"No replay job {self.args[0]!r} on this server."


@dataclass
class ReplayProcess:
    """One replay running (or ended) in a subprocess; see the module docstring."""

    id: str
    name: str
    workers: int | None = None
    state: str = RUNNING
    done: int = 0
    total: int = 0
    message: str = "starting"
    report: dict | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict:
        """The JSON view returned by ``GET /julius/api/replays/ID``."""
        return {
            "id": self.id,
            "name": self.name,
            "workers": self.workers,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "message": self.message,
            "report": self.report,
            "started": self.started,
            "finished": self.finished,
        }

    def apply(self, event) -> None:
        """Update from one typed event of :mod:`julius_magics.recording.replay_job`."""
        if isinstance(event, Progress):
            self.done, self.total, self.message = event.done, event.total, event.message
        elif isinstance(event, Report):
            self.report = event.report
            self.state = VERIFIED if self.report.get("verified") else FAILED
            steps = self.report.get("steps")
            if isinstance(steps, int):
                self.done = self.total = max(steps, self.total)
            self.message = "verified" if self.state == VERIFIED else "not verified"
        elif isinstance(event, Error):
            self.state = ERROR
            self.message = event.message


class RecordingsManager:
    """The store of recordings and the replay jobs the server runs on it.

    Parameters
    ----------
    store_url : str, optional
        fsspec URL or folder of the store; None means ``$JULIUS_STORE`` or
        ``~/.julius/recordings`` (the ``Store`` default).
    replay_command : list of str, optional
        Command prefix that runs one replay; the default is
        ``python -m julius_magics.recording.replay_job`` with this Python.
    env : dict, optional
        Extra environment variables for the replay subprocess.
    max_workers : int, optional
        The most workers a replay may ask for (default: ``$JULIUS_MAX_REPLAY_WORKERS``,
        else the machine's CPU count times 4): a request is never a way to fork a thousand processes.

    Examples
    --------
    >>> manager = RecordingsManager("memory://julius-doc")
    >>> asyncio.run(manager.list())
    []
    """

    def __init__(self, store_url: str | None = None, replay_command: list[str] | None = None,
                 env: dict | None = None, max_workers: int | None = None):
        self.store_url = store_url or None
        self.max_workers = int(max_workers or os.environ.get(MAX_WORKERS_ENV) or (os.cpu_count() or 1) * 4)
        self.replay_command = list(replay_command or [sys.executable, *REPLAY_COMMAND])
        self.isolated_command = [sys.executable, *ISOLATED_COMMAND]
        self.env = dict(env or {})
        self.jobs: dict[str, ReplayProcess] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._store = None

    # --- store ---------------------------------------------------------------
    @property
    def store(self):
        """The ``Store``, opened on first use (so a bad URL fails a request, not the server)."""
        if self._store is None:
            self._store = Store.coerce(self.store_url)
        return self._store

    async def _in_thread(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(None, partial(func, *args))

    async def list(self) -> list[dict]:
        """Every readable recording's summary (``RecordingInfo.as_dict()``), newest first.

        A recording that cannot be read is skipped, and logged with the reason.
        """
        def read():
            problems = []
            infos = [info.as_dict() for info in self.store.list(problems=problems)]
            for name, message in problems:
                _log.warning("julius_magics: skipped recording %r: %s", name, message)
            return infos

        infos = await self._in_thread(read)
        return sorted(infos, key=lambda info: str(info.get("created") or ""), reverse=True)

    async def get(self, name: str) -> dict:
        """One recording: its summary under ``"info"`` and ``summary.details()`` under ``"details"``.

        Raises ``RecordingNotFoundError`` when missing, ``ValueError`` for a bad name.
        """
        validate_name(name)

        def read():
            info = self.store.info(name).as_dict()  # first: a missing recording is a 404
            from ..recording.summary import details

            return {"info": info, "details": details(name, self.store)}

        return await self._in_thread(read)

    async def delete(self, name: str) -> None:
        """Delete a recording (``RecordingNotFoundError`` when missing)."""
        validate_name(name)
        await self._in_thread(self.store.delete, name)

    async def diff(self, a: str, b: str) -> dict:
        """What differs between recordings ``a`` and ``b`` (``summary.diff``)."""
        validate_name(a), validate_name(b)
        from ..recording.summary import diff

        return await self._in_thread(diff, a, b, self.store)

    # --- replays -------------------------------------------------------------
    def replay_argv(self, name: str, workers: int | None = None, trust_key: str | None = None,
                    isolated: bool = False) -> list[str]:
        """The command line of a replay subprocess (``isolated``: in the recording's rebuilt environment)."""
        argv = [*(self.isolated_command if isolated else self.replay_command), name]
        if self.store_url:
            argv += ["--store", self.store_url]
        if workers is not None:
            argv += ["-n", str(workers)]
        if trust_key:
            argv += ["--trust-key", trust_key]
        return argv

    def _check_replayable(self, name, trust_key):
        """A readable manifest signed by a key this replay accepts (the replay checks every byte again)."""
        info = self.store.info(name)
        if not info.trusted and info.key_id != trust_key:
            raise UntrustedRecordingError(untrusted_message(f"Recording '{name}': manifest.json", info.key_id,
                                                            self.store.key.fingerprint))

    async def start_replay(self, name: str, workers: int | None = None, trust_key: str | None = None,
                           isolated: bool = False) -> ReplayProcess:
        """Start a replay of ``name`` in a subprocess and return it at once.

        The name is checked against the store first, so a missing recording is
        a ``RecordingNotFoundError`` (HTTP 404) rather than a failed job.
        """
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)
                                    or not 1 <= workers <= self.max_workers):
            raise ValueError(f"workers must be between 1 and {self.max_workers} on this server, got {workers!r}")
        if trust_key is not None:
            trust_key = check_fingerprint(trust_key)
        validate_name(name)
        await self._in_thread(self._check_replayable, name, trust_key)
        job = ReplayProcess(id=uuid.uuid4().hex, name=name, workers=workers)
        self.jobs[job.id] = job
        task = asyncio.create_task(self._run(job, self.replay_argv(name, workers, trust_key, isolated)))
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))
        return job

    def job(self, job_id: str) -> ReplayProcess:
        """The job of that id (``JobNotFoundError`` when unknown)."""
        try:
            return self.jobs[job_id]
        except KeyError:
            raise JobNotFoundError(job_id) from None

    async def wait(self, job_id: str) -> ReplayProcess:
        """Wait until a job has ended and return it."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.shield(task)
        return self.job(job_id)

    async def _run(self, job: ReplayProcess, argv: list[str]) -> None:
        env = {**os.environ, **self.env}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
                limit=2**24)  # a report line with many mismatches can be long
        except OSError as error:
            self._end(job, ERROR, f"cannot start the replay process: {error}")
            return
        stderr_tail: list[str] = []
        stderr_task = asyncio.create_task(self._read_stderr(proc, stderr_tail))
        try:
            async for raw in proc.stdout:
                event = read_event(raw.decode("utf-8", "replace").strip())
                if event is not None:   # anything else is a library's plain text
                    job.apply(event)
            returncode = await proc.wait()
            await stderr_task
        except asyncio.CancelledError:
            # The server is stopping: leave no orphan replay (and its cluster) behind.
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        except Exception as error:   # e.g. an over-long line: end the job, never leave it "running"
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            self._end(job, ERROR, f"reading the replay's progress failed: {type(error).__name__}: {error}")
            return
        finally:
            # asyncio never closes a finished child's transport itself; left open it
            # warns "Event loop is closed" when garbage-collected after the loop ends.
            proc._transport.close()
        if job.state == RUNNING:  # no report and no error event: the process died
            detail = "\n".join(stderr_tail) or "no output"
            self._end(job, ERROR, f"replay process exited with code {returncode}: {detail}")
        else:
            job.finished = time.time()

    @staticmethod
    async def _read_stderr(proc, tail: list[str]) -> None:
        async for raw in proc.stderr:
            tail.append(raw.decode("utf-8", "replace").rstrip())
            del tail[:-_STDERR_TAIL]

    @staticmethod
    def _end(job: ReplayProcess, state: str, message: str) -> None:
        job.state, job.message, job.finished = state, message, time.time()

    async def close(self) -> None:
        """Stop running replays (the server is shutting down)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each kills its child
        for job in self.jobs.values():
            if job.state == RUNNING:
                self._end(job, ERROR, "the server stopped during the replay")
