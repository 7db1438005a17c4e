"""Fuzz: damaged recordings and archives either read back exactly or raise a JuliusError.

Each case applies one seeded random mutation (bit flip, truncation, deletion,
duplication, insertion, swap, or a no-op rewrite) to a real recording's files
or to a real ``.jrec`` archive. Opening (or importing) it must then give the
original content, byte for byte, or raise a ``JuliusError`` subclass; any
other exception, or different content, fails the test.
"""

import collections
import io
import random
import uuid
import zipfile

import pytest

from julius_magics.errors import JuliusError
from julius_magics.recording.store import Store
from tests.recording.store_contract import content, write_sample

pytestmark = pytest.mark.usefixtures("isolated_key")  # never the user's ~/.julius


RECORDING_CASES = 1200
ARCHIVE_CASES = 800


def mutate_bytes(data, rng):
    """Return ``(kind, mutated bytes)``; some kinds may leave ``data`` unchanged."""
    kind = rng.choice(["flip", "truncate", "insert", "delete_range", "duplicate_range", "append", "same_byte"])
    data = bytearray(data)
    i = rng.randrange(len(data)) if data else 0
    if kind == "flip" and data:
        data[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[i:]
    elif kind == "insert":
        data.insert(i, rng.randrange(256))
    elif kind == "delete_range":
        del data[i : i + rng.randint(1, 64)]
    elif kind == "duplicate_range":
        data[i:i] = data[i : i + rng.randint(1, 64)]
    elif kind == "append":
        data += rng.randbytes(rng.randint(1, 16))
    elif kind == "same_byte" and data:
        data[i] = data[i]
    return kind, bytes(data)


def mutate_recording(fs, snapshot, rng):
    """Apply one random mutation to the stored files; return its description."""
    paths = sorted(snapshot)
    path = rng.choice(paths)
    kind = rng.choice(["bytes", "bytes", "bytes", "delete", "copy_over", "copy_new", "swap", "rewrite"])
    if kind == "bytes":
        how, data = mutate_bytes(snapshot[path], rng)
        fs.pipe_file(path, data)
        return f"{how} {path}"
    if kind == "delete":
        fs.rm(path)
    elif kind == "copy_over":
        fs.pipe_file(path, snapshot[rng.choice(paths)])
    elif kind == "copy_new":
        folder = path.rsplit("/", 1)[0]
        new = rng.choice(["000005.json", "000009.json", "0" * 63 + "1", "extra.json", "manifest.json.bak"])
        fs.pipe_file(f"{folder}/{new}", snapshot[path])
        return f"copy {path} to {folder}/{new}"
    elif kind == "swap":
        other = rng.choice(paths)
        fs.pipe_file(path, snapshot[other])
        fs.pipe_file(other, snapshot[path])
        return f"swap {path} {other}"
    elif kind == "rewrite":
        fs.pipe_file(path, snapshot[path])
    return f"{kind} {path}"


def restore(store, snapshot):
    store.files.rm(store.files.root)
    for path, data in snapshot.items():
        store.files.fs.pipe_file(path, data)


def check(outcomes, expected, attempt, what):
    """Run ``attempt`` (which returns a Recording); tally the outcome; fail on anything but exact content or a JuliusError."""
    try:
        got = content(attempt())
    except JuliusError as error:
        outcomes[type(error).__name__] += 1
        assert str(error) and "\n" not in str(error), f"{what}: message should be one line: {error!r}"
        return
    except Exception as error:  # noqa: BLE001  (the point of the test)
        raise AssertionError(f"{what}: raised {type(error).__name__}: {error}") from error
    assert got == expected, f"{what}: opened with different content"
    outcomes["identical"] += 1


def test_fuzz_recording_files():
    rng = random.Random(20261129)
    store = Store(f"memory://fuzz-{uuid.uuid4().hex}")
    write_sample(store)
    store.mark_verified("sample", {"verified": True})
    fs = store.files.fs
    snapshot = {p: fs.cat_file(p) for p in fs.find(store.files.root)}
    expected = content(store.open("sample"))
    outcomes = collections.Counter()
    for case in range(RECORDING_CASES):
        what = f"case {case}: " + mutate_recording(fs, snapshot, rng)
        check(outcomes, expected, lambda: store.open("sample", trust=rng.random() < 0.3), what)
        restore(store, snapshot)
    print(f"\n{RECORDING_CASES} recording mutations: {dict(outcomes)}")
    assert outcomes["IntegrityError"] > RECORDING_CASES // 2 and outcomes["identical"] > 0


def mutate_archive(data, rng):
    """Mutate the archive's bytes, or rebuild it with one member changed, dropped, duplicated or added."""
    if rng.random() < 0.6:
        return mutate_bytes(data, rng)[1]
    source = zipfile.ZipFile(io.BytesIO(data))
    members = [(info.filename, source.read(info)) for info in source.infolist()]
    i = rng.randrange(len(members))
    kind = rng.choice(["drop", "duplicate", "change", "rename", "add"])
    if kind == "drop":
        del members[i]
    elif kind == "duplicate":
        members.insert(i, members[i])
    elif kind == "change":
        members[i] = (members[i][0], mutate_bytes(members[i][1], rng)[1])
    elif kind == "rename":
        members[i] = (rng.choice(["recording/journal/000007.json", "blobs/" + "0" * 64, "../evil", "recording/x"]), members[i][1])
    else:
        members.append((members[i][0].rsplit("/", 1)[0] + "/extra", b"{}"))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name, member in members:
            target.writestr(name, member)
    return out.getvalue()


def test_fuzz_archives(tmp_path):
    import warnings

    rng = random.Random(7)
    source = Store(f"memory://fuzz-{uuid.uuid4().hex}")
    write_sample(source)
    source.export("sample", tmp_path / "sample.jrec")
    original = (tmp_path / "sample.jrec").read_bytes()
    expected = content(source.open("sample"))
    target = Store(f"memory://fuzz-{uuid.uuid4().hex}")
    archive = tmp_path / "mutated.jrec"
    outcomes = collections.Counter()

    def import_and_open():
        name = target.import_(archive, trust=rng.random() < 0.3)
        assert name == "sample"
        return target.open(name)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names while rebuilding
        for case in range(ARCHIVE_CASES):
            archive.write_bytes(mutate_archive(original, rng))
            check(outcomes, expected, import_and_open, f"archive case {case}")
            target.files.rm(target.files.root)
    print(f"\n{ARCHIVE_CASES} archive mutations: {dict(outcomes)}")
    assert outcomes["IntegrityError"] > ARCHIVE_CASES // 2 and outcomes["identical"] > 0
