"""Blobs written from a stream of chunks: checked against the expected SHA-256 before they are committed."""

import hashlib
import os
import tracemalloc
import uuid

import pytest

from julius_magics.errors import IntegrityError
from julius_magics.recording.store import Store

pytestmark = pytest.mark.usefixtures("isolated_key")

CHUNK = 1 << 20


def chunks_of(data, size=CHUNK):
    for offset in range(0, len(data), size):
        yield data[offset:offset + size]


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        yield Store(tmp_path / "store")
        return
    store = Store(f"memory://julius-streamed-{uuid.uuid4().hex}")
    yield store
    store.files.rm(store.files.root)


def blob_names(store):
    return sorted(store.files.names(store.files.path("_blobs")))


def test_a_stream_is_stored_under_its_hash_and_reads_back_equal(store):
    data = os.urandom(3 * CHUNK + 123)
    sha = hashlib.sha256(data).hexdigest()
    writer = store.create("streamed", {})
    assert writer.add_blob(chunks_of(data), sha256=sha, size=len(data)) == sha
    writer.add_step("cell", {"source": "x"})
    writer.close()
    rec = store.open("streamed")
    assert rec.blobs == {sha: len(data)} and rec.blob(sha) == data


def test_a_stream_that_does_not_hash_as_expected_is_never_committed(store, tmp_path):
    data = os.urandom(2 * CHUNK)
    sha = hashlib.sha256(data).hexdigest()
    changed = data[:CHUNK] + b"\0" * CHUNK   # the second half changed while it was being read
    writer = store.create("wrong", {})
    with pytest.raises(IntegrityError, match="changed while it was being copied"):
        writer.add_blob(chunks_of(changed), sha256=sha, size=len(data))
    with pytest.raises(IntegrityError, match=f"more than {len(data)} bytes"):
        writer.add_blob(chunks_of(data + b"grown"), sha256=sha, size=len(data))
    assert blob_names(store) == []
    if store.url.startswith("/"):
        assert os.listdir(os.path.join(store.url, "_tmp")) == []   # no half-written temporary file either
    writer.close()
    assert store.open("wrong").blobs == {}


def test_a_blob_the_store_holds_is_not_read_again(store):
    data = b"already stored" * 1000
    sha = hashlib.sha256(data).hexdigest()
    store.create("first", {}).add_blob(data)
    taken = []

    def stream():
        try:
            for chunk in chunks_of(data, 100):
                taken.append(len(chunk))
                yield chunk
        finally:
            taken.append("closed")

    writer = store.create("second", {})
    assert writer.add_blob(stream(), sha256=sha, size=len(data)) == sha
    assert taken == []   # never started: nothing fetched from where it was read
    writer.add_step("cell", {"source": "x"})
    writer.close()
    assert store.open("second").blobs == {sha: len(data)}


def test_a_known_file_is_hashed_once_while_it_is_copied(tmp_path):
    data = os.urandom(4 * CHUNK)
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    store = Store(tmp_path / "store")
    writer = store.create("file", {})
    assert writer.add_blob(path, sha256=sha, size=len(data)) == sha
    path.write_bytes(data[::-1])   # changed since its hash was taken: refused, not stored under that hash
    other = store.create("changed", {})
    with pytest.raises(IntegrityError):
        other.add_blob(path, sha256=hashlib.sha256(data[:-1]).hexdigest(), size=len(data))
    assert blob_names(store) == [sha]


def test_a_stream_without_its_hash_is_refused(store):
    writer = store.create("nohash", {})
    with pytest.raises(ValueError, match="sha256= and size="):
        writer.add_blob(chunks_of(b"abc"))


def test_a_large_stream_never_sits_whole_in_memory(tmp_path):
    size = 64 * CHUNK
    block = os.urandom(CHUNK)
    sha = hashlib.sha256(block * 64).hexdigest()
    store = Store(tmp_path / "store")
    writer = store.create("big", {})
    tracemalloc.start()
    writer.add_blob((bytes(block) for _ in range(64)), sha256=sha, size=size)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * CHUNK
    assert os.path.getsize(tmp_path / "store" / "_blobs" / sha) == size
