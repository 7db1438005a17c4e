"""The backend-independent test suite of the recording store, and helpers for store tests.

``StoreContract`` is a mixin: each backend's test class provides a ``store``
fixture (an empty :class:`Store`) and inherits every test. Its fixtures
(``isolated_key``, ``use_other_key``) live in ``tests/recording/conftest.py``.
"""

import contextlib
import hashlib
import json
import math
import random
import socket
import subprocess
import sys
import time

import pytest

from julius_magics.errors import (
    IntegrityError,
    RecordingError,
    RecordingExistsError,
    RecordingNotFoundError,
    UntrustedRecordingError,
)
from julius_magics.recording import integrity
from julius_magics.recording.store import Store

BLOB = b"a,b\n" + b"1,2\n" * 5000
SPEC = bytes(range(256)) * 4


def use_other_key(monkeypatch, tmp_path):
    """Switch to a colleague's key; return its id."""
    path = tmp_path / "colleague.key"
    monkeypatch.setenv("JULIUS_KEY_FILE", str(path))
    return integrity.key_id(integrity.load_key())


def write_sample(store, name="sample", blob_file=None, close=True):
    """Write a recording with parts, a bytes blob and a file blob; return what it should hold."""
    writer = store.create(name, {"note": "sample run", "data_mode": "embed", "cluster": {"workers": 2}})
    sha_bytes = writer.add_blob(BLOB)
    writer.add_step("cluster", {"workers": 2, "threads": 1})
    writer.add_step("remote_eval", {"source": "import math\nx = 1", "names": ["x"]}, {"spec": SPEC, "pushed": b"\x80\x05N."})
    writer.add_step("cell", {"source": "compute(ref)", "params": {"lr": 0.5, "tags": ["a", "é"]}}, {"spec": SPEC})
    sha_file = None
    if blob_file is not None:
        sha_file = writer.add_blob(blob_file)
    writer.add_step("result", {"node": "n1", "fingerprint": "abc", "blobs": [sha_bytes, sha_file]})
    writer.update_meta(workers=2, results=1)
    if close:
        writer.close()
    else:   # abandoned once its flush thread wrote the manifest update_meta sealed
        writer.sync()
    return {"writer": writer, "blobs": {sha_bytes: BLOB} | ({sha_file: blob_file.read_bytes()} if blob_file else {})}


def content(recording):
    """Everything a recording gives back, for equality checks."""
    steps = [(s.seq, s.kind, s.data, s.part_names) for s in recording.steps]
    parts = {(s.seq, n): recording.part(s, n) for s in recording.steps for n in s.part_names}
    blobs = {sha: recording.blob(sha) for sha in recording.blobs}
    return steps, parts, blobs


def store_files(store, name):
    """Every stored file of recording ``name`` and of the blob folder, as full fsspec paths."""
    fs, files = store.files.fs, store.files
    return sorted(fs.find(files.path(name))) + sorted(fs.find(files.path("_blobs")))


def flip_byte(fs, path, rng):
    data = bytearray(fs.cat_file(path))
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    fs.pipe_file(path, bytes(data))


