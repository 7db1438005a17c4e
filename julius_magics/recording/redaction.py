"""Secrets kept out of everything a recording stores.

Four ways, at every depth of a JSON-able tree: any value under a secret-looking name
(token, secret, password, key, credential, auth, session, ...) is redacted whatever
its length (:func:`secret_name`); credentials inside URLs, DSNs, query strings and
auth headers are cut out by pattern (:func:`scrub_text`); values the caller knows to
be secret are redacted wherever they appear; and last, every string that contains a
secret value found by the first ways is redacted where else it appears (:func:`scrub`).
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "secret_name", "scrub_text", "scrub", "jsonable"]

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
_SECRET_PARAM = (r"[\w.\-]*?(?:passw(?:or)?d|passwd|pwd|passphrase|token|secret|api[_\-]?key|access[_\-]?key|"
                 r"private[_\-]?key|auth\w*|credentials?|session\w*|signature|sig)[\w.\-]*")
# name=value in a query string, a libpq/ODBC DSN or a command line; value of any length
_PARAM_VALUE = re.compile(r"(?i)(\b" + _SECRET_PARAM + r"\s*=\s*)(\"[^\"]*\"|'[^']*'|[^\s&;,'\"]+)")
# "name": "value" inside JSON or YAML text
_QUOTED_VALUE = re.compile(r"(?i)([\"']?\b" + _SECRET_PARAM + r"[\"']?\s*:\s*)(\"[^\"]*\"|'[^']*')")
_AUTH_HEADER = re.compile(r"(?i)\b(bearer|basic|token)\s+[^\s'\",;]{8,}")
#: Values shorter than this are not hunted for elsewhere (a password "1" would redact every "1").
_MIN_ECHO = 4


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
    name = str(name)
    if _SECRET_INSIDE.search(re.sub(r"[^a-z0-9]", "", name.lower())):
        return True
    for word in _WORD_SPLIT.split(name):
        word = word.lower()
        if word in _SECRET_WORDS or (len(word) > 3 and word.endswith(_SECRET_WORD_ENDS)):
            return True
    return False


def scrub_text(text: str) -> str:
    """``text`` with credentials cut out of URLs, DSNs, query strings and auth headers."""
    text = _URL_USERINFO.sub(r"\1" + REDACTED + "@", text)
    text = _PARAM_VALUE.sub(r"\1" + REDACTED, text)
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


def _collect_and_redact(value, secrets: set, under_secret=False, parent=""):
    """First pass: redact values under secret names and credentials in strings; collect what was cut.

    Every value of a ``nanny.environ`` mapping is hidden, whatever its name: it is the
    workers' environment as the user set it, and a plain name can hold a secret.
    """
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            hidden = under_secret or secret_name(k) or (parent == "nanny" and k == "environ")
            out[k] = _collect_and_redact(v, secrets, hidden, k)
        return out
    if isinstance(value, list):
        return [_collect_and_redact(v, secrets, under_secret, parent) for v in value]
    if under_secret and value is not None and not isinstance(value, bool):
        if isinstance(value, str) and len(value) >= _MIN_ECHO:
            secrets.add(value)
        return REDACTED if value != "" else value
    if isinstance(value, str):
        cleaned = scrub_text(value)
        if cleaned != value:
            secrets.update(_cut_parts(value, cleaned))
        return cleaned
    return value


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


def _echoes(value, secrets):
    """Second pass: every occurrence of a collected secret, anywhere, is redacted."""
    if isinstance(value, dict):
        return {_echoes(k, secrets): _echoes(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_echoes(v, secrets) for v in value]
    if isinstance(value, str):
        for s in secrets:
            if s in value:
                value = value.replace(s, REDACTED)
    return value


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
    secrets = {s for s in extra_secrets if isinstance(s, str) and len(s) >= _MIN_ECHO}
    cleaned = _collect_and_redact(jsonable(tree), secrets)
    # longest first, so a secret holding a shorter one is cut whole
    return _echoes(cleaned, sorted(secrets, key=len, reverse=True))
