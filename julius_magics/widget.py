"""``RecordingBrowser``: an ipywidgets view of a recording store, a thin skin over the Python API.

Everything it shows comes from ``Store.list``, ``summary.details``,
``summary.diff`` and ``recording.replay``; the widget only lays the answers out
and wires buttons to them. Each public method is what the matching button does,
so a notebook (or a test) can drive the browser without clicking.

State a caller can read:

==================  ==========================================================
``recordings``      ``[RecordingInfo.as_dict()]`` of the last refresh
``selected``        name of the selected recording, or None
``details_data``    ``describe()`` of the selected recording, or None
``diff_data``       ``diff()`` of the last diff, or None
``report``          ``ReplayReport`` of the last replay that finished, or None
``last_error``      the exception of the last failed action, or None
``pending_delete``  name waiting for "Confirm delete", or None
``progress``        ``IntProgress``: steps replayed / steps of the recording
``status``          ``Label``: what the browser is doing
``error``           ``HTML``: the error area (empty when the last action worked)
==================  ==========================================================

A replay runs in a background thread that updates the widgets as steps finish,
so the kernel stays free. Errors, in the kernel or in that thread, are shown in
the error area, never left as a traceback in the log.
"""

from __future__ import annotations

import contextlib
import html
import threading

import ipywidgets as widgets

from .errors import JuliusError
from .recording import format_size
from .recording import summary as _summary
from .recording.replaying import replay as _replay
from .recording.store import Store

__all__ = ["RecordingBrowser"]

_COLUMNS = ("name", "created", "steps", "size", "workers", "status", "note")
_STATUS_COLOURS = {"verified": "#1b7f3b", "complete": "#1f4e99", "incomplete": "#a66300", "partial": "#b00020"}
_CELL = "padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"


def _e(value):
    """Escaped text for HTML widgets (names, notes and summaries are user text)."""
    return html.escape("" if value is None else str(value))