class StoreContract:
    """Tests every store backend must pass; subclasses provide the ``store`` fixture."""

    def test_round_trip(self, store, tmp_path):
        blob_file = tmp_path / "input.csv"
        blob_file.write_bytes(b"x,y\n" * 3000)
        sample = write_sample(store, blob_file=blob_file)
        rec = store.open("sample")
        assert [(s.seq, s.kind) for s in rec.steps] == [(1, "cluster"), (2, "remote_eval"), (3, "cell"), (4, "result")]
        assert rec.steps[2].data == {"source": "compute(ref)", "params": {"lr": 0.5, "tags": ["a", "é"]}}
        assert rec.steps[1].part_names == ("pushed", "spec")
        assert rec.part(2, "spec") == SPEC and rec.part(rec.steps[1], "pushed") == b"\x80\x05N."
        assert rec.part(3, "spec") == SPEC
        assert rec.blobs == {sha: len(data) for sha, data in sample["blobs"].items()}
        for sha, data in sample["blobs"].items():
            assert sha == hashlib.sha256(data).hexdigest()
            assert rec.blob(sha) == data
            rec.blob_to_file(sha, tmp_path / "out.bin")
            assert (tmp_path / "out.bin").read_bytes() == data
        info = rec.info
        assert (info.name, info.steps, info.workers, info.status) == ("sample", 4, 2, "complete")
        assert (info.note, info.data_mode, info.signed_by_me) == ("sample run", "embed", True)
        assert info.key_id == integrity.key_id(integrity.load_key())
        assert info.size > len(BLOB) + len(SPEC) + blob_file.stat().st_size
        assert info.created.endswith("Z")
        assert rec.meta["results"] == 1 and rec.meta["cluster"] == {"workers": 2}
        assert json.loads(json.dumps(info.as_dict()))["steps"] == 4
        assert store.info("sample") == info
        assert [i.name for i in store.list()] == ["sample"]

    def test_missing_part_and_blob_names_are_clear_errors(self, store):
        write_sample(store)
        rec = store.open("sample")
        with pytest.raises(RecordingError, match="no part 'nope'"):
            rec.part(2, "nope")
        with pytest.raises(RecordingError, match="no step 9"):
            rec.part(9, "spec")
        with pytest.raises(RecordingError, match="has no blob"):
            rec.blob("0" * 64)

    def test_blobs_are_stored_once_per_store(self, store):
        fs = store.files.fs
        write_sample(store, "first")
        blob_bytes = sum(fs.size(p) for p in fs.find(store.files.path("_blobs")))
        assert blob_bytes == len(BLOB)
        write_sample(store, "second")  # re-recording the same data
        assert sum(fs.size(p) for p in fs.find(store.files.path("_blobs"))) == blob_bytes
        assert store.open("first").blobs == store.open("second").blobs

    def test_abandoned_writer_leaves_incomplete_recording(self, store):
        sample = write_sample(store, close=False)
        [info] = store.list()
        assert (info.name, info.status, info.steps, info.workers) == ("sample", "incomplete", 4, 2)
        rec = store.open("sample")
        assert [s.kind for s in rec.steps] == ["cluster", "remote_eval", "cell", "result"]
        assert rec.part(2, "pushed") == b"\x80\x05N."
        assert rec.blobs == {sha: len(d) for sha, d in sample["blobs"].items()}
        sample["writer"].add_step("late", {"n": 5})
        assert store.info("sample").steps == 5
        assert sample["writer"].close().status == "complete"
        with pytest.raises(RecordingError, match="closed"):
            sample["writer"].add_step("after", {})

    def test_flipped_byte_in_any_file_is_refused(self, store):
        write_sample(store)
        store.mark_verified("sample", {"verified": True})
        fs, rng = store.files.fs, random.Random(1)
        paths = store_files(store, "sample")
        assert len(paths) == 10  # manifest, closed, verified, 4 entries, 2 parts, 1 blob
        for path in paths:
            original = fs.cat_file(path)
            flip_byte(fs, path, rng)
            if path.endswith("verified.json"):   # a bad sidecar is ignored with a warning, never refused
                with pytest.warns(UserWarning, match="Recording 'sample': verified.json"):
                    assert store.open("sample").verification is None
            else:
                with pytest.raises(IntegrityError, match="Recording 'sample'"):
                    store.open("sample")
            fs.pipe_file(path, original)
        assert len(store.open("sample").steps) == 4

    def test_missing_added_and_reordered_entries_are_refused(self, store):
        write_sample(store)
        fs, path = store.files.fs, store.files.path
        entry2, entry3 = fs.cat_file(path("sample", "journal/000002.json")), fs.cat_file(path("sample", "journal/000003.json"))
        fs.rm(path("sample", "journal/000003.json"))
        with pytest.raises(IntegrityError, match="journal entry 3 is missing"):
            store.open("sample")
        fs.pipe_file(path("sample", "journal/000003.json"), entry2)
        fs.pipe_file(path("sample", "journal/000002.json"), entry3)
        with pytest.raises(IntegrityError, match="journal entry 2"):
            store.open("sample")
        fs.pipe_file(path("sample", "journal/000002.json"), entry2)
        fs.pipe_file(path("sample", "journal/000003.json"), entry3)
        fs.pipe_file(path("sample", "journal/000005.json"), entry3)
        with pytest.raises(IntegrityError, match="unexpected journal/000005.json"):
            store.open("sample")
        fs.rm(path("sample", "journal/000005.json"))
        fs.pipe_file(path("sample", "notes.txt"), b"hello")
        with pytest.raises(IntegrityError, match="unexpected file notes.txt"):
            store.open("sample")
        fs.rm(path("sample", "notes.txt"))
        blob = fs.find(path("_blobs"))[0]
        fs.rm(blob)
        with pytest.raises(IntegrityError, match="blob .* is missing"):
            store.open("sample")

    def test_other_key_needs_trust_and_trust_still_checks_bytes(self, store, monkeypatch, tmp_path):
        write_sample(store)
        mine = integrity.key_id(integrity.load_key())
        theirs = use_other_key(monkeypatch, tmp_path)
        colleague = Store(store.url, **store.storage_options)
        with pytest.raises(UntrustedRecordingError, match=f"another key \\({mine}; yours is {theirs}\\).*--trust-key {mine}"):
            colleague.open("sample")
        rec = colleague.open("sample", trust_key=mine)
        assert rec.part(2, "spec") == SPEC and not rec.info.signed_by_me and rec.trusted
        assert colleague.info("sample").signed_by_me is False and colleague.info("sample").trusted is False
        fs = store.files.fs
        for path in store_files(store, "sample"):
            original = fs.cat_file(path)
            flip_byte(fs, path, random.Random(path))
            with pytest.raises(IntegrityError):
                colleague.open("sample", trust_key=mine)
            fs.pipe_file(path, original)

    def test_a_colleagues_verification_never_locks_the_owner_out(self, store, monkeypatch, tmp_path):
        write_sample(store)
        my_key_file = str(integrity.key_path())
        use_other_key(monkeypatch, tmp_path)
        colleague = Store(store.url, **store.storage_options)
        colleague.mark_verified("sample", {"verified": True})          # signed with the colleague's key
        monkeypatch.setenv("JULIUS_KEY_FILE", my_key_file)
        owner = Store(store.url, **store.storage_options)
        with pytest.warns(UserWarning, match="verified.json is signed with another key"):
            rec = owner.open("sample")                                   # no --trust-key needed for my own recording
        assert rec.verification is None and rec.info.signed_by_me

    def test_names_are_validated(self, store):
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", "x" * 129, "_blobs", "é", None, "a\n"]:
            with pytest.raises(ValueError, match="Invalid recording name"):
                store.create(bad, {})
        assert store.create("A.b_c-1" + "x" * 121, {}).close().name == "A.b_c-1" + "x" * 121

    def test_exists_and_not_found(self, store):
        store.create("one", {}).close()
        with pytest.raises(RecordingExistsError, match="'one' already exists"):
            store.create("one", {})
        for call in (store.open, store.info, store.delete):
            with pytest.raises(RecordingNotFoundError, match="No recording 'two'"):
                call("two")
        store.delete("one")
        assert store.list() == []
        store.create("one", {"note": "again"}).close()
        assert store.info("one").note == "again"

    def test_bad_step_data_is_refused_with_a_clear_error(self, store):
        writer = store.create("bad", {})
        with pytest.raises(ValueError, match="step 1 \\(cell\\): not plain JSON"):
            writer.add_step("cell", {"x": math.nan})
        with pytest.raises(ValueError, match="keys must be strings"):
            writer.add_step("cell", {1: "one"})
        with pytest.raises(ValueError, match="part 'p' must be bytes"):
            writer.add_step("cell", {}, {"p": "text"})
        assert writer.add_step("cell", {"source": "s", "x": (1, 2)}) == 1
        assert store.open("bad").steps[0].data == {"source": "s", "x": [1, 2]}

    def test_mark_verified(self, store):
        write_sample(store)
        store.mark_verified("sample", {"verified": True, "steps": 4})
        assert store.info("sample").status == "verified"
        assert store.open("sample").verification["summary"] == {"verified": True, "steps": 4}
        with pytest.raises(RecordingNotFoundError):
            store.mark_verified("missing", {})

    def test_export_import_round_trip(self, store, tmp_path):
        write_sample(store)
        store.mark_verified("sample", {"verified": True})
        original = content(store.open("sample"))
        archive = tmp_path / "sample.jrec"
        store.export("sample", archive)
        with pytest.raises(RecordingExistsError):
            store.import_(archive)
        store.delete("sample")
        store.files.rm(store.files.path("_blobs"))
        assert store.import_(archive) == "sample"
        rec = store.open("sample")
        assert content(rec) == original
        assert rec.info.status == "complete"  # verification is local: it is not exported

    def test_concurrent_create_in_threads(self, store):
        from concurrent.futures import ThreadPoolExecutor

        def attempt(name):
            try:
                store.create(name, {}).close()
                return "won"
            except RecordingExistsError:
                return "lost"

        with ThreadPoolExecutor(8) as pool:
            same = list(pool.map(attempt, ["same"] * 8))
            different = list(pool.map(attempt, [f"r{i}" for i in range(8)]))
        assert sorted(same) == ["lost"] * 7 + ["won"]
        assert different == ["won"] * 8
        assert len(store.list()) == 9


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_writer_processes(url, options, names, steps=20, timeout=60):
    """Run one writer process per name at once; return each one's outcome."""
    code = (
        "import json, sys\n"
        "from julius_magics.recording.store import Store\n"
        "from julius_magics.errors import RecordingExistsError\n"
        "url, options, name, steps = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])\n"
        "store = Store(url, **options)\n"
        "try:\n"
        "    w = store.create(name, {'note': name})\n"
        "except RecordingExistsError:\n"
        "    print('lost'); sys.exit(0)\n"
        "for i in range(steps):\n"
        "    w.add_step('cell', {'source': '', 'i': i, 'by': name}, {'p': bytes([i]) * 100})\n"
        "w.add_blob(b'shared data')\n"
        "w.close()\n"
        "print('won')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url, json.dumps(options), name, str(steps)], stdout=subprocess.PIPE, text=True)
        for name in names
    ]
    return [p.communicate(timeout=timeout)[0].strip() for p in procs]


def wait_for_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def moto_server():
    """A real S3-protocol server (moto's standalone server) on loopback, for as long as the block runs: its
    endpoint URL."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


__all__ = [
    "BLOB",
    "moto_server",
    "SPEC",
    "StoreContract",
    "content",
    "flip_byte",
    "free_port",
    "run_writer_processes",
    "store_files",
    "use_other_key",
    "wait_for_port",
    "write_sample",
]
