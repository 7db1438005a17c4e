"""The "Recordings" sidebar in a real JupyterLab, driven by headless Debian Chromium.

One JupyterLab (token auth, free loopback port) serves a store holding a real
recording made by ``%record`` in a kernel, plus 999 small filler recordings so
the listing is measured at 1,000. The recording's NOTE carries the HTML
injection: names are restricted by the store to ``[A-Za-z0-9._-]`` and cannot
hold ``<``, notes are free text.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from playwright.sync_api import sync_playwright

from julius_magics.recording.store import Store

REPO = Path(__file__).resolve().parents[2]
BUILT = REPO / "julius_magics" / "labextension"
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(os.environ.get("JULIUS_BROWSER_TESTS", "1") == "0",
                                reason="JULIUS_BROWSER_TESTS=0: the user chose to run without Chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
NAME = "sidebar-demo"
INJECTION = "<img src=x onerror=window.__juliusPwned=1>"
FILLERS = 999
TOKEN = "julius-test-token-5f1c"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def record_in_kernel():
    """Make a real recording: a kernel runs ``%record`` around a small Dask computation."""
    cells = [
        "%load_ext julius_magics",
        f"%record start {NAME} --note '{INJECTION}'",
        "%cluster start -n 1",
        "import dask\ntotal = dask.delayed(sum)([1, 2, 3, 4]).compute()\ntotal",
        "%record stop",
        "%cluster stop",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, kernel_name="python3", timeout=180).execute()  # the kernel inherits env
    assert nb.cells[3].outputs[0]["data"]["text/plain"] == "10"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab with the extension, on a store of 1,000 recordings; yields (base URL, store)."""
    assert (BUILT / "package.json").exists(), (
        f"the labextension is not built in {BUILT}: run `jlpm install && jlpm build:prod` in labextension/")
    tmp = tmp_path_factory.mktemp("lab")
    store_dir, root = tmp / "store", tmp / "root"
    root.mkdir()
    env = {"JULIUS_STORE": str(store_dir), "JULIUS_KEY_FILE": str(tmp / "key")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)  # for this process, the kernel and JupyterLab
        yield from _serve(tmp, store_dir, root)


