"""Fuzz: damaged and forged recordings either read back exactly or give one clear line.

Each case applies one random mutation to a real recording's files or to a
real ``.jrec`` archive: a byte-level change (bit flip, truncation, deletion,
duplication, insertion, swap, no-op rewrite), a forgery (a document changed
and signed again with the author's key, with a stranger's key, or with a
stranger's key claiming the author's), a manifest of the wrong shape, a
rollback to an earlier manifest, or a bad verification sidecar. Opening,
importing, ``show``, ``list``, ``diff``, ``env`` and ``replay`` must then give
the original content or a ``JuliusError`` with a one-line message, never
another exception, and never a stranger's recording as trusted.

The seed is random on each run and printed (shown when a test fails); rerun a
failure with ``JULIUS_FUZZ_SEED=<seed>``.
"""

import base64
import collections
import io
import json
import os
import random
import time
import uuid
import warnings
import zipfile

import pytest

from julius_magics import cli
from julius_magics.errors import JuliusError, UntrustedRecordingError
from julius_magics.recording import integrity
from julius_magics.recording.store import Store
from tests.recording.store_contract import content, write_sample
from tests.support import run_cli

pytestmark = pytest.mark.usefixtures("isolated_key")  # never the user's ~/.julius

SEED = int(os.environ.get("JULIUS_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
RECORDING_CASES = 1200
ARCHIVE_CASES = 800
FORGERY_CASES = 2000
SLOW_CASE = 30.0   # seconds: a case taking longer counts as a hang


def rng_for(offset):
    print(f"JULIUS_FUZZ_SEED={SEED}")   # pytest shows it when the test fails
    return random.Random(SEED + offset)


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
    """Apply one random byte-level mutation to the stored files; return its description."""
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
    what = f"{what} (JULIUS_FUZZ_SEED={SEED})"
    try:
        got = content(attempt())
    except JuliusError as error:
        outcomes[type(error).__name__] += 1
        assert str(error) and "\n" not in str(error), f"{what}: message should be one line: {error!r}"
        return None
    except Exception as error:  # noqa: BLE001  (the point of the test)
        raise AssertionError(f"{what}: raised {type(error).__name__}: {error}") from error
    assert got == expected, f"{what}: opened with different content"
    outcomes["identical"] += 1
    return got


def test_fuzz_recording_files():
    rng = rng_for(0)
    store = Store(f"memory://fuzz-{uuid.uuid4().hex}")
    write_sample(store)
    store.mark_verified("sample", {"verified": True})
    fs = store.files.fs
    snapshot = {p: fs.cat_file(p) for p in fs.find(store.files.root)}
    expected = content(store.open("sample"))
    outcomes = collections.Counter()
    for case in range(RECORDING_CASES):
        what = f"case {case}: " + mutate_recording(fs, snapshot, rng)
        check(outcomes, expected, lambda: store.open("sample"), what)
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
    rng = rng_for(1)
    source = Store(f"memory://fuzz-{uuid.uuid4().hex}")
    write_sample(source)
    source.export("sample", tmp_path / "sample.jrec")
    original = (tmp_path / "sample.jrec").read_bytes()
    expected = content(source.open("sample"))
    target = Store(f"memory://fuzz-{uuid.uuid4().hex}")
    archive = tmp_path / "mutated.jrec"
    outcomes = collections.Counter()

    def import_and_open():
        name = target.import_(archive)
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


# --- forgeries ---------------------------------------------------------------------
JUNK = [None, 0, -1, 2**70, 1.5, "", "x" * 300, "2026-12-01T00:00:00Z", [], [None], {}, {"a": {"b": []}}, True,
        "0" * 64, "0" * 32]


def junk(rng):
    return rng.choice(JUNK)


def body_of(raw):
    """The signed body of a sealed document, whoever signed it (no check: we forge)."""
    return {k: v for k, v in json.loads(raw).items() if k not in integrity.SEAL_FIELDS + ("mac",)}


def sign(body, key, claim=None):
    """``body`` signed by ``key`` as a sealed document; with ``claim`` (another SigningKey), pretending to be that key."""
    if not isinstance(body, dict):
        return integrity.canonical(body) + b"\n"
    doc = {k: v for k, v in body.items() if k not in ("signature", "digest")}
    doc.update(key_id=key.fingerprint, public_key=key.public_b64)
    doc["signature"] = base64.b64encode(key.sign(integrity.canonical(doc))).decode()
    if claim is not None:
        doc["key_id"] = claim.fingerprint
        if random.random() < 0.5:
            doc["public_key"] = claim.public_b64
    doc["digest"] = integrity.sha256_hex(integrity.canonical(doc))
    return integrity.canonical(doc) + b"\n"


def mutate_json(value, rng, depth=0):
    """A copy of ``value`` with one random change somewhere inside."""
    if isinstance(value, dict) and value and depth < 4 and rng.random() < 0.7:
        key = rng.choice(sorted(value))
        out = dict(value)
        choice = rng.random()
        if choice < 0.15:
            del out[key]
        elif choice < 0.25:
            out[rng.choice(["extra", "mac", "signature", "__proto__"])] = junk(rng)
        else:
            out[key] = mutate_json(value[key], rng, depth + 1)
        return out
    if isinstance(value, list) and value and depth < 4 and rng.random() < 0.7:
        out = list(value)
        i = rng.randrange(len(out))
        if rng.random() < 0.3:
            del out[i]
        else:
            out[i] = mutate_json(out[i], rng, depth + 1)
        return out
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
        return value + rng.choice([-1, 1, 1000])
    return junk(rng)


def resign_all(fs, store, name, snapshot, key):
    """Sign every document of recording ``name`` again with ``key``, chain and hashes recomputed: a consistent forgery."""
    base = store.files.path(name)
    entries = sorted(p for p in snapshot if p.startswith(f"{base}/journal/"))
    manifest = body_of(snapshot[f"{base}/manifest.json"])
    prev = integrity.chain_start(name, manifest["created"])
    journal = []
    for path in entries:
        raw = integrity.seal({**body_of(snapshot[path]), "prev": prev, "key_id": key.fingerprint}, key)
        fs.pipe_file(path, raw)
        prev = integrity.document_digest(raw)
        journal.append(integrity.sha256_hex(raw))
    manifest.update(journal=journal, chain_head=prev, key_id=key.fingerprint)
    manifest_raw = integrity.seal(manifest, key)
    fs.pipe_file(f"{base}/manifest.json", manifest_raw)
    closed = f"{base}/closed.json"
    if closed in snapshot:
        fs.pipe_file(closed, integrity.seal({**body_of(snapshot[closed]), "chain_head": prev,
                                             "key_id": key.fingerprint}, key))
    verified = f"{base}/verified.json"
    if verified in snapshot:
        fs.pipe_file(verified, integrity.seal({**body_of(snapshot[verified]), "key_id": key.fingerprint,
                                               "manifest_sha256": integrity.sha256_hex(manifest_raw)}, key))


def forge(fs, store, snapshot, early_manifest, author, stranger, rng):
    """Apply one forgery to recording 'sample'; return ``(description, signed only by the author)``."""
    base = store.files.path("sample")
    docs = sorted(p for p in snapshot if p.startswith(base) and p.endswith(".json"))
    kind = rng.choice(["doc", "doc", "doc", "shape", "shape", "resign", "rollback", "sidecar", "bytes"])
    if kind == "bytes":
        return mutate_recording(fs, snapshot, rng), True
    if kind == "resign":
        resign_all(fs, store, "sample", snapshot, stranger)
        return "every document signed again by a stranger", False
    if kind == "rollback":
        fs.pipe_file(f"{base}/manifest.json", early_manifest)
        how = "manifest rolled back to an incomplete one"
        if rng.random() < 0.5:
            fs.rm(f"{base}/journal/000004.json")
            how += ", last entry dropped"
        if rng.random() < 0.5 and fs.exists(f"{base}/closed.json"):
            fs.rm(f"{base}/closed.json")
            how += ", closed marker deleted"
        return how, True
    if kind == "sidecar":
        path = f"{base}/verified.json"
        body = body_of(snapshot[path])
        choice = rng.choice(["garbage", "stranger", "mutated", "other"])
        if choice == "garbage":
            fs.pipe_file(path, rng.choice([b"", b"{}", b"null\n", rng.randbytes(40)]))
        elif choice == "stranger":
            fs.pipe_file(path, sign(body, stranger))
        elif choice == "mutated":
            fs.pipe_file(path, sign(mutate_json(body, rng), author))
        else:
            fs.pipe_file(path, sign({**body, "manifest_sha256": "0" * 64}, author))
        return f"verified.json {choice}", True
    path = rng.choice(docs) if kind == "doc" else f"{base}/manifest.json"
    body = body_of(snapshot[path])
    if kind == "shape":   # a field of the wrong type, validly signed
        field = rng.choice(sorted(body))
        body = {**body, field: junk(rng)}
    else:
        body = mutate_json(body, rng)
    signer = rng.choice(["author", "author", "stranger", "claims author"])
    key, claim = (author, None) if signer == "author" else (stranger, author if signer == "claims author" else None)
    fs.pipe_file(path, sign(body, key, claim))
    return f"{kind} {path.rsplit('/', 2)[-2:]} signed by {signer}", signer == "author"


@pytest.fixture(scope="module")
def cluster_address():
    """One small in-process cluster that every fuzzed replay connects to (no cluster start per case)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_fuzz_forgeries_over_every_reader(cluster_address):
    """≥ 2000 forgeries: Store.open, show, list, diff, env and replay never crash, hang or trust a stranger."""
    rng = rng_for(2)
    author, stranger = integrity.load_key(), integrity.SigningKey.generate()
    store = Store(f"memory://fuzz-{uuid.uuid4().hex}")
    sample = write_sample(store, close=False)
    early_manifest = store.files.read(store.files.path("sample", "manifest.json"))
    sample["writer"].close()
    store.mark_verified("sample", {"verified": True})
    write_sample(store, "other")
    fs = store.files.fs
    snapshot = {p: fs.cat_file(p) for p in fs.find(store.files.root)}
    expected = content(store.open("sample"))
    outcomes, readers = collections.Counter(), collections.Counter()
    for case in range(FORGERY_CASES):
        started = time.monotonic()
        how, author_only = forge(fs, store, snapshot, early_manifest, author, stranger, rng)
        what = f"forgery case {case}: {how} (JULIUS_FUZZ_SEED={SEED})"
        try:
            recording = store.open("sample")
        except JuliusError as error:
            outcomes[type(error).__name__] += 1
            assert str(error) and "\n" not in str(error), f"{what}: message should be one line: {error!r}"
            recording = None
        except Exception as error:  # noqa: BLE001
            raise AssertionError(f"{what}: Store.open raised {type(error).__name__}: {error}") from error
        if recording is not None:
            assert recording.info.signed_by_me, f"{what}: opened a recording not signed by the reader"
            same = content(recording) == expected
            outcomes["identical" if same else "author's forgery"] += 1
            assert same or author_only, f"{what}: opened with different content"
            if recording.verification is not None:   # the last replay's sidecar: verified when it says so
                matched = recording.verification["summary"].get("verified") is True
                assert (recording.info.status == "verified") == matched, what
        readers_now = [["show", "sample"], ["list"], ["diff", "sample", "other"], ["env", "sample"]]
        if case % 5 == 0:
            readers_now += [["show", "sample", "--json"], ["list", "--json"]]
        for argv in readers_now:
            code, out, err = run_cli("--store", store.url, *argv)
            readers[(argv[0], code)] += 1
            allowed = (0, 1, 2, 4) if argv[0] == "diff" else (0, 2, 4)   # diff: 1 when they differ
            assert "Traceback" not in out + err and code in allowed, f"{what}: julius {argv}: {code} {err}"
            lines = err.splitlines()   # warnings (an ignored sidecar) and the error: one line each
            assert all(line.startswith(f"julius {argv[0]}: ") for line in lines), f"{what}: {err!r}"
            assert code in (0, 1) or lines, f"{what}: julius {argv} failed without saying why"
        if how in ("verified.json garbage", "verified.json stranger", "verified.json other"):
            listed = {info.name: info for info in store.list()}
            assert listed["sample"].status == "complete", f"{what}: a bad sidecar shows as {listed['sample'].status}"
        if recording is None or rng.random() < 0.05 or not same:
            code, out, err = run_cli("--store", store.url, "replay", "sample", "--address", cluster_address)
            readers[("replay", code)] += 1
            assert "Traceback" not in out + err and code != 0, f"{what}: julius replay: {code} {out} {err}"
        assert time.monotonic() - started < SLOW_CASE, f"{what}: took {time.monotonic() - started:.0f}s"
        restore(store, snapshot)
    print(f"\n{FORGERY_CASES} forgeries: {dict(outcomes)}\nreaders: {dict(readers)}")
    assert outcomes["IntegrityError"] > FORGERY_CASES // 3
    assert outcomes["UntrustedRecordingError"] > 0 and outcomes["identical"] > 0


def test_a_consistent_forgery_by_a_stranger_is_untrusted_even_for_readers(cluster_address):
    author, stranger = integrity.load_key(), integrity.SigningKey.generate()
    store = Store(f"memory://fuzz-{uuid.uuid4().hex}")
    write_sample(store)
    fs = store.files.fs
    snapshot = {p: fs.cat_file(p) for p in fs.find(store.files.root)}
    resign_all(fs, store, "sample", snapshot, stranger)
    with pytest.raises(UntrustedRecordingError, match=f"another key \\({stranger.fingerprint}; yours is {author.fingerprint}\\)"):
        store.open("sample")
    code, out, err = run_cli("--store", store.url, "replay", "sample", "--address", cluster_address)
    assert code == cli.EXIT_REFUSED and f"--trust-key {stranger.fingerprint}" in err
    code, out, err = run_cli("--store", store.url, "show", "sample")
    assert code == 0 and f"signed by {stranger.fingerprint} (not trusted)" in out
