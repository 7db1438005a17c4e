"""The jupyter-server extension: every ``/julius/api/`` endpoint through a real server
(pytest-jupyter's ``jp_fetch``), and the ``RecordingsManager`` without HTTP."""

import asyncio
import json
import sys
import time
import urllib.parse

import psutil
import pytest
import tornado.httpclient

from julius_magics.recording.store import Store
from julius_magics.server import (
    _jupyter_labextension_paths,
    _jupyter_server_extension_points,
)
from julius_magics.server.manager import RecordingsManager

pytest_plugins = ["pytest_jupyter.jupyter_server"]

INJECTION = '<img src=x onerror="document.title=\'pwned\'">'


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    """A local store with two small recordings written through the real ``Store``."""
    # one signing key for the test and the server, whatever HOME pytest-jupyter sets
    monkeypatch.setenv("JULIUS_KEY_FILE", str(tmp_path / "key"))
    path = tmp_path / "store"
    store = Store(str(path))
    for name, note, cells in [("alpha", INJECTION, ["a = 1", "b = a + 1"]), ("beta", "second", ["a = 2"])]:
        writer = store.create(name, {"note": note, "workers": 2, "data_mode": "embed"})
        for source in cells:
            writer.add_step("cell", {"source": source})
        writer.close()
    return path


@pytest.fixture
def jp_server_config(store_dir):
    return {
        "ServerApp": {"jpserver_extensions": {"julius_magics.server": True}},
        "JuliusRecordings": {"store": str(store_dir)},
    }


async def fetch_json(jp_fetch, *parts, **kwargs):
    response = await jp_fetch("julius", "api", *parts, **kwargs)
    return response.code, (json.loads(response.body) if response.body else None)


async def fetch_error(jp_fetch, *parts, **kwargs):
    with pytest.raises(tornado.httpclient.HTTPClientError) as caught:
        await jp_fetch("julius", "api", *parts, **kwargs)
    body = caught.value.response.body
    return caught.value.code, json.loads(body) if body else None


def test_discovery_hooks_point_at_this_module():
    assert _jupyter_server_extension_points() == [{"module": "julius_magics.server"}]
    assert _jupyter_labextension_paths() == [{"src": "labextension", "dest": "julius-magics"}]


async def test_list_recordings(jp_fetch):
    code, body = await fetch_json(jp_fetch, "recordings")
    assert code == 200
    by_name = {info["name"]: info for info in body["recordings"]}
    assert sorted(by_name) == ["alpha", "beta"]
    assert by_name["alpha"]["steps"] == 2
    assert by_name["alpha"]["status"] == "complete"
    assert by_name["alpha"]["workers"] == 2
    assert by_name["alpha"]["note"] == INJECTION  # the API returns text as is; the UI renders it as text
    assert by_name["beta"]["signed_by_me"] is True
    assert set(by_name["beta"]) >= {"created", "size", "data_mode", "key_id"}


@pytest.fixture
def raw_fetch(http_server_client, jp_base_url, jp_auth_header):
    """Fetch an exact (already URL-encoded) path under /julius/api/, with or without the token."""

    async def fetch(path, method="GET", body=None, token=True):
        response = await http_server_client.fetch(
            f"{jp_base_url}julius/api/{path}", method=method, body=body, raise_error=False,
            headers=dict(jp_auth_header) if token else {}, request_timeout=20)
        return response.code, response.body

    return fetch


async def test_request_without_token_is_refused(raw_fetch, store_dir):
    for method, path in [("GET", "recordings"), ("GET", "recordings/alpha"), ("DELETE", "recordings/alpha"),
                         ("GET", "diff?a=alpha&b=beta"), ("POST", "replays"), ("GET", "replays/ab12")]:
        code, _ = await raw_fetch(path, method, body="{}" if method == "POST" else None, token=False)
        assert code == 403, (method, path, code)
    # the refused DELETE deleted nothing
    assert [info.name for info in Store(str(store_dir)).list()] == ["alpha", "beta"]


