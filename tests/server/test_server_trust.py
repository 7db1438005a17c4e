"""The server never answers 5xx for a bad recording: forged, malformed, newer-format or untrusted ones
get a 4xx with a JSON message, the list skips them, and worker counts are capped (issue 9, findings 5 and 8)."""

import collections
import json
import random
import time
import uuid

import pytest

from julius_magics.recording import integrity
from julius_magics.recording.store import Store
from julius_magics.server.manager import RecordingsManager
from tests.recording.store_contract import write_sample
from tests.recording.test_store_fuzz import SEED, forge, restore

pytest_plugins = ["pytest_jupyter.jupyter_server"]

SERVER_CASES = 2000
STORE_URL = f"memory://server-trust-{uuid.uuid4().hex}"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("JULIUS_KEY_FILE", str(tmp_path / "key"))
    monkeypatch.delenv("JULIUS_TRUSTED_KEYS", raising=False)
    store = Store(STORE_URL)
    store.files.rm(store.files.root)
    write_sample(store, "good")
    write_sample(store, "bad")
    return store


@pytest.fixture
def jp_server_config(store):
    return {"ServerApp": {"jpserver_extensions": {"julius_magics.server": True}},
            "JuliusRecordings": {"store": STORE_URL}}


@pytest.fixture
def api(http_server_client, jp_base_url, jp_auth_header):
    async def fetch(path, method="GET", body=None):
        response = await http_server_client.fetch(
            f"{jp_base_url}julius/api/{path}", method=method, body=body, raise_error=False,
            headers=dict(jp_auth_header), request_timeout=30)
        return response.code, json.loads(response.body) if response.body else None

    return fetch


def sign_manifest(store, name, **changes):
    key = integrity.load_key()
    path = store.files.path(name, "manifest.json")
    body = {k: v for k, v in json.loads(store.files.read(path)).items() if k not in integrity.SEAL_FIELDS}
    store.files.write(path, integrity.seal({**body, **changes, "key_id": key.fingerprint}, key))


@pytest.mark.parametrize("changes, status, message", [
    ({"created": None}, 409, "Recording 'bad': manifest.json is malformed: at created: None is not of type 'string'."),
    ({"format": "julius-recording/9"}, 422, "Recording 'bad': manifest.json has format 'julius-recording/9'"),
])
async def test_bad_recordings_are_4xx_and_skipped_by_the_list(api, store, changes, status, message, caplog):
    sign_manifest(store, "bad", **changes)
    code, body = await api("recordings")
    assert code == 200 and [r["name"] for r in body["recordings"]] == ["good"]
    assert f"skipped recording 'bad': {message}" in caplog.text.replace("\"", "'")
    code, body = await api("recordings/bad")
    assert code == status and body["message"].startswith(message)
    code, body = await api("diff?a=good&b=bad")
    assert code == status and body["message"].startswith(message)
    code, body = await api("replays", "POST", json.dumps({"name": "bad"}))
    assert code == status and body["message"].startswith(message)


async def test_an_untrusted_recording_is_409(api, store):
    stranger = integrity.SigningKey.generate()
    from tests.recording.test_store_fuzz import resign_all

    fs = store.files.fs
    snapshot = {p: fs.cat_file(p) for p in fs.find(store.files.root)}
    resign_all(fs, store, "bad", snapshot, stranger)
    code, body = await api("recordings")
    assert code == 200 and {r["name"]: r["trusted"] for r in body["recordings"]} == {"good": True, "bad": False}
    code, body = await api("replays", "POST", json.dumps({"name": "bad"}))
    assert code == 409 and f"--trust-key {stranger.fingerprint}" in body["message"]


async def test_worker_counts_are_capped(api, store):
    cap = RecordingsManager().max_workers
    code, body = await api("replays", "POST", json.dumps({"name": "good", "workers": 10**9}))
    assert code == 400 and body["message"] == f"workers must be between 1 and {cap} on this server, got {10**9}"
    code, body = await api("replays", "POST", json.dumps({"name": "good", "workers": 0}))
    assert code == 400
    assert RecordingsManager(max_workers=3).max_workers == 3


async def test_trust_key_of_a_replay_request_is_a_fingerprint(api, store):
    code, body = await api("replays", "POST", json.dumps({"name": "good", "trust_key": "anything"}))
    assert code == 400 and "not a key fingerprint" in body["message"]
    manager = RecordingsManager(STORE_URL)
    fp = integrity.SigningKey.generate().fingerprint
    assert manager.replay_argv("good", 2, trust_key=fp)[-2:] == ["--trust-key", fp]


async def test_fuzz_every_route_never_answers_5xx(api, store, jp_serverapp):
    """≥ 2000 forgeries of a recording: every route answers 2xx or 4xx with a JSON message, quickly."""
    print(f"JULIUS_FUZZ_SEED={SEED}")
    rng = random.Random(SEED + 10)
    author, stranger = integrity.load_key(), integrity.SigningKey.generate()
    store.files.rm(store.files.root)
    sample = write_sample(store, close=False)
    early = store.files.read(store.files.path("sample", "manifest.json"))
    sample["writer"].close()
    store.mark_verified("sample", {"verified": True})
    write_sample(store, "other")
    fs = store.files.fs
    snapshot = {p: fs.cat_file(p) for p in fs.find(store.files.root)}
    codes = collections.Counter()
    for case in range(SERVER_CASES):
        how, _ = forge(fs, store, snapshot, early, author, stranger, rng)
        what = f"server case {case}: {how} (JULIUS_FUZZ_SEED={SEED})"
        started = time.monotonic()
        routes = [("recordings", "GET", None), ("recordings/sample", "GET", None),
                  ("diff?a=" + "&b=".join(rng.sample(["sample", "other"], 2)), "GET", None)]
        if case % 1000 == 0:   # a real replay subprocess: two only
            routes.append(("replays", "POST", json.dumps({"name": "sample", "workers": 1})))
        if case % 5 == 0:
            routes.append(("recordings/sample", "DELETE", None))
        for path, method, body in routes:
            code, answer = await api(path, method, body)
            codes[(method, path.split("?")[0], code)] += 1
            assert code < 500, f"{what}: {method} {path} answered {code}: {answer}"
            if code >= 400:
                assert isinstance(answer, dict) and answer.get("message") and "\n" not in answer["message"].strip(), \
                    f"{what}: {method} {path}: {answer}"
            if method == "POST" and code == 202:
                job_code, job = await api(f"replays/{answer['id']}")
                assert job_code == 200
                await jp_serverapp.web_app.settings["julius_manager"].wait(answer["id"])
        assert time.monotonic() - started < 60, f"{what}: took {time.monotonic() - started:.0f}s"
        restore(store, snapshot)
    print(f"\n{SERVER_CASES} server cases: {dict(codes)}")
    assert any(code == 409 for (_, _, code) in codes)
