"""Python's cyclic garbage collector, paused while julius makes objects by the hundred thousand.

A full collection walks every object of the process.  Building a big graph, encoding a step
of 20k results, or pickling the run specs of 20k futures each makes short-lived objects in
no cycle, and the collections they set off walked the kernel's objects each time: 0.2 - 0.4 s
a collection in a kernel holding 20k futures.  Reference counting goes on meanwhile.

The collector is one per process, and pauses overlap (a journal's flush thread seals steps
while the main thread builds a graph; the scheduler's capture thread pickles).  So the pauses
are counted: the first one turns the collector off, the last one turns it back on if it was on.
"""

import contextlib
import gc
import threading

__all__ = ["paused"]

_lock = threading.Lock()
_pauses = 0
_was_enabled = False


@contextlib.contextmanager
def paused():
    """No cyclic garbage collection for the ``with`` block (callers may still ``gc.collect(0)``)."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
