"""Secrets kept out of everything a recording stores.

Four ways, at every depth of a JSON-able tree: any value under a secret-looking name
(token, secret, password, key, credential, auth, session, ...) is redacted whatever
its length (:func:`secret_name`); credentials inside URLs, DSNs, query strings and
auth headers are cut out by pattern (:func:`scrub_text`); values the caller knows to
be secret are redacted wherever they appear; and last, every string that contains a
secret value found by the first ways is redacted where else it appears (:func:`scrub`).

:class:`Secrets` keeps the values known to be secret across trees (a recording's
writer hunts each in every later step) and finds them, and credentials in URLs, in
bytes that cannot be scrubbed (pickles: they hold a ``str`` as its UTF-8 bytes).
:func:`known_secrets` collects those this process holds: secret-named environment
variables, secret Dask config values and the credentials of its fsspec filesystems.
"""

from __future__ import annotations

import functools
import os
import re
import sys

__all__ = ["REDACTED", "secret_name", "scrub_text", "scrub", "jsonable", "Secrets", "secret_values",
           "known_secrets"]

REDACTED = "<redacted>"

# A name looks secret when one of its words (split at -_. and camelCase) is, or ends in, one of these.
_SECRET_WORDS = ("token", "tokens", "secret", "secrets", "password", "passwords", "passwd", "passphrase",
                 "key", "credential", "credentials", "auth", "authorization", "authentication", "session",
                 "sessions", "sessionid", "private", "cookie", "cookies", "signature", "dsn")
_SECRET_WORD_ENDS = ("token", "secret", "password", "passwd", "key", "credential", "credentials", "auth", "session")
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")

# scheme://userinfo@host: the userinfo (user name, token, user:password, a password holding '@')
# runs to the last '@' before the host's '/', '?', '#' or the end.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s?#'\"]*@")
# A name that ends in one of these (a number after it too): "db_password", "access_token", "X-Amz-Signature",
# an Azure SAS's "sig"; not "max_tokens", "design", "session_length", "author": code and prose, not credentials.
_SECRET_PARAM = (r"(?:[\w.\-]*?[_.\-])?(?:[\w]*?(?:passw(?:or)?d|passwd|pwd|passphrase|token|secret|api[_\-]?key|"
                 r"access[_\-]?key|private[_\-]?key|secret[_\-]?key|auth|authorization|credentials?|signature|"
                 r"security[_\-]?token)|sig|session(?:[_\-]?(?:id|key|token))?)(?:[_\-]?\d+)?(?![\w])")
# name=value in a query string, a libpq/ODBC DSN or a command line; value of any length: quoted
# (`password = "x"` too), or unquoted right after the '=' up to a separator (not Python's
# `token = tokenize(df)`, nor None/True/False, as in `def f(password=None)`, nor one redacted already)
_PARAM_VALUE = re.compile(r"(?i)(\b" + _SECRET_PARAM + r"(?:\s*=\s*(?=[\"'])|=))(\"[^\"]*\"|'[^']*'|"
                          r"(?!(?-i:None|True|False)\b|<redacted>)[^\s&;,'\"]+)")
# "name": "value" inside JSON or YAML text
_QUOTED_VALUE = re.compile(r"(?i)([\"']?\b" + _SECRET_PARAM + r"[\"']?\s*:\s*)(\"[^\"]*\"|'[^']*')")
# a credential after its scheme, not a plain word ("Basic statistics", "the token counts")
_AUTH_HEADER = re.compile(r"(?i)\b(bearer|basic|token)\s+(?!(?-i:[A-Z]?[a-z]+)[.:!?)]*(?:[\s'\",;]|$))"
                          r"[^\s'\",;]{8,}")
_COLON_QUOTE = re.compile(r":\s*[\"']")
#: Values shorter than this are not hunted for elsewhere (a password "1" would redact every "1").
_MIN_ECHO = 4
#: Values known to be secret (:func:`known_secrets`) are hunted from this length on
#: (XDG_SESSION_TYPE=wayland must not redact every "wayland").
MIN_KNOWN = 8


#: Spelled inside any name, whatever its separators and case, these always mean a secret.
_SECRET_INSIDE = re.compile(r"passw(or)?d|passphrase|secret|credential|apikey|accesskey|privatekey|authtoken|"
                            r"token(?!iz|is)|sessionid|sessiontoken|sessionkey")


def secret_name(name: str) -> bool:
    """True when a variable, config key or parameter name looks like it holds a secret.

    Examples
    --------
    >>> [secret_name(n) for n in ("AWS_SECRET_ACCESS_KEY", "apiKey", "db.password", "tokenize", "rename-keys")]
    [True, True, True, False, False]
    """
    return _secret_name(str(name))


