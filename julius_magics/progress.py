"""Progress bars that leave nothing stale behind: tqdm in a terminal, an ipywidgets bar in a notebook.

A notebook keeps a bar's last text in its saved outputs (``julius compute: 5%|...``
long after the work finished), so there the bar is shown under a display id and
emptied when it closes.
"""

import contextlib

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(total, desc, unit, initial=0, leave=True, **options):
    """A tqdm bar for the ``with`` block; in a notebook it is cleared from the output on exit.

    ``options`` go to tqdm (``unit_scale``, ``disable``, ...).

    Examples
    --------
    >>> with progress_bar(3, "demo", "step", leave=False) as bar:   # doctest: +SKIP
    ...     bar.update(1)
    """
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    if not issubclass(tqdm, notebook_tqdm) or options.get("disable"):
        with tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, **options) as bar:
            yield bar
        return
    from IPython.display import display

    options.pop("delay", None)   # a notebook bar is shown at once
    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, display=False, **options)
    handle = display(bar.container, display_id=True)
    try:
        yield bar
    finally:
        bar.close()
        if handle is not None:
            handle.update({"text/plain": ""}, raw=True)
