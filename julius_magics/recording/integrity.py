"""Keys, hashes and sealed JSON documents: how a recording proves its bytes and its author.

Every JSON document of a recording (manifest, journal entry, closed marker,
verification sidecar) is *sealed*: its body gets three fields,

``public_key``
    the signer's Ed25519 public key (32 bytes, base64), whose fingerprint is
    the body's ``key_id``;
``signature``
    Ed25519 signature of the canonical body plus ``public_key`` (base64);
``digest``
    SHA-256 of the canonical document *with* ``public_key`` and
    ``signature`` (what the journal chains on).

The file holds exactly ``canonical(document) + b"\\n"``; any other byte
sequence, even one that parses to the same JSON, is refused.

Anyone can check a signature; whether its key is *accepted* is the reader's
choice (``trust``): its own key, the keys it trusts (``recording/keys.py``),
or, for pickle-free reading only, any key.

The private key is an Ed25519 key in ``$JULIUS_KEY_FILE`` or ``~/.julius/key``
(created on first use, mode 0600): 64 hex digits (the 32-byte private key,
the format of julius-recording/1's HMAC keys, so an existing key file becomes
its owner's Ed25519 key) or a PKCS#8 PEM file. It never enters a store.

Documents of the previous format (``julius-recording/1``) carry an HMAC
``mac`` instead; they are read only with ``legacy_hmac=True`` and only when
the reader's key file holds the secret that made them.

Nothing here unpickles anything; it reads JSON and hashes bytes.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .. import collector
from ..errors import IntegrityError, RecordingError, UntrustedRecordingError

FORMAT = "julius-recording/2"
LEGACY_FORMAT = "julius-recording/1"   # HMAC-sealed: read only with legacy_hmac=True
FORMATS = (FORMAT, LEGACY_FORMAT)
KEY_ENV = "JULIUS_KEY_FILE"
CHUNK = 1 << 20  # bytes read at a time when hashing or copying large data
FINGERPRINT_PATTERN = re.compile(r"[0-9a-f]{32}\Z")
_LEGACY_KEY_ID = re.compile(r"[0-9a-f]{16}\Z")
SEAL_FIELDS = ("public_key", "signature", "digest")


# --- keys --------------------------------------------------------------------
def key_path():
    """Return the path of the signing key: ``$JULIUS_KEY_FILE`` or ``~/.julius/key``."""
    named = os.environ.get(KEY_ENV)
    return Path(named).expanduser() if named else Path.home() / ".julius" / "key"


def public_bytes(public_key):
    """The 32 raw bytes of an Ed25519 public key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key):
    """Return a public key's fingerprint: the first 32 hex digits (128 bits) of SHA-256 of its raw bytes.

    ``public_key`` is an ``Ed25519PublicKey`` or its 32 raw bytes.
    """
    raw = public_key if isinstance(public_key, bytes) else public_bytes(public_key)
    return hashlib.sha256(raw).hexdigest()[:32]