def _table(headers, rows, highlight=None):
    """An HTML table of escaped cells; ``rows`` are lists of (already escaped) cell HTML."""
    head = "".join(f"<th style='{_CELL}'>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        style = " style='background:#e8f0fe'" if i == highlight else ""
        body.append(f"<tr{style}>" + "".join(f"<td style='{_CELL}'>{c}</td>" for c in row) + "</tr>")
    return f"<table style='border-collapse:collapse'><tr>{head}</tr>{''.join(body)}</table>"


def _pre(text):
    return f"<pre style='margin:0;white-space:pre-wrap'>{_e(text)}</pre>"


def _error_text(error):
    """The message people read: ours say it all; others get their type in front."""
    return str(error) if isinstance(error, JuliusError) else f"{type(error).__name__}: {error}"


class RecordingBrowser(widgets.VBox):
    """Browse, inspect, replay, diff and delete the recordings of a store.

    Parameters
    ----------
    store : Store, str or None
        The store (``None``: ``$JULIUS_STORE`` or ``~/.julius/recordings``).
    n_workers : int, optional
        Workers of the replay cluster (default: as recorded).
    trust_key : str, optional
        Fingerprint of one more key to accept for replays (yours and your trusted keys always are).

    Examples
    --------
    >>> from julius_magics import RecordingBrowser            # doctest: +SKIP
    >>> browser = RecordingBrowser()                          # doctest: +SKIP
    >>> browser                                               # doctest: +SKIP
    >>> browser.replay("fraud-v1", wait=True).report.verified  # doctest: +SKIP
    """

    def __init__(self, store=None, n_workers=None, trust_key=None):
        self.recordings = []
        self.selected = None
        self.details_data = None
        self.diff_data = None
        self.report = None
        self.last_error = None
        self.pending_delete = None
        self.replaying = None
        self.n_workers = n_workers
        self.trust_key = trust_key
        self._thread = None
        self._updating = False

        self.title = widgets.HTML()
        self.table = widgets.HTML()
        self.picker = widgets.Select(options=[], rows=6, description="recording",
                                     layout=widgets.Layout(width="auto", min_width="420px"))
        self.other = widgets.Dropdown(options=[], description="diff with")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.replay_button = widgets.Button(description="Replay", icon="play", button_style="primary")
        # replay in the recording's rebuilt environment (uv; recording.rebuild), not this kernel's
        self.isolated = widgets.Checkbox(value=False, description="isolated", indent=False,
                                         layout=widgets.Layout(width="auto"))
        self.diff_button = widgets.Button(description="Diff", icon="columns")
        self.delete_button = widgets.Button(description="Delete", icon="trash", button_style="danger")
        self.confirm_label = widgets.HTML()
        self.confirm_button = widgets.Button(description="Confirm delete", button_style="danger")
        self.cancel_button = widgets.Button(description="Cancel")
        self.confirm_box = widgets.HBox([self.confirm_label, self.confirm_button, self.cancel_button],
                                        layout=widgets.Layout(display="none"))
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="replay")
        self.status = widgets.Label()
        self.error = widgets.HTML()
        self.details = widgets.HTML()
        self.output = widgets.HTML()

        self.picker.observe(self._on_pick, names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.replay_button.on_click(lambda _: self.replay())
        self.diff_button.on_click(lambda _: self.diff())
        self.delete_button.on_click(lambda _: self.delete())
        self.confirm_button.on_click(lambda _: self.delete(self.pending_delete, confirm=True))
        self.cancel_button.on_click(lambda _: self.cancel_delete())

        buttons = widgets.HBox([self.refresh_button, self.replay_button, self.isolated, self.delete_button,
                                self.other, self.diff_button])
        super().__init__([self.title, self.table, self.picker, buttons, self.confirm_box,
                          widgets.HBox([self.progress, self.status]), self.error,
                          widgets.Accordion([self.details], titles=("details",), selected_index=0),
                          self.output])
        self.store = None
        with self._guard():
            self.store = Store.coerce(store)
            self.title.value = f"<b>Recordings</b> in <code>{_e(self.store.url)}</code>"
            self.refresh()

    # --- plumbing --------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self, doing=None):
        """Run an action; on failure show its message in the error area (and keep the exception)."""
        self.error.value = ""
        self.last_error = None
        try:
            yield
        except Exception as error:   # noqa: BLE001 -- every failure belongs in the widget, not the log
            self._show_error(error, doing)

    def _show_error(self, error, doing=None):
        self.last_error = error
        where = f" while {_e(doing)}" if doing else ""
        self.error.value = (f"<div style='color:#b00020;border-left:3px solid #b00020;padding-left:6px'>"
                            f"<b>Error{where}:</b>{_pre(_error_text(error))}</div>")

    def _need(self, name):
        name = name or self.selected
        if not name:
            raise ValueError("no recording selected: pick one in the list")
        return name

    # --- list and details --------------------------------------------------------
    def refresh(self):
        """Read the store's recordings again and redraw the table; returns them as dicts."""
        with self._guard("listing the store"):
            self.recordings = [info.as_dict() for info in self.store.list()]
            names = [r["name"] for r in self.recordings]
            keep = self.selected if self.selected in names else (names[0] if names else None)
            self._updating = True
            try:
                self.picker.options = [(self._row_label(r), r["name"]) for r in self.recordings]
                self.other.options = names
                self.picker.value = keep
                others = [n for n in names if n != keep]
                self.other.value = others[-1] if others else keep
            finally:
                self._updating = False
            self._draw_table()
            self._show_details(keep)
            if not self.replaying:
                self.status.value = f"{len(names)} recording(s)"
        return self.recordings

    @staticmethod
    def _row_label(r):
        return f"{r['name']}  ·  {r['status']}  ·  {r['steps']} steps  ·  {r['created']}"

    def _draw_table(self):
        names = [r["name"] for r in self.recordings]
        if not names:
            self.table.value = "<i>No recordings yet: record one with <code>%record start NAME</code>.</i>"
            return
        rows = []
        for r in self.recordings:
            colour = _STATUS_COLOURS.get(r["status"], "inherit")
            rows.append([f"<b>{_e(r['name'])}</b>", _e(r["created"]), _e(r["steps"]), _e(format_size(r["size"] or 0)),
                         _e("" if r["workers"] is None else r["workers"]),
                         f"<span style='color:{colour}'>{_e(r['status'])}</span>", _e(r["note"])])
        highlight = names.index(self.selected) if self.selected in names else None
        self.table.value = _table(_COLUMNS, rows, highlight)

    def _on_pick(self, change):
        if not self._updating:
            self.select(change["new"])

    def select(self, name):
        """Select recording ``name`` and show its details; returns ``describe(name)`` (None on error)."""
        with self._guard(f"selecting {name!r}"):
            if name not in [r["name"] for r in self.recordings]:
                raise ValueError(f"no recording {name!r} in {self.store.url}: refresh the list or check the name")
            self._updating = True
            try:
                self.picker.value = name
            finally:
                self._updating = False
            self._draw_table()
            self._show_details(name)
            return self.details_data
        return None

    def _show_details(self, name):
        self.selected = name
        self.details_data = None
        self.cancel_delete()
        if name is None:
            self.details.value = ""
            return
        self.details.value = f"<i>reading {_e(name)} ...</i>"
        try:
            self.details_data = _summary.details(name, self.store)
        except Exception:
            self.details.value = f"<i>cannot read {_e(name)}: see the error above</i>"
            raise
        self.details.value = self._details_html(self.details_data)

    @staticmethod
    def _details_html(d):
        info = d["info"]
        parts = [f"<b>{_e(info['name'])}</b>: {_e(info['status'])}, {_e(info['steps'])} steps, "
                 f"{_e(format_size(info['size'] or 0))}, {_e(info['workers'])} workers, created {_e(info['created'])}"
                 + (f" — {_e(info['note'])}" if info["note"] else "")]
        parts.append("<h4>Steps</h4>" + _table(("#", "kind", "summary"),
                                               [[_e(s["seq"]), _e(s["kind"]), _e(s["summary"])]
                                                for s in d["steps"]]))
        env = d["environment"]
        if env:
            same = "" if env["workers_same_as_kernel"] else " (workers differ from the kernel)"
            parts.append(f"<h4>Environment</h4>Python {_e(env['python'])} on {_e(env['os'])} {_e(env['release'])}, "
                         f"{_e(env['packages'])} packages, {_e(env['workers'])} workers{_e(same)}")
        if d["data"]:
            parts.append("<h4>Data files</h4>" + _table(
                ("path", "size", "sha256", "kept"),
                [[_e(f["path"]), _e(format_size(f["size"])), _e(f["sha256"][:16]),
                  "embedded" if f["embedded"] else "hash only"] for f in d["data"]]))
        parts.append(f"<h4>Results ({len(d['results'])})</h4>" + _table(
            ("result", "value", "fingerprint"),
            [[_e(r["label"] or r["node"]), _e(r["describe"]), _e(r["fp"][:12])] for r in d["results"]]))
        verification = d.get("verification")
        if verification:
            summary = verification.get("summary", {})
            parts.append(f"<h4>Verification</h4>a replay matched it on {_e(verification.get('verified_at'))}: "
                         f"{_e(summary.get('results'))} results, {_e(summary.get('steps'))} steps")
        return "".join(parts)

    # --- actions -------------------------------------------------------------------
    def diff(self, a=None, b=None):
        """Show what differs between recordings ``a`` and ``b`` (default: the selected one and "diff with").

        Returns the ``diff`` dict, or None on error.
        """
        self.diff_data = None
        with self._guard("comparing recordings"):
            a, b = self._need(a), b or self.other.value
            if not b:
                raise ValueError("pick a second recording in 'diff with'")
            self.diff_data = _summary.diff(a, b, self.store)
            self.output.value = f"<h4>Diff {_e(a)} vs {_e(b)}</h4>{_pre(_summary.format_diff(self.diff_data))}"
        return self.diff_data

    def delete(self, name=None, confirm=False):
        """Delete recording ``name`` (default: the selected one).

        Without ``confirm`` this only asks: the "Confirm delete" button (or a
        second call with ``confirm=True``) deletes. Returns True when deleted.
        """
        with self._guard(f"deleting {name or self.selected!r}"):
            name = self._need(name)
            if name == self.replaying:
                raise ValueError(f"recording {name!r} is being replayed: delete it when the replay ended")
            if not confirm:
                self.pending_delete = name
                self.confirm_label.value = f"Delete recording <b>{_e(name)}</b>? This cannot be undone."
                self.confirm_box.layout.display = "flex"
                return False
            self.cancel_delete()
            self.store.delete(name)
            self.refresh()
            self.status.value = f"deleted {name}; {len(self.recordings)} recording(s) left"
            return True
        return False

    def cancel_delete(self):
        """Forget a delete waiting for confirmation."""
        self.pending_delete = None
        self.confirm_box.layout.display = "none"

    def replay(self, name=None, wait=False):
        """Replay recording ``name`` (default: the selected one) in a background thread.

        The progress bar follows the steps; the report (verified, or the
        mismatches) appears below when it ends, and ``self.report`` holds it.

        Parameters
        ----------
        name : str, optional
        wait : bool
            Join the thread before returning (scripts and tests).

        Returns
        -------
        threading.Thread or None
            The replay thread; None when it could not start (the error is shown).
        """
        with self._guard("starting a replay"):
            name = self._need(name)
            if self._thread is not None and self._thread.is_alive():
                raise ValueError(f"a replay of {self.replaying!r} is still running: wait for it to end")
            self.report = None
            self.replaying = name
            self.replay_button.disabled = True
            self.progress.value, self.progress.max, self.progress.bar_style = 0, 1, "info"
            self.status.value = f"replaying {name} ..."
            self.output.value = ""
            self._thread = threading.Thread(target=self._run_replay, args=(name,), name=f"julius-replay-{name}",
                                            daemon=True)
            self._thread.start()
            if wait:
                self._thread.join()
            return self._thread
        return None

    def _on_progress(self, event):
        # a replay.Progress, from the replay thread: ipywidgets sends the updates from there
        self.progress.max = max(event.total, 1)
        self.progress.value = event.done
        self.status.value = f"{self.replaying}: {event.message}"

    def _run_replay(self, name):
        try:
            if self.isolated.value:
                from .recording.rebuild import replay_isolated
                from .recording.report import Progress

                report = replay_isolated(name, store=self.store, n_workers=self.n_workers, trust_key=self.trust_key,
                                         build_progress=False, log=lambda text: self._on_progress(Progress(0, 1, text)),
                                         progress=lambda done, total, message: self._on_progress(
                                             Progress(done, total, message)))
            else:
                report = _replay(name, store=self.store, n_workers=self.n_workers, trust_key=self.trust_key,
                                 progress=self._on_progress)
        except Exception as error:   # noqa: BLE001 -- a thread's traceback would be lost
            self._show_error(error, f"replaying {name!r}")
            self.progress.bar_style = "danger"
            self.status.value = f"replay of {name} failed"
        else:
            self.report = report
            self.progress.bar_style = "success" if report.verified else "warning"
            self.status.value = f"{name}: " + ("VERIFIED" if report.verified else "NOT VERIFIED")
            colour = "#1b7f3b" if report.verified else "#b00020"
            self.output.value = (f"<h4 style='color:{colour}'>Replay of {_e(name)}: "
                                 f"{'verified' if report.verified else 'not verified'}</h4>"
                                 + self._mismatches_html(report) + _pre(report.summary()))
            self.refresh()   # its status may now be "verified"
        finally:
            self.replaying = None
            self.replay_button.disabled = False

    @staticmethod
    def _mismatches_html(report):
        if not report.mismatches:
            return ""
        return _table(("result", "recorded", "replayed", "likely cause"),
                      [[_e(m["label"] or m["node"]), _e(m["recorded_value"]), _e(m["replayed_value"]),
                        _e(m["cause"])] for m in report.mismatches])
