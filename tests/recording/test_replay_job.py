"""``python -m julius_magics.recording.replay_job``: one replay, its typed events as JSON lines."""

import os
import subprocess
import sys

from julius_magics.recording.replaying import Progress
from julius_magics.recording.replay_job import Error, Report, read_event


def _job(*args):
    return subprocess.run([sys.executable, "-m", "julius_magics.recording.replay_job", *args],
                          capture_output=True, text=True, timeout=300)


def test_replay_job_writes_progress_then_the_report(clock, recordings):
    proc = _job("clock", "--store", recordings.url, "-n", "1")
    assert proc.returncode == 1, proc.stderr   # the clock recording never verifies
    lines = proc.stdout.splitlines()
    events = [read_event(line) for line in lines]
    assert None not in events, lines   # nothing but events on stdout
    progress, report = events[:-1], events[-1]
    assert all(type(e) is Progress for e in progress)
    assert [e.done for e in progress] == list(range(clock.steps + 1))
    assert type(report) is Report and report.report["name"] == "clock" and report.report["verified"] is False
    assert report.report["mismatches"][0]["label"] == "clock"


def test_replay_job_ends_at_its_report_with_its_exit_handlers_run(clock, recordings, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run([sys.executable, "-m", "julius_magics.recording.replay_job", "clock", "--store",
                           recordings.url, "-n", "1"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.returncode == 1 and type(read_event(proc.stdout.splitlines()[-1])) is Report, proc.stderr
    # its cluster's worker fork server stopped, multiprocessing's temporary folder removed (dask's own stays)
    assert [e for e in os.listdir(tmp) if e.startswith("pymp-")] == []


def test_replay_job_reports_an_error_in_one_line(recordings):
    proc = _job("no-such-recording", "--store", recordings.url)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (event,) = [read_event(line) for line in proc.stdout.splitlines()]
    assert type(event) is Error and "no-such-recording" in event.message


def test_read_event_ignores_what_is_not_an_event():
    assert read_event("plain text from a library") is None
    assert read_event('{"event": "progress"}') is None
    assert read_event('{"event": "error", "message": "boom"}') == Error("boom")
