"""The recording store on a local folder and on ``memory://``, plus what only a local disk can show."""

import os
import signal
import stat
import subprocess
import sys
import time
import uuid

import pytest

from julius_magics.errors import IntegrityError, RecordingNotFoundError, UntrustedRecordingError
from julius_magics.recording import integrity
from julius_magics.recording.store import Store
from tests.recording.store_contract import (
    StoreContract,
    content,
    run_writer_processes,
    use_other_key,
    write_sample,
)

pytestmark = pytest.mark.usefixtures("isolated_key")  # never the user's ~/.julius


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return Store(tmp_path / "store")


class TestFileUrlStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return Store(f"file://{tmp_path}/store")


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self):
        store = Store(f"memory://julius-test-{uuid.uuid4().hex}")
        yield store
        store.files.rm(store.files.root)


def test_default_store_and_key_file(tmp_path, monkeypatch):
    monkeypatch.delenv("JULIUS_KEY_FILE")
    store = Store()
    assert store.url == str(tmp_path / "home" / ".julius" / "recordings")
    store.create("first", {}).close()
    key_file = tmp_path / "home" / ".julius" / "key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32
    assert store.info("first").key_id == integrity.key_id(bytes.fromhex(key_file.read_text()))
    monkeypatch.setenv("JULIUS_STORE", str(tmp_path / "elsewhere"))
    assert Store().url == str(tmp_path / "elsewhere") and Store().list() == []


def test_bad_key_file_is_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "bad.key"
    bad.write_text("not hex")
    monkeypatch.setenv("JULIUS_KEY_FILE", str(bad))
    with pytest.raises(Exception, match=f"Key file {bad}: expected 64 hexadecimal"):
        Store(tmp_path / "s").create("x", {})


def test_writes_leave_no_temporary_files(tmp_path):
    store = Store(tmp_path / "s")
    write_sample(store)
    assert os.listdir(tmp_path / "s" / "_tmp") == []
    assert sorted(os.listdir(tmp_path / "s")) == ["_blobs", "_tmp", "sample"]


def test_large_file_blob_is_streamed(tmp_path):
    import tracemalloc

    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for i in range(64):
            f.write(os.urandom(1 << 20))
    store = Store(tmp_path / "s")
    writer = store.create("big", {})
    tracemalloc.start()
    sha = writer.add_blob(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    writer.close()
    print(f"\nadd_blob of a 64 MiB file: peak Python memory {peak / 2**20:.1f} MiB")
    assert peak < 8 << 20
    store.open("big").blob_to_file(sha, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == big.read_bytes()


SIGKILLED_WRITER = """
import sys
from julius_magics.recording.store import Store
store = Store(sys.argv[1])
w = store.create("killed", {"note": "will be killed"})
w.add_blob(b"input data")
i = 0
while True:
    i += 1
    w.add_step("cell", {"source": "", "i": i, "text": "x" * (i % 500)}, {"spec": bytes([i % 256]) * 2000})
    print(i, flush=True)
"""


def test_sigkilled_writer_loses_nothing(tmp_path):
    url = str(tmp_path / "s")
    proc = subprocess.Popen([sys.executable, "-c", SIGKILLED_WRITER, url], stdout=subprocess.PIPE, text=True)
    acknowledged = 0
    while acknowledged < 40:
        acknowledged = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    store = Store(url)
    [info] = store.list()
    assert (info.name, info.status, info.note) == ("killed", "incomplete", "will be killed")
    rec = store.open("killed")
    assert len(rec.steps) >= acknowledged
    assert [s.data["i"] for s in rec.steps] == list(range(1, len(rec.steps) + 1))
    for step in rec.steps:
        assert step.data["text"] == "x" * (step.seq % 500)
        assert rec.part(step, "spec") == bytes([step.seq % 256]) * 2000
    assert [rec.blob(sha) for sha in rec.blobs] == [b"input data"]


def test_processes_writing_one_store_at_once(tmp_path):
    url = str(tmp_path / "s")
    outcomes = run_writer_processes(url, {}, ["alpha", "beta", "same", "same", "same"])
    assert outcomes[:2] == ["won", "won"] and sorted(outcomes[2:]) == ["lost", "lost", "won"]
    store = Store(url)
    assert sorted((i.name, i.status, i.steps) for i in store.list()) == [
        ("alpha", "complete", 20),
        ("beta", "complete", 20),
        ("same", "complete", 20),
    ]
    for name in ("alpha", "beta", "same"):
        rec = store.open(name)
        assert {s.data["by"] for s in rec.steps} == {name}
        assert rec.part(20, "p") == bytes([19]) * 100


def test_listing_1000_recordings_is_fast(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # setting up fast; disk flushes are not measured here
    for i in range(1000):
        writer = store.create(f"run-{i:04d}", {"note": f"run {i}", "workers": i % 4 + 1})
        writer.add_step("cell", {"source": "", "i": i})
        writer.close()
    store.create("still-running", {}).add_step("cell", {"source": ""})
    start = time.perf_counter()
    infos = store.list()
    elapsed = time.perf_counter() - start
    print(f"\nlisted {len(infos)} recordings in {elapsed * 1000:.0f} ms")
    assert len(infos) == 1001
    assert {i.status for i in infos} == {"complete", "incomplete"}
    assert infos[0].name == "run-0000" and infos[0].workers == 1 and infos[0].steps == 1
    assert elapsed < 1.0


def test_damaged_manifest_is_skipped_by_the_list_with_a_warning(tmp_path):
    store = Store(tmp_path / "s")
    write_sample(store)
    write_sample(store, "other")
    (tmp_path / "s" / "sample" / "manifest.json").write_bytes(b"{garbage")
    with pytest.warns(UserWarning, match="skipped recording 'sample': Recording 'sample': manifest.json is not valid JSON"):
        assert [info.name for info in store.list()] == ["other"]
    with pytest.raises(IntegrityError, match="Recording 'sample': manifest.json is not valid JSON"):
        store.open("sample")


def test_half_deleted_recording_does_not_leak_into_a_new_one(tmp_path):
    store = Store(tmp_path / "s")
    write_sample(store)
    (tmp_path / "s" / "sample" / "manifest.json").unlink()  # a delete that crashed half-way
    assert store.list() == []
    store.create("sample", {}).add_step("fresh", {})
    assert [s.kind for s in store.open("sample").steps] == ["fresh"]


def test_import_of_missing_or_foreign_file(tmp_path):
    store = Store(tmp_path / "s")
    with pytest.raises(RecordingNotFoundError, match="does not exist"):
        store.import_(tmp_path / "nope.jrec")
    (tmp_path / "text.jrec").write_text("hello")
    with pytest.raises(IntegrityError, match="not a readable julius archive"):
        store.import_(tmp_path / "text.jrec")


def test_import_of_a_colleagues_archive_needs_trust(tmp_path, monkeypatch):
    mine = Store(tmp_path / "mine")
    write_sample(mine)
    mine.export("sample", tmp_path / "sample.jrec")
    use_other_key(monkeypatch, tmp_path)
    theirs = Store(tmp_path / "theirs")
    with pytest.raises(UntrustedRecordingError, match="another key.*pass --trust-key"):
        theirs.import_(tmp_path / "sample.jrec")
    assert theirs.list() == []
    author = mine.key.fingerprint
    assert theirs.import_(tmp_path / "sample.jrec", trust_key=author) == "sample"
    assert theirs.info("sample").signed_by_me is False
    with pytest.raises(UntrustedRecordingError):
        theirs.open("sample")
    assert content(theirs.open("sample", trust_key=author)) == content(mine.open("sample"))