class SigningKey:
    """The user's Ed25519 private key, with its public half and fingerprint.

    Attributes
    ----------
    public_key : Ed25519PublicKey
    public_b64 : str
        The raw public key in base64, as documents carry it.
    fingerprint : str
        32 hex digits naming the key (a document's ``key_id``).
    legacy_secret : bytes or None
        The 32 bytes of a hex key file: the HMAC key of julius-recording/1
        documents written with this key file. ``None`` for PEM key files.
    path : Path or None
    """

    def __init__(self, private_key, legacy_secret=None, path=None):
        self._private = private_key
        self.public_key = private_key.public_key()
        self.public_b64 = base64.b64encode(public_bytes(self.public_key)).decode("ascii")
        self.fingerprint = fingerprint(self.public_key)
        self.legacy_secret = legacy_secret
        self.path = path

    @classmethod
    def from_seed(cls, seed, path=None):
        """The key whose 32-byte private value is ``seed`` (also its legacy HMAC secret)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed), legacy_secret=bytes(seed), path=path)

    @classmethod
    def generate(cls):
        """A fresh random key (not written anywhere)."""
        return cls.from_seed(secrets.token_bytes(32))

    def sign(self, data):
        """Ed25519 signature of ``data`` (bytes)."""
        return self._private.sign(data)

    def public_line(self, comment="julius"):
        """The public key as one OpenSSH line (``ssh-ed25519 AAAA... comment``), for ``FILE.pub``."""
        line = self.public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return line.decode("ascii") + (f" {comment}" if comment else "")

    def __repr__(self):
        return f"<SigningKey {self.fingerprint}>"


def load_key(path=None):
    """Read the signing key, creating it (mode 0600) on first use.

    Parameters
    ----------
    path : path-like, optional
        Key file; default :func:`key_path`.

    Returns
    -------
    SigningKey

    Raises
    ------
    RecordingError
        The file exists but holds neither 64 hexadecimal characters nor an
        Ed25519 private key in PEM.
    """
    path = Path(path) if path is not None else key_path()
    if not path.exists():
        _create_key_file(path)
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as error:
            raise RecordingError(f"Key file {path}: not a readable unencrypted PEM private key ({error}).") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise RecordingError(f"Key file {path}: holds a {type(private).__name__}, not an Ed25519 key.")
        return SigningKey(private, path=path)
    try:
        seed = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        seed = b""
    if len(seed) != 32:
        raise RecordingError(
            f"Key file {path}: expected 64 hexadecimal characters (an Ed25519 private key) or a PEM private key."
        )
    return SigningKey.from_seed(seed, path=path)


def _create_key_file(path):
    """Write a new random key to ``path`` unless another process got there first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # atomic and exclusive: concurrent first uses agree on one key
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def key_id(key):
    """Return the public name of ``key``: its fingerprint (see :func:`fingerprint`).

    ``key`` is a :class:`SigningKey`, an ``Ed25519PublicKey`` or the 32-byte
    private value of a hex key file.

    >>> key_id(bytes(32))
    '139e3940e64b5491722088d9a0d74162'
    """
    if isinstance(key, SigningKey):
        return key.fingerprint
    if isinstance(key, Ed25519PublicKey):
        return fingerprint(key)
    return SigningKey.from_seed(bytes(key)).fingerprint


def legacy_key_id(secret):
    """The ``key_id`` that julius-recording/1 gave an HMAC secret: 16 hex digits of its SHA-256."""
    return hashlib.sha256(secret).hexdigest()[:16]