async def test_get_one_recording(jp_fetch):
    code, body = await fetch_json(jp_fetch, "recordings", "beta")
    assert code == 200
    assert body["info"]["name"] == "beta"
    assert body["info"]["steps"] == 1
    assert [(step["seq"], step["kind"]) for step in body["details"]["steps"]] == [(1, "cell")]
    assert body["details"]["info"]["name"] == "beta"


async def test_missing_recording_is_404(jp_fetch):
    code, body = await fetch_error(jp_fetch, "recordings", "nope")
    assert code == 404
    assert "nope" in body["message"]
    code, body = await fetch_error(jp_fetch, "recordings", "nope", method="DELETE")
    assert code == 404


@pytest.mark.parametrize("name", ["..%2F..%2Fetc%2Fpasswd", "..", "%2E%2E", ".hidden", "a%5Cb", "%7Eroot",
                                  "..%2Fbeta", "a%00b"])
async def test_traversal_names_are_refused(raw_fetch, store_dir, name):
    for method in ("GET", "DELETE"):
        code, body = await raw_fetch(f"recordings/{name}", method)
        assert code == 400, (name, method, code)
        assert "Invalid recording name" in json.loads(body)["message"]
    code, body = await raw_fetch(f"diff?a={name}&b=beta")
    assert code == 400 and "Invalid recording name" in json.loads(body)["message"]
    raw = urllib.parse.unquote(name)
    code, body = await raw_fetch("replays", "POST", body=json.dumps({"name": raw}))
    assert code == 400 and "Invalid recording name" in json.loads(body)["message"]
    assert sorted(p.name for p in store_dir.iterdir() if not p.name.startswith("_")) == ["alpha", "beta"]


async def test_delete_recording(jp_fetch, store_dir):
    code, body = await fetch_json(jp_fetch, "recordings", "beta", method="DELETE")
    assert code == 204 and body is None
    code, body = await fetch_json(jp_fetch, "recordings")
    assert [info["name"] for info in body["recordings"]] == ["alpha"]
    assert [info.name for info in Store(str(store_dir)).list()] == ["alpha"]


async def test_diff_two_recordings(jp_fetch):
    code, body = await fetch_json(jp_fetch, "diff", params={"a": "alpha", "b": "beta"})
    assert code == 200
    assert (body["a"], body["b"], body["same"]) == ("alpha", "beta", False)
    assert "-a = 1" in body["code"]["cell"] and "+a = 2" in body["code"]["cell"]
    code, body = await fetch_error(jp_fetch, "diff", params={"a": "alpha"})
    assert code == 400 and "?a=NAME&b=NAME" in body["message"]


async def test_replay_request_errors(jp_fetch):
    code, body = await fetch_error(jp_fetch, "replays", method="POST", body="not json")
    assert code == 400 and "not JSON" in body["message"]
    code, body = await fetch_error(jp_fetch, "replays", method="POST", body=json.dumps({"workers": 1}))
    assert code == 400 and '"name"' in body["message"]
    code, body = await fetch_error(jp_fetch, "replays", method="POST", body=json.dumps({"name": "nope"}))
    assert code == 404 and "nope" in body["message"]
    code, body = await fetch_error(jp_fetch, "replays", method="POST",
                                   body=json.dumps({"name": "alpha", "workers": 0}))
    assert code == 400 and "workers" in body["message"]
    code, body = await fetch_error(jp_fetch, "replays", "0123abcd")
    assert code == 404 and "0123abcd" in body["message"]


