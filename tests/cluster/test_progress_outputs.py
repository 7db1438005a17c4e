"""A notebook's compute progress bar leaves no stale text in the saved outputs."""

import nbformat
from nbclient import NotebookClient

CELLS = [
    "import os\nos.environ.pop('JULIUS_NO_PROGRESS', None)\n%load_ext julius_magics",
    "%cluster start -n 1",
    "%%remote_eval\nimport time\ndef slow(x):\n    time.sleep(0.6)\n    return x",
    "%%addrules slow\ndef one(i):\n    return ApplyFn(slow, i)()\n\n"
    "def total(n):\n    return ApplyFn(lambda *xs: sum(xs))(*[one(i) for i in range(n)])",
    "from julius_magics import compute, ref\nvalue = compute(ref.slow.total(5), key_rules={'one'})\nprint('value', value)",
    "%cluster stop",
]


def test_saved_notebook_keeps_no_progress_text(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    NotebookClient(nb, kernel_name="python3", timeout=180, store_widget_state=True).execute()
    outputs = nb.cells[4].outputs
    texts = [o.get("text", "") for o in outputs if o["output_type"] == "stream"]
    assert "value 10" in "".join(texts)
    # the bar was shown (a widget under a display id): compute took over a second
    shown = [o for o in outputs if o["output_type"] in ("display_data", "update_display_data")]
    assert shown, outputs
    saved = nbformat.writes(nb)
    assert "julius compute" not in saved, [o for o in outputs]
    assert all(o.get("data", {}).get("text/plain", "") == "" for o in shown)