@functools.lru_cache(maxsize=8192)   # a recording asks it of the same few field names at every step
def _secret_name(name):
    if _SECRET_INSIDE.search(re.sub(r"[^a-z0-9]", "", name.lower())):
        return True
    for word in _WORD_SPLIT.split(name):
        word = word.lower()
        if word in _SECRET_WORDS or (len(word) > 3 and word.endswith(_SECRET_WORD_ENDS)):
            return True
    return False


def _maybe(text: str) -> bool:
    """Whether ``text`` holds what one of the patterns above needs ('@', '=', ': "', an auth scheme).

    Most strings of a recording (Dask keys, paths) hold none: found by substring searches,
    15 times faster than the patterns (or one regex of these) on 500 kB of Dask keys.
    """
    if "@" in text or "=" in text or (":" in text and _COLON_QUOTE.search(text)):
        return True
    low = text.lower()
    return "bearer" in low or "basic" in low or "token" in low


def _param_redacted(match):
    value = match.group(2)
    quote = value[0] if value[0] in "\"'" else ""   # kept: `password = "<redacted>"` still reads as code
    return f"{match.group(1)}{quote}{REDACTED}{quote}"


def scrub_text(text: str) -> str:
    """``text`` with credentials cut out of URLs, DSNs, query strings and auth headers."""
    if not _maybe(text):
        return text
    text = _URL_USERINFO.sub(r"\1" + REDACTED + "@", text)
    text = _PARAM_VALUE.sub(_param_redacted, text)
    text = _QUOTED_VALUE.sub(r'\1"' + REDACTED + '"', text)
    return _AUTH_HEADER.sub(r"\1 " + REDACTED, text)


