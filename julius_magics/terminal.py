"""Recorded text made safe to print: a recording's strings are anyone's, and a terminal obeys what it is sent.

A note, a cell, a file name or a dask key can hold ANSI escapes (which recolour,
move the cursor or retitle the window), carriage returns and bidirectional
overrides (which hide text), or newlines (which fake a line such as
``VERIFIED``). Both functions show such characters as Python escapes
(``\\x1b``, ``\\n``, ``\\u202e``).
"""

from __future__ import annotations

import re

__all__ = ["safe", "one_line"]

_INVISIBLE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[{_INVISIBLE}]")
_CONTROL_OR_NEWLINE = re.compile(f"[\t\n{_INVISIBLE}]")


def _escaped(match):
    return match.group().encode("unicode_escape").decode("ascii")


def safe(text) -> str:
    """``text`` with every control character but newline and tab escaped.

    >>> safe("a\\x1b[2Jb\\nc")
    'a\\\\x1b[2Jb\\nc'
    """
    return _CONTROL.sub(_escaped, str(text))


def one_line(text) -> str:
    """``text`` as one line: newlines and tabs escaped too.

    >>> one_line("note\\nVERIFIED")
    'note\\\\nVERIFIED'
    """
    return _CONTROL_OR_NEWLINE.sub(_escaped, str(text))