async def test_unreachable_store_is_503(jp_fetch, jp_serverapp, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    jp_serverapp.web_app.settings["julius_manager"] = RecordingsManager(str(blocker / "store"))
    code, body = await fetch_error(jp_fetch, "recordings")
    assert code == 503
    assert body["message"].startswith("recording store unreachable")


# --- the manager without HTTP: the replay subprocess protocol --------------------------------
CHILD = """
import json, sys, time
for done in range(1, 4):
    print(json.dumps({"event": "progress", "done": done, "total": 3, "message": f"step {done}"}), flush=True)
    time.sleep(0.05)
print("plain text from a library", flush=True)
print(json.dumps({"event": "report", "report": {"name": sys.argv[1], "steps": 3, "verified": VERIFIED,
    "mismatches": [], "env_diff": {}, "timings": {}}}), flush=True)
"""


def child(verified=True, crash=False):
    code = CHILD.replace("VERIFIED", str(verified))
    if crash:
        code = "import sys; print('boom: worker died', file=sys.stderr); sys.exit(3)"
    return [sys.executable, "-c", code]


async def test_manager_replay_job_reads_progress_and_report(store_dir):
    manager = RecordingsManager(str(store_dir), replay_command=child(verified=True))
    job = await manager.start_replay("alpha", workers=1)
    assert job.state == "running" and job.as_dict()["name"] == "alpha"
    assert manager.replay_argv("alpha", 1)[-5:] == ["alpha", "--store", str(store_dir), "-n", "1"]
    assert RecordingsManager().replay_command[1:] == ["-m", "julius_magics.recording.replay_job"]
    job = await manager.wait(job.id)
    assert (job.state, job.done, job.total, job.message) == ("verified", 3, 3, "verified")
    assert job.report["name"] == "alpha" and job.finished >= job.started


async def test_manager_replay_failed_and_crashed(store_dir):
    manager = RecordingsManager(str(store_dir), replay_command=child(verified=False))
    job = await manager.wait((await manager.start_replay("alpha")).id)
    assert (job.state, job.message) == ("failed", "not verified")
    manager.replay_command = child(crash=True)
    job = await manager.wait((await manager.start_replay("alpha")).id)
    assert job.state == "error"
    assert "exited with code 3" in job.message and "boom: worker died" in job.message


async def test_manager_replay_never_blocks_the_event_loop(store_dir):
    slow = [sys.executable, "-c", "import time, json; time.sleep(1.0); "
            "print(json.dumps({'event': 'error', 'message': 'slow child done'}), flush=True)"]
    manager = RecordingsManager(str(store_dir), replay_command=slow)
    started = time.perf_counter()
    job = await manager.start_replay("alpha")
    assert time.perf_counter() - started < 0.5
    ticks = 0
    while manager.job(job.id).state == "running":
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks > 30  # the loop kept running during the 1 s child
    assert manager.job(job.id).message == "slow child done"
    await manager.close()


async def test_manager_close_kills_running_replays(store_dir):
    manager = RecordingsManager(str(store_dir), replay_command=[sys.executable, "-c", "import time; time.sleep(60)"])
    before = set(psutil.Process().children())   # other tests' processes may still be around
    job = await manager.start_replay("alpha")
    deadline = time.monotonic() + 10
    while not set(psutil.Process().children()) - before:
        assert time.monotonic() < deadline, "the replay process did not start"
        await asyncio.sleep(0.05)
    (child,) = set(psutil.Process().children()) - before
    await manager.close()
    assert (job.state, job.message) == ("error", "the server stopped during the replay")
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


async def test_replay_flags_must_be_booleans(jp_fetch):
    for flag in ("isolated", "trust"):
        code, body = await fetch_error(jp_fetch, "replays", method="POST",
                                       body=json.dumps({"name": "alpha", flag: "yes"}))
        assert code == 400 and f'"{flag}" must be true or false' in body["message"]


class _SeeingManager(RecordingsManager):
    """The real manager, noting the options each replay was started with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.options = []

    async def start_replay(self, name, **options):
        self.options.append(dict(options))
        if "isolated" not in RecordingsManager.start_replay.__code__.co_varnames:
            options.pop("isolated", None)   # until line "environment" adds it to the manager
        return await super().start_replay(name, **options)


async def test_isolated_is_passed_through_to_the_manager(jp_fetch, jp_serverapp, store_dir):
    manager = _SeeingManager(str(store_dir))
    jp_serverapp.web_app.settings["julius_manager"] = manager
    for body in ({"name": "alpha", "isolated": True}, {"name": "alpha"}):
        code, job = await fetch_json(jp_fetch, "replays", method="POST", body=json.dumps(body))
        assert code == 202 and job["name"] == "alpha"
        await manager.wait(job["id"])
    assert manager.options == [{"workers": None, "trust": False, "isolated": True},
                               {"workers": None, "trust": False}]
