"""Ed25519 keys, sealed documents, trusted keys and document schemas (``integrity``, ``keys``, ``schema``)."""

import json
import os
import stat
import warnings

import pytest

from julius_magics import cli
from julius_magics.errors import IntegrityError, RecordingError, UntrustedRecordingError
from julius_magics.recording import integrity, keys, schema

pytestmark = pytest.mark.usefixtures("isolated_key")  # never the user's ~/.julius



@pytest.fixture(autouse=True)
def _no_team_keys(monkeypatch):
    monkeypatch.delenv(keys.TRUSTED_ENV, raising=False)


BODY = {"format": integrity.FORMAT, "name": "x", "n": [1, "é"]}


def sealed(key, **extra):
    return integrity.seal({**BODY, **extra, "key_id": key.fingerprint}, key)


def test_key_is_created_once_with_mode_0600_and_reads_back_the_same(isolated_key):
    assert not isolated_key.exists()
    key = integrity.load_key()
    assert stat.S_IMODE(os.stat(isolated_key).st_mode) == 0o600
    again = integrity.load_key()
    assert (again.fingerprint, again.public_b64) == (key.fingerprint, key.public_b64)
    assert integrity.FINGERPRINT_PATTERN.match(key.fingerprint)
    # a julius-recording/1 key file (64 hex digits) is the same Ed25519 key, and keeps its HMAC secret
    assert integrity.key_id(bytes.fromhex(isolated_key.read_text())) == key.fingerprint
    assert key.legacy_secret == bytes.fromhex(isolated_key.read_text())