# --- canonical JSON and hashes -------------------------------------------------
def sha256_hex(data):
    """SHA-256 of ``data`` (bytes) as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def canonical(obj):
    """Encode ``obj`` as canonical JSON bytes (sorted keys, no spaces, UTF-8).

    >>> canonical({"b": 1, "a": [1.5, "é"]})
    b'{"a":[1.5,"\\xc3\\xa9"],"b":1}'

    Raises
    ------
    ValueError
        ``obj`` is not plain JSON (NaN, infinity, bytes, objects, non-string keys).
    """
    return _plain_dumps(obj).encode("utf-8")


def _plain_dumps(obj):
    """The canonical text of ``obj``, refusing what JSON cannot give back as it was (ValueError)."""
    try:
        text = _text(obj)
    except (TypeError, ValueError, RecursionError) as error:
        raise ValueError(f"not plain JSON data: {error}") from None
    # json.dumps silently turns int/float/bool/None keys into strings: refuse them,
    # or the data read back would differ from the data written.
    if isinstance(obj, (dict, list, tuple)):
        _check_keys(obj)
    return text


def _check_keys(obj):
    """Raise ``ValueError`` if a dict anywhere in ``obj`` (JSON-encodable, so acyclic) has a non-string key."""
    todo = [obj]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise ValueError("not plain JSON data: dictionary keys must be strings")
                if isinstance(v, (dict, list, tuple)):
                    todo.append(v)
        elif isinstance(item, (list, tuple)):
            todo.extend(v for v in item if isinstance(v, (dict, list, tuple)))


def _dumps(obj):
    """``canonical`` of a value read by ``json.loads`` (plain JSON by construction: no key check)."""
    return _text(obj).encode("utf-8")


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_text = _ENCODER.encode   # json.dumps with these options, without making an encoder each call


def _joined(fields, leave_out=()):
    """Canonical bytes of a dict from the canonical ``"key":value`` text of each of its fields.

    ``json.dumps(sort_keys=True)`` writes a dict as its fields in key order joined by commas,
    so a document is encoded once, and its signed and hashed forms (without ``signature``
    or ``digest``) are joined from the same pieces.
    """
    return ("{" + ",".join(fields[k] for k in sorted(fields) if k not in leave_out) + "}").encode("utf-8")


# --- sealing -------------------------------------------------------------------
def seal(body, key):
    """Return the file bytes of ``body`` signed with ``key`` (adds ``public_key``, ``signature``, ``digest``).

    Parameters
    ----------
    body : dict
        Plain JSON; must carry ``key_id`` equal to ``key``'s fingerprint, so a
        reader can name the signer before checking anything.
    key : SigningKey
    """
    return seal_with_digest(body, key)[0]


def seal_with_digest(body, key):
    """:func:`seal`, and the document's ``digest`` (what the next journal entry chains on): ``(bytes, str)``."""
    if body.get("key_id") != key.fingerprint:
        raise ValueError(f"sealing needs key_id {key.fingerprint!r} in the body, not {body.get('key_id')!r}")
    if any(field in body for field in SEAL_FIELDS + ("mac",)):
        raise ValueError(f"a body to seal may not carry {SEAL_FIELDS + ('mac',)}")
    if not all(isinstance(k, str) for k in body):
        raise ValueError("not plain JSON data: dictionary keys must be strings")
    # each field encoded once (plain JSON, or ValueError); the signed, hashed and written forms are joined from them
    with collector.paused():   # encoding a step of 20k results: 0.23 s of collections of a 0.5 s drain
        fields = {k: f"{_text(k)}:{_plain_dumps(v)}" for k, v in body.items()}
    fields["public_key"] = f'"public_key":{_text(key.public_b64)}'
    signature = base64.b64encode(key.sign(_joined(fields))).decode("ascii")
    fields["signature"] = f'"signature":"{signature}"'
    digest = sha256_hex(_joined(fields))
    fields["digest"] = f'"digest":"{digest}"'
    return _joined(fields) + b"\n", digest


def document_digest(raw):
    """The ``digest`` field of a sealed document's bytes (what the next journal entry chains on)."""
    return json.loads(raw)["digest"]


def _parse(raw, where):
    """The document of sealed bytes ``raw`` whose bytes and digest are exact, and its fields' canonical text."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise IntegrityError(f"{where} is not valid JSON (corrupt or truncated).") from None
    if not isinstance(document, dict) or not isinstance(document.get("key_id"), str) \
            or not isinstance(document.get("digest"), str):
        raise IntegrityError(f"{where} lacks its signature fields (corrupt or not a recording).")
    try:
        fields = {k: f"{_text(k)}:{_text(v)}" for k, v in document.items()}
        exact = _joined(fields) + b"\n" == raw
    except (ValueError, RecursionError):
        exact = False
    if not exact:
        raise IntegrityError(f"{where} was changed: its bytes are not the ones written.")
    if sha256_hex(_joined(fields, ("digest",))) != document["digest"]:
        raise IntegrityError(f"{where} was changed: its SHA-256 does not match.")
    return document, fields


def _accepted(fp, trust):
    if trust is True:
        return True
    if not trust:
        return False
    return fp in trust


def unseal(raw, where, key, trust=False, legacy_hmac=False):
    """Check a sealed document and return its body.

    Parameters
    ----------
    raw : bytes
        The file's bytes.
    where : str
        What the file is, for messages (``"recording 'x': journal entry 3"``).
    key : SigningKey
        The reader's key.
    trust : bool or collection of str
        Which other signers are accepted: ``False``, only ``key``; a
        collection of fingerprints (trusted keys, ``--trust-key``), those
        too; ``True``, any key whose signature verifies. ``True`` is for
        pickle-free reading that shows who signed, never for replay.
    legacy_hmac : bool
        Accept a julius-recording/1 document whose HMAC verifies under the
        secret of ``key``'s hex key file.

    Returns
    -------
    body : dict
        The document without ``public_key``, ``signature`` and ``digest``
        (legacy: without ``mac`` and ``digest``).
    signed_by_me : bool
        Whether ``key`` signed it.

    Raises
    ------
    IntegrityError
        Any byte differs from what was signed, or the signature is wrong.
    UntrustedRecordingError
        Signed with a key that ``trust`` does not accept, or a legacy HMAC
        document without ``legacy_hmac``.
    """
    return unseal_with_digest(raw, where, key, trust, legacy_hmac)[:2]


def unseal_with_digest(raw, where, key, trust=False, legacy_hmac=False):
    """:func:`unseal`, and the document's ``digest``: ``(body, signed_by_me, digest)``."""
    document, fields = _parse(raw, where)
    digest = document.pop("digest")
    if "mac" in document and "signature" not in document:
        return (*_unseal_legacy(document, where, key, legacy_hmac), digest)
    signer = document["key_id"]
    try:
        public_raw = base64.b64decode(document.get("public_key"), validate=True)
        signature = base64.b64decode(document.get("signature"), validate=True)
        public_key = Ed25519PublicKey.from_public_bytes(public_raw)
    except (TypeError, ValueError, binascii.Error):
        raise IntegrityError(f"{where} lacks a readable public key or signature (corrupt or not a recording).") from None
    if fingerprint(public_raw) != signer:
        raise IntegrityError(f"{where} was changed: its key_id is not the fingerprint of its public key.")
    try:
        public_key.verify(signature, _joined(fields, ("signature", "digest")))
    except InvalidSignature:
        raise IntegrityError(f"{where} was changed: its signature does not match its key {signer}.") from None
    mine = signer == key.fingerprint
    if not mine and not _accepted(signer, trust):
        raise UntrustedRecordingError(untrusted_message(where, signer, key.fingerprint))
    body = {k: v for k, v in document.items() if k not in ("public_key", "signature")}
    return body, mine, digest


