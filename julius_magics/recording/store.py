"""The recording store: a place holding recordings, on any fsspec file system.

``Store`` is the facade the rest of julius uses. The work is done by

- :mod:`.files`: atomic file operations (local disk, object store);
- :mod:`.journal`: the on-disk layout, ``Step``, the writer and the reader;
- :mod:`.verify`: byte and signature verification;
- :mod:`.archive`: ``.jrec`` export and import.
"""

from __future__ import annotations

import functools
import os
import warnings

from ..errors import IntegrityError, JuliusError, RecordingNotFoundError, StoreUnreachableError
from . import archive, integrity
from .files import LocalFiles, open_files
from .keys import trusted_fingerprints
from .journal import (MANIFEST, NAME_PATTERN, VERIFIED, Recording, RecordingInfo, RecordingWriter, Step, claim,
                      new_manifest, read_info, validate_name, write_verified)
from .verify import StoreSource, verify

__all__ = ["Store", "Recording", "RecordingInfo", "RecordingWriter", "Step", "validate_name", "STORE_ENV",
           "DEFAULT_STORE"]

STORE_ENV = "JULIUS_STORE"
DEFAULT_STORE = "~/.julius/recordings"


#: Libraries of object-store clients, whose own errors (botocore's NoCredentialsError is no OSError)
#: mean the store cannot be reached.
_CLIENT_LIBRARIES = frozenset({"botocore", "aiobotocore", "s3fs", "gcsfs", "google", "adlfs", "azure"})