def test_pem_key_files_are_read(tmp_path, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    path = tmp_path / "pem.key"
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key = integrity.load_key(path)
    assert key.fingerprint == integrity.fingerprint(private.public_key()) and key.legacy_secret is None
    path.write_text("not a key\n")
    with pytest.raises(RecordingError, match=f"Key file {path}: expected 64 hexadecimal"):
        integrity.load_key(path)


def test_seal_and_unseal_round_trip_and_name_the_signer():
    me = integrity.load_key()
    raw = sealed(me)
    body, mine = integrity.unseal(raw, "doc", me)
    assert body == {**BODY, "key_id": me.fingerprint} and mine is True
    assert set(json.loads(raw)) == set(body) | {"public_key", "signature", "digest"}


def test_a_sealed_document_is_its_canonical_json_and_its_digest_is_what_it_says():
    """The seal encodes each field once and joins them: the bytes are still exactly canonical(document)."""
    me = integrity.load_key()
    body = {**BODY, "key_id": me.fingerprint, "data": {"é": [1.5, {"z": None, "a": "\u2028\"x"}], "b": (1, 2)}}
    raw, digest = integrity.seal_with_digest(body, me)
    document = json.loads(raw)
    assert raw == integrity.canonical(document) + b"\n" and digest == document["digest"]
    assert integrity.unseal_with_digest(raw, "doc", me) == ({**body, "data": {**body["data"], "b": [1, 2]}}, True,
                                                            digest)


@pytest.mark.parametrize("collecting", [True, False])
def test_sealing_leaves_the_garbage_collector_as_it_found_it(collecting):
    """The seal pauses the cyclic collector while it encodes (a big step set off collections that walked every
    object of the kernel), and leaves it on or off as it was, also when the data are refused."""
    import gc

    me = integrity.load_key()
    (gc.enable if collecting else gc.disable)()
    try:
        integrity.seal({**BODY, "key_id": me.fingerprint}, me)
        assert gc.isenabled() is collecting
        with pytest.raises(ValueError):
            integrity.seal({**BODY, "key_id": me.fingerprint, "data": {1: "one"}}, me)
        assert gc.isenabled() is collecting
    finally:
        gc.enable()


@pytest.mark.parametrize("bad", [{1: "one"}, {"a": [{"b": {2: 3}}]}, {"a": ({True: 1},)}, {"a": {None: 1}},
                                 {"a": float("nan")}, {"a": b"bytes"}, {"a": object()}])
def test_only_plain_json_is_sealed(bad):
    me = integrity.load_key()
    with pytest.raises(ValueError, match="^not plain JSON data: "):
        integrity.seal({**BODY, "key_id": me.fingerprint, "data": bad}, me)
    with pytest.raises(ValueError, match="^not plain JSON data: "):
        integrity.canonical(bad)


def test_a_strangers_signature_is_refused_unless_trusted_by_fingerprint():
    me, stranger = integrity.load_key(), integrity.SigningKey.generate()
    raw = sealed(stranger)
    with pytest.raises(UntrustedRecordingError) as refused:
        integrity.unseal(raw, "Recording 'x': manifest.json", me)
    message = str(refused.value)
    assert message == (f"Recording 'x': manifest.json is signed with another key ({stranger.fingerprint}; yours is "
                       f"{me.fingerprint}) that you do not trust: add its author's public key with `julius trust "
                       f"add FILE.pub`, or pass --trust-key {stranger.fingerprint} for this one recording.")
    with pytest.raises(UntrustedRecordingError):
        integrity.unseal(raw, "doc", me, trust={integrity.SigningKey.generate().fingerprint})
    body, mine = integrity.unseal(raw, "doc", me, trust={stranger.fingerprint})
    assert body["key_id"] == stranger.fingerprint and mine is False


def resealed_by(document, key, keep_key_id=None, keep_public=None):
    """A forgery: ``document``'s body signed by ``key``, optionally claiming another key id or public key."""
    body = {k: v for k, v in document.items() if k not in integrity.SEAL_FIELDS}
    body["key_id"] = key.fingerprint
    raw = json.loads(integrity.seal(body, key))
    if keep_key_id:
        raw["key_id"] = keep_key_id
    if keep_public:
        raw["public_key"] = keep_public
    raw.pop("digest")
    raw["digest"] = integrity.sha256_hex(integrity.canonical(raw))
    return integrity.canonical(raw) + b"\n"


def test_forgeries_claiming_the_authors_key_are_refused():
    author, forger = integrity.load_key(), integrity.SigningKey.generate()
    original = json.loads(sealed(author))
    # the forger signs with their key but claims the author's fingerprint, or the author's public key
    claims_id = resealed_by(original, forger, keep_key_id=author.fingerprint)
    with pytest.raises(IntegrityError, match="key_id is not the fingerprint of its public key"):
        integrity.unseal(claims_id, "doc", author, trust=True)
    claims_key = resealed_by(original, forger, keep_key_id=author.fingerprint, keep_public=author.public_b64)
    with pytest.raises(IntegrityError, match=f"signature does not match its key {author.fingerprint}"):
        integrity.unseal(claims_key, "doc", author, trust=True)
    # a changed byte anywhere, digest recomputed: the signature catches it
    changed = dict(original, name="y")
    changed.pop("digest")
    changed["digest"] = integrity.sha256_hex(integrity.canonical(changed))
    with pytest.raises(IntegrityError, match="signature does not match"):
        integrity.unseal(integrity.canonical(changed) + b"\n", "doc", author)


def test_legacy_hmac_documents_need_legacy_hmac_and_your_own_secret():
    me = integrity.load_key()
    body = {"format": integrity.LEGACY_FORMAT, "name": "x", "key_id": integrity.legacy_key_id(me.legacy_secret)}
    raw = integrity.legacy_seal(body, me.legacy_secret)
    with pytest.raises(UntrustedRecordingError, match="old HMAC signature of julius-recording/1.*--legacy-hmac"):
        integrity.unseal(raw, "doc", me, trust=True)
    assert integrity.unseal(raw, "doc", me, legacy_hmac=True) == (body, True)
    other = integrity.SigningKey.generate()
    with pytest.raises(UntrustedRecordingError, match="cannot be checked"):
        integrity.unseal(raw, "doc", other, legacy_hmac=True)
    tampered = json.loads(raw)
    tampered["name"] = "y"
    tampered.pop("digest")
    tampered["digest"] = integrity.sha256_hex(integrity.canonical(tampered))
    with pytest.raises(IntegrityError, match="HMAC does not match"):
        integrity.unseal(integrity.canonical(tampered) + b"\n", "doc", me, legacy_hmac=True)


def test_seal_refuses_a_body_without_its_key_id():
    me = integrity.load_key()
    with pytest.raises(ValueError, match="key_id"):
        integrity.seal(dict(BODY), me)


# --- trusted keys ----------------------------------------------------------------
def write_pub(path, key, comment="alice@laptop"):
    path.write_text(key.public_line(comment) + "\n")
    return path


def test_trust_add_and_list(tmp_path, monkeypatch, capsys):
    alice, bob = integrity.SigningKey.generate(), integrity.SigningKey.generate()
    assert cli.main(["trust", "add", str(write_pub(tmp_path / "alice.pub", alice))]) == 0
    assert capsys.readouterr().out.startswith(f"trusted {alice.fingerprint} alice@laptop")
    assert cli.main(["trust", "add", str(write_pub(tmp_path / "bob.pub", bob)), "--name", "Bob B"]) == 0
    assert cli.main(["trust", "add", str(tmp_path / "alice.pub")]) == 0   # twice: once in the file
    capsys.readouterr()
    lines = keys.trusted_keys_path().read_text().splitlines()
    assert [line.split(None, 2)[2] for line in lines] == ["alice@laptop", "Bob B"]
    assert keys.trusted_fingerprints() == {alice.fingerprint, bob.fingerprint}
    assert cli.main(["trust", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{integrity.load_key().fingerprint}  you"
    assert out[1].startswith(f"{alice.fingerprint}  alice@laptop  (") and out[2].startswith(f"{bob.fingerprint}  Bob B")
    assert cli.main(["trust", "list", "--json"]) == 0
    assert [k["name"] for k in json.loads(capsys.readouterr().out)] == ["alice@laptop", "Bob B"]


def test_team_file_and_bad_lines(tmp_path, monkeypatch):
    carol = integrity.SigningKey.generate()
    team = tmp_path / "team_keys"
    team.write_text(f"# the team\n{carol.public_line('carol')}\nssh-ed25519 garbage\nnonsense\n")
    monkeypatch.setenv(keys.TRUSTED_ENV, f"{tmp_path / 'missing'}{os.pathsep}{team}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = keys.load_trusted_keys()
    assert [(k.fingerprint, k.name, k.source) for k in found] == [(carol.fingerprint, "carol", str(team))]
    assert any(f"{team}:3" in str(w.message) for w in caught)


def test_trust_add_of_a_bad_file_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.pub").write_text("hello\n")
    assert cli.main(["trust", "add", str(tmp_path / "bad.pub")]) == 2
    err = capsys.readouterr().err
    assert err == f"julius trust: {tmp_path / 'bad.pub'}: no Ed25519 public key (expected a line `ssh-ed25519 AAAA... NAME`, as `julius key` prints).\n"
    assert cli.main(["trust", "add", str(tmp_path / "missing.pub")]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_julius_key_prints_a_public_key_that_trust_add_reads(tmp_path, capsys):
    assert cli.main(["key"]) == 0
    line, fp_line = capsys.readouterr().out.splitlines()
    me = integrity.load_key()
    assert line.startswith("ssh-ed25519 ") and fp_line.startswith(f"fingerprint {me.fingerprint}")
    assert cli.main(["key", "--public"]) == 0
    pub = tmp_path / "me.pub"
    pub.write_text(capsys.readouterr().out)
    assert pub.read_text().count("\n") == 1
    key, _ = keys.read_public_key(pub.read_text(), str(pub))
    assert integrity.fingerprint(key) == me.fingerprint


def test_check_fingerprint():
    fp = integrity.SigningKey.generate().fingerprint
    assert keys.check_fingerprint(fp.upper()) == fp
    with pytest.raises(ValueError, match="--trust-key 'abc' is not a key fingerprint"):
        keys.check_fingerprint("abc")


# --- schemas ---------------------------------------------------------------------
def manifest(**changes):
    body = {"format": integrity.FORMAT, "name": "x", "created": "2026-12-01T00:00:00Z", "closed": None,
            "status": "incomplete", "meta": {"note": "n", "workers": 2}, "key_id": "0" * 32, "steps": 0,
            "journal": [], "chain_head": None, "parts": {}, "blobs": {}, "size": 0}
    body.update(changes)
    return body


@pytest.mark.parametrize("changes, message", [
    ({"created": None}, "at created: None is not valid under any of the given schemas|at created: None is not of type 'string'"),
    ({"created": 5}, "at created: 5 is not of type 'string'"),
    ({"steps": -1}, "at steps: -1 is less than the minimum of 0"),
    ({"status": "done"}, "at status: 'done' is not one of"),
    ({"meta": []}, "at meta: \\[\\] is not of type 'object'"),
    ({"meta": {"workers": "4"}}, "at meta/workers: '4' is not of type 'integer', 'null'"),
    ({"blobs": {"abc": 1}}, "at blobs: 'abc' does not match"),
    ({"journal": ["x" * 5000]}, "at journal/0: 'xxx.*\\.\\.\\.\\.$"),
])
def test_manifest_of_the_wrong_shape_is_one_line(changes, message):
    with pytest.raises(IntegrityError, match=f"^Recording 'x': manifest.json is malformed: (?:{message})") as error:
        schema.check(manifest(**changes), "manifest", "Recording 'x': manifest.json")
    assert "\n" not in str(error.value) and len(str(error.value)) < 220


def test_schema_accepts_good_documents_and_names_unknown_formats():
    assert schema.check(manifest(), "manifest", "m") == manifest()
    legacy = manifest(format=integrity.LEGACY_FORMAT, key_id="0" * 16)
    assert schema.check(legacy, "manifest", "m") == legacy
    with pytest.raises(RecordingError, match="m has format 'julius-recording/3'; this julius_magics reads"):
        schema.check(manifest(format="julius-recording/3"), "manifest", "m")
    with pytest.raises(IntegrityError, match="at key_id"):
        schema.check(manifest(key_id="0" * 16), "manifest", "m")   # a legacy key id in a new document