def _serve(tmp, store_dir, root):
    store = Store(str(store_dir))
    for i in range(FILLERS):
        writer = store.create(f"filler-{i:04d}", {"note": f"filler {i}", "workers": 1})
        writer.add_step("cell", {"source": f"x = {i}"})
        writer.close()
    record_in_kernel()

    # This checkout's built extension comes first on JUPYTER_PATH, ahead of any installed copy.
    jupyter_path = tmp / "jupyter"
    (jupyter_path / "labextensions").mkdir(parents=True)
    (jupyter_path / "labextensions" / "julius-magics").symlink_to(BUILT)
    config = tmp / "config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "default_setting_overrides.json").write_text(json.dumps({
        "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
        "julius-magics:plugin": {"pollInterval": 0, "replayPollInterval": 0.3},
    }))
    (config / "jupyter_server_config.json").write_text(json.dumps({
        "ServerApp": {"jpserver_extensions": {"julius_magics.server": True}, "allow_root": True}}))
    port = free_port()
    lab_env = {**os.environ, "JUPYTER_PATH": str(jupyter_path), "JUPYTER_CONFIG_DIR": str(config),
               "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
               "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"],
        env=lab_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(f"{base}/api/status", token=TOKEN)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp / "lab.log").read_text()
            assert time.monotonic() < deadline, "JupyterLab did not start in 60 s"
            time.sleep(0.3)
        yield base, store
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def get(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_api_needs_the_token_and_lists_the_store(lab):
    base, _ = lab
    assert get(f"{base}/julius/api/recordings")[0] == 403
    assert get(f"{base}/julius/api/recordings", token="wrong")[0] == 403
    get(f"{base}/julius/api/recordings", token=TOKEN)  # the first one also opens the store
    timings = []
    for _ in range(3):  # the median of 3: one spike of a busy 2-core machine is not the API's
        started = time.perf_counter()
        code, body = get(f"{base}/julius/api/recordings", token=TOKEN)
        timings.append(time.perf_counter() - started)
        assert code == 200
    seconds = sorted(timings)[1]
    names = [info["name"] for info in json.loads(body)["recordings"]]
    assert len(names) == FILLERS + 1 and NAME in names
    assert seconds <= 1.0, f"listing 1,000 recordings took {seconds:.2f} s"
    print(f"API list of {len(names)} recordings: {seconds * 1000:.0f} ms (median of 3)")


def test_sidebar_lists_replays_and_renders_notes_as_text(lab, tmp_path):
    base, store = lab
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        # no service worker: page.route() must see every request
        page = browser.new_page(viewport={"width": 1280, "height": 800}, service_workers="block")
        page.goto(f"{base}/lab?token={TOKEN}")
        page.wait_for_selector(".jp-Launcher", timeout=60_000)
        page.evaluate("window.jupyterapp.shell.activateById('julius-recordings')")

        # the list: 1,000 recordings rendered within 1 s of the request (measured on a refresh,
        # once JupyterLab has finished starting up)
        page.wait_for_selector(f'.jp-JuliusRecordings-item[data-name="{NAME}"]', timeout=30_000)
        page.evaluate("window.jupyterapp.commands.execute('julius:refresh')")
        item = page.wait_for_selector(f'.jp-JuliusRecordings-item[data-name="{NAME}"]')
        assert page.locator(".jp-JuliusRecordings-item").count() == FILLERS + 1
        load_ms = int(page.get_attribute("#julius-recordings", "data-load-ms"))
        assert load_ms <= 1000, f"sidebar listed 1,000 recordings in {load_ms} ms"
        print(f"sidebar list of {FILLERS + 1} recordings: {load_ms} ms")

        # the injected note is shown as text, and no element was created from it
        note = item.query_selector(".jp-JuliusRecordings-note")
        assert note.text_content() == INJECTION
        assert page.locator("#julius-recordings img").count() == 0
        assert page.evaluate("window.__juliusPwned") is None

        # details, then Replay with visible progress and the verification result
        item.click()
        page.wait_for_selector(".jp-JuliusRecordings-detailsName")
        assert page.text_content(".jp-JuliusRecordings-detailsName") == NAME
        page.click(".jp-JuliusRecordings-replayButton")
        page.wait_for_selector(".jp-JuliusRecordings-progress")
        seen = set()
        deadline = time.monotonic() + 180
        while not page.query_selector(".jp-JuliusRecordings-result[data-state]"):
            seen.add(page.text_content(".jp-JuliusRecordings-progressMessage"))
            assert time.monotonic() < deadline, f"replay did not end in 180 s; progress seen: {seen}"
            time.sleep(0.1)
        result = page.query_selector(".jp-JuliusRecordings-result")
        assert result.get_attribute("data-state") == "verified", result.text_content()
        assert result.text_content().startswith("verified")
        assert any("steps" in text for text in seen), seen  # "done/total steps · message" was shown
        steps = store.info(NAME).steps
        assert page.evaluate("document.querySelector('.jp-JuliusRecordings-progress').max") == steps
        assert page.evaluate("document.querySelector('.jp-JuliusRecordings-progress').value") == steps
        # the replay marked the recording verified, and the refreshed list shows it
        page.wait_for_selector(f'.jp-JuliusRecordings-item[data-name="{NAME}"] .jp-mod-verified')
        page.wait_for_function("[...document.querySelectorAll('.jp-JuliusRecordings-table td')]"
                               ".some(td => td.textContent === 'verified')")  # details refreshed too
        page.screenshot(path=str(tmp_path / "sidebar.png"))  # never the README's picture

        # a Jupyter server without the extension answers 404: the sidebar says what to do
        listing = re.compile(r"/julius/api/recordings(\?\d*)?$")  # with a cache-busting query
        page.route(listing, lambda route: route.fulfill(status=404, body="Not Found"))
        page.evaluate("window.jupyterapp.commands.execute('julius:refresh')")
        error = page.wait_for_selector(".jp-JuliusRecordings-error:not([hidden])")
        assert "server extension is not available" in error.text_content()
        page.unroute(listing)
        page.evaluate("window.jupyterapp.commands.execute('julius:refresh')")
        page.wait_for_selector(".jp-JuliusRecordings-list .jp-JuliusRecordings-item")
        assert page.locator(".jp-JuliusRecordings-error:not([hidden])").count() == 0

        # "Open in notebook" inserts a %replay cell into the active notebook
        page.evaluate("window.jupyterapp.commands.execute('notebook:create-new', {kernelName: 'python3'})")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=30_000)
        inserted = page.evaluate(
            f"window.jupyterapp.commands.execute('julius:open-in-notebook', {{name: '{NAME}'}})")
        assert inserted is True
        source = page.evaluate(
            "window.jupyterapp.shell.currentWidget.content.activeCell.model.sharedModel.getSource()")
        assert source == f"%replay {NAME}"
        browser.close()
