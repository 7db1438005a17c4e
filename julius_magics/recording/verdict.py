"""Exit statuses of a replay, shared by ``julius replay`` and the server's replay process.

======  ==============================================================================
status  meaning
======  ==============================================================================
0       verified: a complete recording, every recorded result matched
1       not verified: a result differs, or there was none to compare
2       error: bad input, a missing recording or file, a failed step
3       incomplete: reproduced up to step K of an incomplete (or partial) recording
4       refused: the recording failed verification, or is signed by a key you do not trust
70      internal error: a bug of julius_magics (one line; ``JULIUS_DEBUG=1`` shows its traceback)
======  ==============================================================================
"""

from __future__ import annotations

from ..errors import IntegrityError, RecordingError, UntrustedRecordingError

__all__ = ["EXIT_VERIFIED", "EXIT_NOT_VERIFIED", "EXIT_ERROR", "EXIT_INCOMPLETE", "EXIT_REFUSED", "EXIT_INTERNAL",
           "exit_status", "error_status", "EXIT_HELP"]

EXIT_VERIFIED, EXIT_NOT_VERIFIED, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_REFUSED = 0, 1, 2, 3, 4
EXIT_INTERNAL = 70   # sysexits' EX_SOFTWARE

EXIT_HELP = ("exit status: 0 verified (a complete recording, every result matched); 1 not verified (a result "
             "differs, or none to compare); 2 error (bad input, missing recording or file); 3 incomplete "
             "(reproduced up to step K of an incomplete or partial recording: never verified); 4 refused (the "
             "recording failed verification or is signed by a key you do not trust); 70 internal error (a bug of "
             "julius_magics: JULIUS_DEBUG=1 shows its traceback)")


def exit_status(report):
    """The exit status of a replay that ran: verified, incomplete or not verified."""
    if report.verified:
        return EXIT_VERIFIED
    if (not report.complete or report.partial) and not report.mismatches and report.steps == report.total_steps:
        return EXIT_INCOMPLETE
    return EXIT_NOT_VERIFIED


def error_status(error):
    """The exit status of a replay that could not run because of ``error``."""
    if isinstance(error, (IntegrityError, UntrustedRecordingError)):
        return EXIT_REFUSED
    if isinstance(error, RecordingError) and "has format" in str(error):
        return EXIT_REFUSED   # a format this version does not read, or an old HMAC one
    return EXIT_ERROR