def jsonable(value):
    """``value`` as JSON-able data: containers copied, anything else that JSON lacks as its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return repr(value)   # callables, classes... as text, so the result stays JSON-able


def _cut_parts(original: str, cleaned: str):
    """The substrings of ``original`` that scrubbing replaced (so they can be hunted elsewhere)."""
    pieces = [p for p in re.split(re.escape(REDACTED), cleaned)]
    cut, pos = [], 0
    for before, after in zip(pieces, pieces[1:]):
        start = original.find(before, pos) + len(before) if before else pos
        end = original.find(after, start) if after else len(original)
        if end < 0:
            break
        part = original[start:end]
        if len(part) >= _MIN_ECHO:
            cut.append(part)
        pos = end
    return cut


# In bytes (pickles), only credentials in URLs, as they surely are: a user:password (or a user name
# as long as a token), a secret query parameter. The text patterns' wider net would drop parts
# for a docstring's "Basic usage"; a DSN's "password=" is found when its value is known.
# (printable ASCII only: a pickle's next opcode, 0x94 after a str, ends a URL)
_BYTES_URL = re.compile(rb"://[\x21-\x7e]{1,4096}")
_BYTES_USERINFO = re.compile(rb"://(?!<redacted>@)(?:[^/?#'\"@:\x00-\x20\x7f-\xff]*:[^/?#'\"\x00-\x20\x7f-\xff]+|"
                             rb"[^/?#'\"@:\x00-\x20\x7f-\xff]{16,})@")
_BYTES_PARAM = re.compile(rb"(?i)[?&;](" + _SECRET_PARAM.encode() + rb")=(?!<redacted>)[^&;,'\"\x00-\x20\x7f-\xff]")


class Secrets:
    """Values known to be secret, each with where it was found, hunted in trees and in bytes.

    Parameters
    ----------
    minimum : int
        Shorter values are not kept (nor what :meth:`scrub` cuts out that is shorter).
    """

    def __init__(self, minimum=MIN_KNOWN):
        self.minimum = minimum
        self.where = {}         # value -> where it was found
        self._pattern = None    # every value, longest first, as one pattern (made again when one is added)
        self._encoded = None    # [(value as UTF-8, where)]: pickles hold a str so

    def __len__(self):
        return len(self.where)

    def add(self, value, where):
        """Keep ``value`` (a str of at least ``minimum`` characters; others are ignored) as a secret."""
        if isinstance(value, str) and len(value) >= self.minimum and value != REDACTED and value not in self.where:
            self.where[value] = where
            self._pattern = self._encoded = None

    def update(self, found):
        """Keep each value of ``found`` (``{value: where}``)."""
        for value, where in found.items():
            self.add(value, where)

    def _known(self):
        if self._pattern is None and self.where:
            # longest first, so a secret holding a shorter one is cut whole
            self._pattern = re.compile("|".join(re.escape(s) for s in sorted(self.where, key=len, reverse=True)))
        return tuple(self.where), self._pattern

    def scrub(self, tree, field_names=frozenset(), keyed_by_data=frozenset(), digests=frozenset(), names=True):
        """``tree`` with every secret redacted, at every depth; what it cuts out is kept, and hunted in it too.

        ``tree`` itself is never changed: the containers that change are copies, the rest is
        ``tree``'s own (a tree that needs no change comes back as it is).

        Parameters
        ----------
        field_names : collection of str
            Names that look secret but are not (a format's own fields, such as ``key``: a Dask key).
        keyed_by_data : collection of str
            Names of fields whose maps are keyed by data (Dask keys, addresses), not by names.
        digests : collection of str
            Names of fields whose maps' values are hex digests (never a secret, not looked at).
        names : bool
            Redact the values under secret-looking names (else only patterns and known values).
        """
        known, pattern = self._known()
        walk = _Walk(known, pattern, field_names, keyed_by_data | digests, digests, names)
        if walk.clean_tree(tree):
            return tree
        cleaned = walk.value(tree, False, False, "")
        found = {s for s in walk.cut if len(s) >= self.minimum and s not in self.where}
        for value in sorted(found):
            self.add(value, "a credential cut out of a recorded text")
        if found:   # second pass: what this tree held, wherever else it appears in it
            again = re.compile("|".join(re.escape(s) for s in sorted(found, key=len, reverse=True)))
            cleaned = _Walk(tuple(found), again, (), (), (), False, patterns=False).value(cleaned, False, False, "")
        return cleaned

    def found_in(self, data) -> str | None:
        """Where the first secret ``data`` (bytes: a pickle) holds was found, or None.

        Looks for the known values (as UTF-8) and for credentials in URLs.
        """
        data = bytes(data) if not isinstance(data, bytes) else data
        if self._encoded is None:
            self._encoded = [(value.encode("utf-8", "surrogatepass"), where) for value, where in self.where.items()]
        for value, where in self._encoded:
            if value in data:
                return where
        for url in _BYTES_URL.finditer(data):   # a few URLs: found at memchr speed
            if _BYTES_USERINFO.match(data, url.start()):
                return "a URL's user name and password"
            param = _BYTES_PARAM.search(url.group())
            if param:
                return f"a URL's secret parameter {param.group(1).decode('ascii', 'replace')!r}"
        return None


class _Walk:
    """One pass over a tree: patterns, names and the known values; strings cut out go to ``cut``."""

    def __init__(self, known, pattern, field_names, keyed_by_data, digests, names, patterns=True):
        self.known, self.pattern = known, pattern   # the known values, and them as one pattern
        self.field_names, self.keyed, self.digests = field_names, keyed_by_data, digests
        self.names, self.patterns = names, patterns
        self.cut = set()

    def has_known(self, text) -> bool:
        # substring searches: a regex of 20 values was twice as slow on 500 kB of Dask keys
        return any(s in text for s in self.known)

    def clean_tree(self, tree) -> bool:
        """True when nothing in ``tree`` needs a change: its strings, gathered once, looked at all at once.

        A graph step's 10k Dask keys, in its ``keys``, ``fingerprints`` and ``descriptions``,
        are one set of strings (their hashes are cached: gathering them costs little).
        """
        strings = set()
        if not self._gather(tree, strings, False, False):
            return False
        try:
            joined = "\x00".join(strings)
        except TypeError:   # a key that is not a str: looked at one by one
            return False
        if self.has_known(joined):
            return False
        # then only the strings that may hold a credential, each on its own: a distribution named
        # ``asttokens`` sent every environment (191 packages) through the whole walk, 17 ms each
        return not (self.patterns and _maybe(joined)) or all(scrub_text(s) == s for s in strings if _maybe(s))

    def _gather(self, tree, strings, keyed, digests) -> bool:
        """Add ``tree``'s strings to ``strings``; False when a name says a value is secret."""
        if isinstance(tree, str):
            strings.add(tree)
        elif isinstance(tree, dict):
            if self.names and not keyed:
                for k in tree:
                    if isinstance(k, str) and k not in self.field_names and (secret_name(k) or k == "environ"):
                        return False
            strings.update(tree)
            if digests:   # hex digests: never a secret
                return True
            values = tree.values()
            try:
                "".join(values)   # all str? (in C)
            except TypeError:
                return all(self._gather(v, strings, k in self.keyed, k in self.digests) for k, v in tree.items())
            strings.update(values)
        elif isinstance(tree, (list, tuple)):
            try:
                "".join(tree)
            except TypeError:
                return all(self._gather(v, strings, False, False) for v in tree)
            strings.update(tree)
        return True

    def text(self, value):
        cleaned = scrub_text(value) if self.patterns else value
        if cleaned is not value and cleaned != value:
            self.cut.update(_cut_parts(value, cleaned))
        if self.known and self.has_known(cleaned):
            cleaned = self.pattern.sub(REDACTED, cleaned)
        return value if cleaned == value else cleaned

    def value(self, value, hidden, keyed, parent):
        if isinstance(value, str):
            if hidden:
                if len(value) >= _MIN_ECHO:
                    self.cut.add(value)
                return REDACTED if value != "" else value
            return self.text(value)
        if isinstance(value, dict):
            return self.mapping(value, hidden, keyed, parent)
        if isinstance(value, (list, tuple)):
            out = None
            for i, v in enumerate(value):
                new = self.value(v, hidden, False, parent)
                if out is None and new is not v:
                    out = list(value[:i])
                if out is not None:
                    out.append(new)
            return value if out is None else out
        if hidden and value is not None and not isinstance(value, bool):
            return REDACTED
        return value

    def mapping(self, tree, hidden, keyed, parent):
        """A dict; ``keyed``: its keys are data, not names.

        Every value of a ``nanny.environ`` mapping is hidden, whatever its name: it is the
        workers' environment as the user set it, and a plain name can hold a secret.
        """
        names = self.names and not keyed and not hidden
        out = None
        for i, (k, v) in enumerate(tree.items()):
            new_k = self.text(k) if isinstance(k, str) else k
            secret = names and isinstance(k, str) and k not in self.field_names and secret_name(k)
            under = hidden or secret or (self.names and parent == "nanny" and k == "environ")
            new_v = self.value(v, under, k in self.keyed, k)
            if out is None and (new_k is not k or new_v is not v):
                out = dict(list(tree.items())[:i])
            if out is not None:
                out[new_k] = new_v
        return tree if out is None else out


def scrub(tree, extra_secrets=()):
    """A JSON-able copy of ``tree`` with every secret redacted, at every depth.

    Parameters
    ----------
    tree : dict, list or scalar
    extra_secrets : iterable of str
        Values known to be secret (for example those of secret-named environment
        variables): redacted wherever they appear.

    Examples
    --------
    >>> scrub({"db": "postgresql://me:p@ss@host/db?password=x1", "api": {"Token": 42}, "n": 3})
    {'db': 'postgresql://<redacted>@host/db?password=<redacted>', 'api': {'Token': '<redacted>'}, 'n': 3}
    """
    secrets = Secrets(minimum=_MIN_ECHO)
    for value in extra_secrets:
        secrets.add(value, "given")
    return secrets.scrub(jsonable(tree))


def secret_values(tree, where) -> dict:
    """``{value: "where 'name'"}`` of the strings under secret-looking names in ``tree``, at every depth."""
    found, todo = {}, [(tree, None)]
    while todo:   # not recursive: the Dask config's 300 keys are walked at every step outside a batch
        node, under = todo.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                name = under if under is not None else (str(k) if secret_name(k) else None)
                if name is not None or isinstance(v, (dict, list, tuple)):
                    todo.append((v, name))
        elif isinstance(node, (list, tuple)):
            todo.extend((v, under) for v in node)
        elif under is not None and _hunted(node):
            found.setdefault(node, f"{where} {under!r}")
    return found


def _hunted(value) -> bool:
    """Whether a secret value is long enough to be hunted; a path to a credentials file (``GOOGLE_APPLICATION_
    CREDENTIALS``) is not the credential, its content is, and paths are everywhere in a recording."""
    return isinstance(value, str) and len(value) >= MIN_KNOWN and not (os.path.isabs(value) and os.path.exists(value))


def known_secrets() -> dict:
    """``{value: where it was found}`` of the secrets this process holds (at least :data:`MIN_KNOWN` long).

    The values of its secret-named environment variables; its Dask config's values under
    secret names and every ``distributed.nanny.environ`` value (the workers' environment);
    and the credentials (values under secret names of ``storage_options``) of every
    filesystem fsspec made here and keeps in its instance caches. Dask and fsspec are
    looked at only if something imported them. Paths of files that exist are left out.
    """
    found = {v: f"environment variable {k}" for k, v in os.environ.items() if secret_name(k) and _hunted(v)}
    config = sys.modules.get("dask.config")
    if config is not None:
        tree = config.config
        found.update(secret_values(tree, "Dask config"))
        environ = ((tree.get("distributed") or {}).get("nanny") or {}).get("environ")
        if isinstance(environ, dict):   # the workers' environment, whatever the names
            found.update({v: f"Dask config distributed.nanny.environ {k!r}" for k, v in environ.items()
                          if _hunted(v)})
    spec = sys.modules.get("fsspec.spec")
    if spec is not None:
        for cls in _subclasses(spec.AbstractFileSystem):
            for fs in list((cls.__dict__.get("_cache") or {}).values()):
                options = getattr(fs, "storage_options", None)
                if isinstance(options, dict):
                    found.update(secret_values(options, "fsspec storage_options"))
    return found


def _subclasses(cls):
    seen, todo = [], [cls]
    while todo:
        c = todo.pop()
        if c not in seen:
            seen.append(c)
            todo.extend(c.__subclasses__())
    return seen
