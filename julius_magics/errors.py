"""Exceptions of julius_magics, one module so every layer raises the same types.

Each message says what went wrong and where; front-ends print ``str(error)``
without a Python traceback for the ``JuliusError`` family.
"""


class JuliusError(Exception):
    """Base class: an error the user can act on (printed without traceback)."""

    def _render_traceback_(self):
        # IPython shows these lines instead of a Python traceback: the message says it all.
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


# --- rules -----------------------------------------------------------------
class RuleError(JuliusError):
    """A rule or graph is malformed (unknown rule, bad return value, cycle)."""


class UnknownRuleError(RuleError):
    """A node refers to a namespace or rule that is not defined."""


class CycleError(RuleError):
    """Expanding the graph came back to a node on its own path."""


class NodeError(JuliusError):
    """A node's atom raised; carries the node, the worker and the remote traceback."""

    def __init__(self, message, node_id=None, label=None, worker=None, remote_traceback=""):
        super().__init__(message)
        self.node_id = node_id
        self.label = label
        self.worker = worker
        self.remote_traceback = remote_traceback

    def __reduce__(self):  # travels from a worker to the kernel with its fields
        return (type(self), (str(self), self.node_id, self.label, self.worker, self.remote_traceback))


# --- cluster ---------------------------------------------------------------
class NoClusterError(JuliusError):
    """No active Dask session."""

    def __init__(self, message="No active cluster: run `%cluster start` (or `%cluster connect ADDRESS`) first."):
        super().__init__(message)


class NotComputedError(JuliusError, KeyError):
    """``getdata`` of a node this session has not computed (or not kept)."""

    def __str__(self):   # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class RemoteError(JuliusError):
    """Code failed on one or more workers; ``failures`` maps worker -> remote traceback."""

    def __init__(self, message, failures=None):
        super().__init__(message)
        self.failures = dict(failures or {})


# --- recording -------------------------------------------------------------
class RecordingError(JuliusError):
    """A recording cannot be written, read or replayed."""


class RecordingNotFoundError(RecordingError, FileNotFoundError):
    """No recording of that name in the store."""


class RecordingExistsError(RecordingError, FileExistsError):
    """A recording of that name already exists in the store."""


class StoreUnreachableError(RecordingError, OSError):
    """The store's file system refused or could not be reached (no credentials, a bad endpoint)."""


class IntegrityError(RecordingError):
    """A recording's bytes do not match its hashes or signature (corrupt or tampered)."""


class UntrustedRecordingError(RecordingError):
    """A recording is signed with a key you do not trust: `julius trust add`, or ``--trust-key`` for one recording."""


class DataChangedError(RecordingError):
    """An input file differs from the recorded one and no embedded copy exists."""


class EnvironmentMismatchError(RecordingError):
    """``--strict-env``: the replay environment differs from the recorded one."""
