"""Public keys you trust: whose recordings verify on this machine besides your own.

Trusted keys live in ``~/.julius/trusted_keys`` (``julius trust add FILE.pub``)
and in the team files named by ``$JULIUS_TRUSTED_KEYS`` (paths separated by
``os.pathsep``), one key a line as OpenSSH writes them::

    ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... alice

A line that cannot be read is skipped with a warning: a broken line trusts
nobody, it never trusts more.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import RecordingError
from .integrity import FINGERPRINT_PATTERN, fingerprint, load_key

__all__ = ["TRUSTED_ENV", "TrustedKey", "trusted_keys_path", "read_public_key", "load_trusted_keys",
           "add_trusted_key", "trusted_fingerprints", "check_fingerprint"]

TRUSTED_ENV = "JULIUS_TRUSTED_KEYS"


@dataclass(frozen=True)
class TrustedKey:
    """One trusted public key: ``fingerprint``, OpenSSH ``line``, ``name`` and the ``source`` file."""

    fingerprint: str
    line: str
    name: str
    source: str

    def as_dict(self):
        return asdict(self)


def trusted_keys_path():
    """Your own trusted-keys file: ``~/.julius/trusted_keys``."""
    return Path.home() / ".julius" / "trusted_keys"


def team_files():
    """The files named by ``$JULIUS_TRUSTED_KEYS`` (may be none)."""
    named = os.environ.get(TRUSTED_ENV, "")
    return [Path(p).expanduser() for p in named.split(os.pathsep) if p.strip()]


def _ssh_line(public_key):
    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def read_public_key(text, where):
    """Parse one public key from ``text``: an ``ssh-ed25519`` line or a PEM public key.

    Other lines (``julius key`` also prints a ``fingerprint ...`` line, ``#``
    comments) are ignored. Returns ``(Ed25519PublicKey, comment)``.

    Raises
    ------
    RecordingError
        No Ed25519 public key in ``text``; the message names ``where``.
    """
    if "-----BEGIN PUBLIC KEY-----" in text:
        try:
            key = serialization.load_pem_public_key(text.encode("ascii", "replace"))
        except ValueError as error:
            raise RecordingError(f"{where}: not a readable PEM public key ({error}).") from None
        if not isinstance(key, Ed25519PublicKey):
            raise RecordingError(f"{where}: holds a {type(key).__name__}, not an Ed25519 public key.")
        return key, ""
    for line in text.splitlines():
        fields = line.split(None, 2)
        if not fields or fields[0] != "ssh-ed25519":
            continue
        try:
            key = serialization.load_ssh_public_key(" ".join(fields[:2]).encode("ascii", "replace"))
        except (ValueError, IndexError, TypeError) as error:
            raise RecordingError(f"{where}: the ssh-ed25519 line is not a readable public key ({error}).") from None
        return key, fields[2].strip() if len(fields) > 2 else ""
    raise RecordingError(f"{where}: no Ed25519 public key (expected a line `ssh-ed25519 AAAA... NAME`, "
                         "as `julius key` prints).")


def _read_file(path):
    """The keys of one trusted-keys file; unreadable lines are skipped with a warning."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as error:
        warnings.warn(f"trusted keys {path}: cannot be read ({error}); no key of it is trusted", stacklevel=3)
        return []
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key, name = read_public_key(line, f"{path}:{number}")
        except RecordingError as error:
            warnings.warn(f"trusted keys {error} (line skipped)", stacklevel=3)
            continue
        keys.append(TrustedKey(fingerprint(key), _ssh_line(key), name, str(path)))
    return keys


def load_trusted_keys():
    """Every trusted key: ``~/.julius/trusted_keys`` first, then the team files. Returns a list."""
    keys, seen = [], set()
    for path in [trusted_keys_path(), *team_files()]:
        for key in _read_file(path):
            if key.fingerprint not in seen:
                seen.add(key.fingerprint)
                keys.append(key)
    return keys


def trusted_fingerprints(extra=()):
    """The fingerprints a reader accepts besides its own key: trusted keys plus ``extra`` (``--trust-key``)."""
    return frozenset(k.fingerprint for k in load_trusted_keys()) | frozenset(check_fingerprint(f) for f in extra)


def check_fingerprint(value):
    """Return ``value`` if it is a key fingerprint (32 lowercase hex digits), else raise ``ValueError``."""
    if not isinstance(value, str) or not FINGERPRINT_PATTERN.match(value.strip().lower()):
        raise ValueError(f"--trust-key {value!r} is not a key fingerprint (32 hex digits, as `julius key` "
                         "prints and a refusal names)")
    return value.strip().lower()


def add_trusted_key(pub_file, name=None):
    """Add the public key in ``pub_file`` to ``~/.julius/trusted_keys``; return its :class:`TrustedKey`.

    Adding a key already trusted (or your own) changes nothing and returns it.

    Raises
    ------
    RecordingError
        ``pub_file`` is missing or holds no Ed25519 public key.
    """
    pub_file = Path(pub_file)
    try:
        text = pub_file.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise RecordingError(f"public key {pub_file}: cannot be read ({error.strerror or error}).") from None
    key, comment = read_public_key(text, str(pub_file))
    name = " ".join((name if name is not None else comment or pub_file.stem).split())
    fp = fingerprint(key)
    target = trusted_keys_path()
    if fp == load_key().fingerprint:
        return TrustedKey(fp, _ssh_line(key), name or "you", "your own key")
    for existing in load_trusted_keys():
        if existing.fingerprint == fp:
            return existing
    target.parent.mkdir(parents=True, exist_ok=True)
    line = f"{_ssh_line(key)} {name}".rstrip()
    old = target.read_text(encoding="utf-8") if target.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(old + line + "\n", encoding="utf-8")
    os.replace(tmp, target)   # whole file or nothing: a crash never leaves half a line
    return TrustedKey(fp, _ssh_line(key), name, str(target))