def untrusted_message(where, signer, mine):
    """The one line refusing a document of ``where`` signed by key ``signer`` (the reader's is ``mine``)."""
    return (f"{where} is signed with another key ({signer}; yours is {mine}) that you do not trust: "
            f"add its author's public key with `julius trust add FILE.pub`, or pass --trust-key {signer} "
            "for this one recording.")


def _unseal_legacy(document, where, key, legacy_hmac):
    """A julius-recording/1 document: HMAC-SHA256 under a secret only its author holds."""
    signer, mac = document["key_id"], document.pop("mac")
    if not legacy_hmac:
        raise UntrustedRecordingError(
            f"{where} has the old HMAC signature of julius-recording/1, which proves nothing to anyone "
            "but its author: pass --legacy-hmac to read your own old recordings."
        )
    secret = key.legacy_secret
    if secret is None or legacy_key_id(secret) != signer:
        raise UntrustedRecordingError(
            f"{where} has an old HMAC signature by key {signer}, not your key file's "
            f"({legacy_key_id(secret) if secret else 'a PEM key, which has none'}): it cannot be checked."
        )
    if not isinstance(mac, str) or not hmac.compare_digest(
            hmac.new(secret, _dumps(document), hashlib.sha256).hexdigest(), mac):
        raise IntegrityError(f"{where} was changed: its HMAC does not match your key.")
    return document, True


def legacy_seal(body, secret):
    """Seal ``body`` as julius-recording/1 did (HMAC-SHA256), for tests of legacy reading only."""
    document = {**body, "mac": hmac.new(secret, canonical(body), hashlib.sha256).hexdigest()}
    document["digest"] = sha256_hex(canonical(document))
    return canonical(document) + b"\n"


def chain_start(name, created, format=FORMAT):
    """Return the ``prev`` value of a recording's first journal entry.

    Binding the chain to the recording's name, creation time and format keeps
    entries from being moved between recordings.
    """
    return sha256_hex(canonical({"format": format, "name": name, "created": created}))


def hash_stream(chunks):
    """Return ``(sha256 hex, size)`` of an iterable of byte chunks."""
    h = hashlib.sha256()
    size = 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def read_chunks(f):
    """Yield ``CHUNK``-sized pieces of the open binary file ``f``."""
    while chunk := f.read(CHUNK):
        yield chunk