def _reaching(method):
    """``method`` of a :class:`Store`, whose object-store client's errors become one line naming the store."""
    @functools.wraps(method)
    def reaching(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except JuliusError:
            raise
        except Exception as error:
            if type(error).__module__.partition(".")[0] not in _CLIENT_LIBRARIES:
                raise
            text = " ".join(str(error).split())
            raise StoreUnreachableError(f"Store {self.url} cannot be reached: {type(error).__name__}"
                                        + (f": {text}" if text else "")) from None
    return reaching


class Store:
    """A place holding recordings: a local folder or any fsspec URL.

    Parameters
    ----------
    url : str or path-like, optional
        ``None`` means ``$JULIUS_STORE`` or ``~/.julius/recordings``. Any
        fsspec URL works: ``"s3://bucket/prefix"``, ``"memory://x"``,
        ``"file:///..."`` or a plain path.
    **storage_options
        Passed to fsspec, e.g. ``client_kwargs={"endpoint_url": ...}`` for an
        S3-compatible server. s3fs also reads the usual ``AWS_*`` variables.

    Examples
    --------
    >>> store = Store("memory://doc-example")
    >>> writer = store.create("demo", {"note": "example"})
    >>> writer.add_step("cell", {"source": "1 + 1"})
    1
    >>> store.open("demo").steps[0].data
    {'source': '1 + 1'}
    >>> store.delete("demo")
    """

    def __init__(self, url=None, **storage_options):
        url = os.fspath(url) if url is not None else os.environ.get(STORE_ENV) or DEFAULT_STORE
        if "://" not in url and "::" not in url:
            url = os.path.abspath(os.path.expanduser(url))
        self.url = url
        self.storage_options = storage_options
        self.files = open_files(url, **storage_options)
        self._key = None

    @classmethod
    def coerce(cls, store):
        """``store`` itself if it is a ``Store``, else ``Store(store)`` (a URL, a path or ``None``).

        >>> Store.coerce("memory://x").url
        'memory://x'
        """
        return store if isinstance(store, cls) else cls(store)

    def __repr__(self):
        return f"Store({self.url!r})"

    @property
    def key(self):
        """The user's signing key (read, or created, on first use)."""
        if self._key is None:
            self._key = integrity.load_key()
        return self._key

    # --- writing ---------------------------------------------------------------
    @_reaching
    def create(self, name, meta=None):
        """Start a new recording and return its :class:`RecordingWriter`.

        Parameters
        ----------
        name : str
            See :func:`validate_name`.
        meta : dict, optional
            JSON fields kept in the manifest: ``note``, ``data_mode``
            (``"embed"`` or ``"hash"``), ``cluster``, ``workers``, ...

        Raises
        ------
        ValueError
            Invalid name, or ``meta`` is not plain JSON.
        RecordingExistsError
            The store already holds a recording of that name.
        """
        body = new_manifest(name, meta, self.key)
        claim(self.files, name, integrity.seal(body, self.key), self.url)
        return RecordingWriter(self, body)

    # --- reading ---------------------------------------------------------------
    @_reaching
    def list(self, legacy_hmac=False, problems=None):
        """Return the :class:`RecordingInfo` of every readable recording, sorted by creation time.

        Reads only manifests and sidecars (and, for an incomplete recording, a
        listing of its folder). A recording whose manifest is changed,
        malformed, of an unknown format or untrusted HMAC is skipped: with a
        warning, or appended to ``problems`` (a list) as ``(name, message)``.
        """
        files = self.files
        files.refresh()
        names = sorted(n for n in files.names(files.root) if NAME_PATTERN.match(n))
        if not names:
            return []
        refused = {}   # a link, a FIFO, a huge file: that recording is skipped, the others listed
        manifests = files.read_many([files.path(n, MANIFEST) for n in names], refused)
        verified = files.read_many([files.path(n, VERIFIED) for n in names], refused)
        trusted = trusted_fingerprints()
        infos = []
        for name in names:
            path, sidecar_path = files.path(name, MANIFEST), files.path(name, VERIFIED)
            raw = manifests.get(path)
            try:
                if path in refused:
                    raise refused[path]
                if raw is None:
                    continue  # a folder without manifest: a delete in progress, or not a recording
                sidecar = verified.get(sidecar_path)
                if sidecar_path in refused:   # as any bad sidecar: ignored, never blocking
                    warnings.warn(f"{refused[sidecar_path]} The verification is ignored.", UserWarning, stacklevel=2)
                infos.append(read_info(files, name, raw, sidecar, self.key, trusted, legacy_hmac))
            except JuliusError as error:
                if problems is None:
                    warnings.warn(f"skipped recording '{name}': {error}", UserWarning, stacklevel=2)
                else:
                    problems.append((name, str(error)))
        return sorted(infos, key=lambda info: (info.created, info.name))

    @_reaching
    def info(self, name, legacy_hmac=False):
        """Return the :class:`RecordingInfo` of one recording.

        Raises ``RecordingNotFoundError``, or, for a manifest that cannot be
        read, the one-line error saying why (as :meth:`open`).
        """
        validate_name(name)
        self.files.refresh()
        try:
            raw = self.files.read(self.files.path(name, MANIFEST))
        except FileNotFoundError:
            raise RecordingNotFoundError(f"No recording '{name}' in {self.url}.") from None
        try:
            sidecar = self.files.read(self.files.path(name, VERIFIED))
        except FileNotFoundError:
            sidecar = None
        except IntegrityError as error:   # as any bad sidecar: ignored, never blocking
            warnings.warn(f"{error} The verification is ignored.", UserWarning, stacklevel=2)
            sidecar = None
        return read_info(self.files, name, raw, sidecar, self.key, trusted_fingerprints(), legacy_hmac)

    def accepted_keys(self, trust_key=None):
        """Fingerprints whose recordings :meth:`open` accepts besides yours: trusted keys and ``trust_key``."""
        return trusted_fingerprints([trust_key] if trust_key else [])

    @_reaching
    def open(self, name, trust_key=None, legacy_hmac=False, any_signer=False, *, trust=False):
        """Verify every byte of a recording, then return it as a :class:`Recording`.

        Parameters
        ----------
        name : str
            The recording.
        trust_key : str, optional
            The fingerprint of one more key to accept, for this call only
            (``--trust-key``); yours and your trusted keys are always accepted.
        legacy_hmac : bool
            Read a julius-recording/1 recording sealed with your key file's secret.
        any_signer : bool
            Accept any key whose signature verifies (``Recording.trusted``
            says whether it is trusted): for readers that unpickle nothing and
            show who signed (show, diff, env, export). Never for a replay.

        Raises
        ------
        RecordingNotFoundError
            No recording of that name.
        IntegrityError
            A byte is changed, missing, added or out of order, or a document is malformed.
        UntrustedRecordingError
            Signed with a key you do not trust.
        """
        if trust:   # ``trust=False`` is still accepted from callers not yet moved to ``trust_key``
            raise ValueError("trust=True (accept any key) is gone: pass trust_key=FINGERPRINT for one recording, "
                             "or `julius trust add` its author's public key")
        validate_name(name)
        self.files.refresh()
        source = StoreSource(self.files, name, self.url)
        trusted = trusted_fingerprints()
        trust = True if any_signer else self.accepted_keys(trust_key)
        return Recording(self, source, verify(source, name, self.key, trust, legacy_hmac, trusted))

    # --- managing --------------------------------------------------------------
    @_reaching
    def delete(self, name):
        """Delete a recording (its blobs stay: other recordings may share them)."""
        validate_name(name)
        manifest = self.files.path(name, MANIFEST)
        if isinstance(self.files, LocalFiles):   # a folder or manifest that is a link is refused, never followed
            found = (self.files.expect(self.files.path(name), folder=True, action="delete")
                     and self.files.expect(manifest, action="delete"))
        else:
            found = self.files.exists(manifest)
        if not found:
            raise RecordingNotFoundError(f"No recording '{name}' in {self.url}.")
        self.files.rm(manifest)  # first, so the recording disappears from listings at once
        self.files.rm(self.files.path(name))

    @_reaching
    def mark_verified(self, name, summary):
        """Record how a replay of ``name`` ended; ``summary`` is JSON, ``{"verified": true, ...}`` when it matched."""
        write_verified(self.files, name, summary, self.key, self.url)

    @_reaching
    def export(self, name, path, legacy_hmac=False):
        """Write recording ``name`` and its blobs to the single-file archive ``path`` (see :mod:`.archive`)."""
        archive.export(self, name, path, legacy_hmac=legacy_hmac)

    @_reaching
    def import_(self, path, trust_key=None, as_name=None, force=False, legacy_hmac=False):
        """Import an archive written by :meth:`export`; return the recording's name (see :func:`archive.import_`)."""
        return archive.import_(self, path, trust_key=trust_key, as_name=as_name, force=force,
                               legacy_hmac=legacy_hmac)

