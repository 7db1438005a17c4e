"""``make screenshots``: the README's pictures, from real recordings of the tutorial.

Runs ``notebooks/fraud_tracking.ipynb`` in a real kernel (it records the
pipeline on 4 workers and replays it on 2: a verified recording), records a
variant of the pipeline with other model options, then opens the Recordings
sidebar in JupyterLab in Debian Chromium and captures:

- ``docs/sidebar.png``: the list, and a replay of the tutorial's recording, verified;
- ``docs/sidebar-diff.png``: the two recordings compared;
- ``docs/fraud_graph.svg``: the notebook's ``%graph`` of the whole pipeline.

Everything runs in a temporary folder with its own store and key::

    python -m tests.ui.screenshots [DOCS_FOLDER]
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.ui.lab import CHROMIUM, CHROMIUM_ARGS, REPO, running_lab

TOKEN = "julius-screenshots"
VARIANT_OPTIONS = {"n_estimators": 50, "min_samples_leaf": 20}


def say(text):
    print(f"[screenshots {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run_tutorial(work):
    """Execute the tutorial notebook in ``work``: one recording, recorded and replayed."""
    notebook = work / "fraud_tracking.ipynb"
    shutil.copy(REPO / "notebooks" / "fraud_tracking.ipynb", notebook)
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(work)}}).execute()
    return work / "data" / "train_fraud.csv", work / "data" / "test_fraud.csv"


def record_variant(store, train, test):
    """Record the pipeline again with other model options, for the diff picture."""
    from julius_magics import recording, tutorial
    from julius_magics.cluster.session import get_session

    session = get_session()
    session.start(n_workers=4)
    try:
        recording.start(session, "fraud-leaf20", store=store,
                        note="ExtraTrees bagging, min_samples_leaf 20")
        tutorial.run_pipeline(session, str(train), str(test), options=VARIANT_OPTIONS)
        recording.stop()
    finally:
        session.stop()


def capture(base, docs, names):
    """Open the sidebar, replay the tutorial's recording, compare the two; save the pictures."""
    from playwright.sync_api import sync_playwright

    tutorial_name, variant = names
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 940}, device_scale_factor=1)
            page.goto(f"{base}/lab?token={TOKEN}")
            page.wait_for_selector(".jp-Launcher", timeout=60_000)
            page.evaluate("window.jupyterapp.shell.activateById('julius-recordings')")
            page.wait_for_selector(f'.jp-JuliusRecordings-item[data-name="{tutorial_name}"]', timeout=30_000)
            # a wide sidebar, as a user would drag it to read the table
            page.evaluate("window.jupyterapp.shell._hsplitPanel.setRelativeSizes([0.5, 0.5, 0])")
            page.click(f'.jp-JuliusRecordings-item[data-name="{tutorial_name}"] .jp-JuliusRecordings-name')
            page.wait_for_selector('.jp-JuliusRecordings-section[data-key="steps"] li')
            say(f"replaying {tutorial_name} from the sidebar")
            page.click(".jp-JuliusRecordings-replayButton")
            page.wait_for_selector(".jp-JuliusRecordings-result[data-state]", timeout=600_000)
            page.wait_for_selector('.jp-JuliusRecordings-section[data-key="results"] li')
            time.sleep(1)
            page.screenshot(path=str(docs / "sidebar.png"))
            for name in names:
                page.check(f'.jp-JuliusRecordings-item[data-name="{name}"] input[type=checkbox]')
            page.click(".jp-JuliusRecordings-diffButton")
            page.wait_for_selector(".jp-JuliusRecordings-diffTable")
            time.sleep(0.5)
            page.screenshot(path=str(docs / "sidebar-diff.png"))
        finally:
            browser.close()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    docs = Path(argv[0] if argv else REPO / "docs").resolve()
    work = Path(tempfile.mkdtemp(prefix="julius-screenshots-"))
    os.environ.update({"JULIUS_STORE": str(work / "store"), "JULIUS_KEY_FILE": str(work / "key"),
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    from julius_magics.recording.store import Store

    store = Store(str(work / "store"))
    try:
        say("running the tutorial notebook (records the pipeline on 4 workers, replays it on 2)")
        train, test = run_tutorial(work)
        say(f"recording a variant with {VARIANT_OPTIONS}")
        record_variant(store, train, test)
        names = [info.name for info in store.list()]
        tutorial_name = next(n for n in names if n.startswith("fraud-2"))
        shutil.copy(work / "fraud_graph.svg", docs / "fraud_graph.svg")
        # the notebook's folder: its recording reads data/*.csv relative to it
        with running_lab(work / "lab", work, TOKEN,
                         settings={"pollInterval": 0, "replayPollInterval": 0.5}) as base:
            say("capturing the sidebar")
            capture(base, docs, [tutorial_name, "fraud-leaf20"])
        for picture in ("sidebar.png", "sidebar-diff.png", "fraud_graph.svg"):
            say(f"wrote {docs / picture}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
