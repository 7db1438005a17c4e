"""Recording, storing, replaying and verifying sessions: the one Python API every front-end uses."""

from __future__ import annotations

import importlib

from ..errors import RecordingError

__all__ = ["Recorder", "ReplayReport", "RecordingInfo", "Store", "Progress", "ProgressBar", "active_recorder",
           "replay", "start", "stop", "recordings_table", "replay_with_progress", "format_size"]

# imported when first used: a worker that unpickles one of this package's objects (a blob sink,
# an environment capture) imports that module alone, not the recorder, the replay and the store
_LAZY = {"Recorder": "recorder", "active_recorder": "recorder", "Progress": "replaying", "ProgressBar": "replaying",
         "ReplayReport": "replaying", "replay": "replaying", "RecordingInfo": "store", "Store": "store"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])


def format_size(n):
    """``25.1 KB``: sizes as the widget, the magics and the CLI show them (decimal units, as Dask)."""
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def start(session, name, store=None, data="embed", note=None, with_local_packages=False):
    """Start recording ``session`` into a new recording ``name``; returns the ``Recorder``.

    ``with_local_packages`` embeds wheels of the kernel's editable and local installs
    (``%record start --with-local-packages``), for replays in the rebuilt environment.
    """
    from .recorder import Recorder

    return Recorder(session, name, store=store, data=data, note=note, with_local_packages=with_local_packages)


def stop():
    """Finish the active recording; returns its ``RecordingInfo``."""
    from .recorder import active_recorder

    recorder = active_recorder()
    if recorder is None:
        raise RecordingError("not recording: start with `%record start NAME`")
    return recorder.stop()


def recordings_table(store=None, legacy_hmac=False):
    """The store's recordings as a pandas DataFrame: name, created, steps, size, workers, status, signed by, note.

    ``workers`` is an integer column (``<NA>`` for a recording that used no cluster); each
    recording that cannot be read is a warning, not a row.
    """
    import pandas as pd

    from .store import Store

    rows = []
    for info in Store.coerce(store).list(legacy_hmac=legacy_hmac):
        row = info.as_dict()
        row["signed by"] = "you" if row["signed_by_me"] else ("trusted" if row["trusted"] else "NOT TRUSTED")
        rows.append(row)
    columns = ["name", "created", "steps", "size", "workers", "status", "signed by", "note"]
    return pd.DataFrame(rows, columns=columns).astype({"workers": "Int64"})


def replay_with_progress(name, **options):
    """``replay`` with a :class:`ProgressBar` (a widget in notebooks, text in terminals)."""
    from .replaying import ProgressBar, replay

    with ProgressBar(name) as bar:
        return replay(name, progress=bar, **options)
