"""Keys, hashes and sealed JSON documents: how a recording proves its bytes.

Every JSON document of a recording (manifest, journal entry, verified
sidecar) is *sealed*: its body gets two fields,

``mac``
    HMAC-SHA256 of the canonical body under the author's key (authenticity);
``digest``
    SHA-256 of the canonical body *with* ``mac`` (content, checkable without
    the key, so ``trust=True`` still detects every changed byte).

The file holds exactly ``canonical(document) + b"\\n"``; any other byte
sequence, even one that parses to the same JSON, is refused.

The key is 32 random bytes, stored as hex in ``$JULIUS_KEY_FILE`` or
``~/.julius/key`` (created on first use, mode 0600). It never enters a store:
documents carry only ``key_id``, a short SHA-256 of the key, so an error can
say whose key signed what.

Nothing here unpickles anything; it reads JSON and hashes bytes.
"""

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from julius_magics.errors import IntegrityError, RecordingError, UntrustedRecordingError

FORMAT = "julius-recording/1"
KEY_ENV = "JULIUS_KEY_FILE"
CHUNK = 1 << 20  # bytes read at a time when hashing or copying large data


def key_path():
    """Return the path of the signing key: ``$JULIUS_KEY_FILE`` or ``~/.julius/key``."""
    named = os.environ.get(KEY_ENV)
    return Path(named).expanduser() if named else Path.home() / ".julius" / "key"


def load_key(path=None):
    """Read the signing key, creating it (mode 0600) on first use.

    Parameters
    ----------
    path : path-like, optional
        Key file; default :func:`key_path`.

    Returns
    -------
    bytes
        The 32-byte key.

    Raises
    ------
    RecordingError
        The file exists but does not hold 64 hexadecimal characters.
    """
    path = Path(path) if path is not None else key_path()
    if not path.exists():
        _create_key_file(path)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise RecordingError(f"Key file {path}: expected 64 hexadecimal characters (a 32-byte key).")
    return key


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
    """Return the public name of ``key``: the first 16 hex digits of its SHA-256.

    >>> key_id(bytes(32))
    '66687aadf862bd77'
    """
    return hashlib.sha256(key).hexdigest()[:16]


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
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"not plain JSON data: {error}") from None
    # json.dumps silently turns int/float/bool keys into strings: refuse them,
    # or the data read back would differ from the data written.
    if not _same_json(obj, json.loads(text)):
        raise ValueError("not plain JSON data: dictionary keys must be strings")
    return text.encode("utf-8")


def _same_json(a, b):
    """True when ``a`` and ``b`` are equal as JSON (tuples equal lists)."""
    if isinstance(a, (list, tuple)) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    return a == b


def _mac(key, body):
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def seal(body, key):
    """Return the file bytes of ``body`` sealed with ``key`` (adds ``mac`` and ``digest``).

    ``body`` must carry ``key_id`` so a reader knows which key to check it with.
    """
    mac = _mac(key, body)
    document = {**body, "mac": mac}
    document["digest"] = sha256_hex(canonical(document))
    return canonical(document) + b"\n"


def unseal(raw, where, key, trust=False):
    """Check a sealed document and return its body.

    Parameters
    ----------
    raw : bytes
        The file's bytes.
    where : str
        What the file is, for messages (``"recording 'x': journal entry 3"``).
    key : bytes
        The reader's key.
    trust : bool
        Accept a document signed with another key (its digest is still checked).

    Returns
    -------
    body : dict
        The document without ``mac`` and ``digest``.
    signed_by_me : bool
        Whether ``key`` signed it.

    Raises
    ------
    IntegrityError
        Any byte differs from what was sealed.
    UntrustedRecordingError
        Signed with another key and ``trust`` is false.
    """
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{where} is not valid JSON (corrupt or truncated).") from None
    if not isinstance(document, dict) or not all(
        isinstance(document.get(field), str) for field in ("mac", "digest", "key_id")
    ):
        raise IntegrityError(f"{where} lacks its signature fields (corrupt or not a recording).")
    try:
        exact = canonical(document) + b"\n" == raw
    except ValueError:
        exact = False
    if not exact:
        raise IntegrityError(f"{where} was changed: its bytes are not the ones written.")
    digest = document.pop("digest")
    if sha256_hex(canonical(document)) != digest:
        raise IntegrityError(f"{where} was changed: its SHA-256 does not match.")
    mac = document.pop("mac")
    mine = key_id(key)
    if document["key_id"] != mine:
        if not trust:
            raise UntrustedRecordingError(
                f"{where} is signed with another key ({document['key_id']}; yours is {mine}); "
                "pass --trust if you trust its author."
            )
        return document, False
    if not hmac.compare_digest(_mac(key, document), mac):
        raise IntegrityError(f"{where} was changed: its signature does not match your key.")
    return document, True


def chain_start(name, created):
    """Return the ``prev`` value of a recording's first journal entry.

    Binding the chain to the recording's name and creation time keeps entries
    from being moved between recordings.
    """
    return sha256_hex(canonical({"format": FORMAT, "name": name, "created": created}))


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
