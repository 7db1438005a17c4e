"""The "Recordings" sidebar in a real JupyterLab, driven by headless Debian Chromium.

One JupyterLab (token auth, free loopback port) serves a store holding two real
recordings made by ``%record`` in a kernel (one that replays verified, one whose
node fails on replay), plus 998 small filler recordings so the listing is
measured at 1,000. The first recording's NOTE carries the HTML injection: names
are restricted by the store to ``[A-Za-z0-9._-]`` and cannot hold ``<``, notes
are free text.

Timings (the list's load, search and sort) are printed, never asserted; with
``JULIUS_BENCHMARK=1`` each is the median of more runs (``benchmarks/README.md``).
"""

import asyncio
import json
import os
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from julius_magics.recording.store import Store
from tests.ui.lab import CHROMIUM, CHROMIUM_ARGS, get, running_lab

pytestmark = pytest.mark.skipif(os.environ.get("JULIUS_BROWSER_TESTS", "1") == "0",
                                reason="JULIUS_BROWSER_TESTS=0: the user chose to run without Chromium")
NAME = "sidebar-demo"
FAILING = "sidebar-fails"
INJECTION = "<img src=x onerror=window.__juliusPwned=1>"
FILLERS = 998
BENCHMARK = os.environ.get("JULIUS_BENCHMARK") == "1"
RUNS = 7 if BENCHMARK else 3
TOKEN = "julius-test-token-5f1c"


def record_in_kernel():
    """Make real recordings: a kernel runs ``%record`` around small Dask computations.

    The second one's node reads a variable that only the recording kernel's workers
    have, so its replay (from the server, without it) fails on a worker.
    """
    cells = [
        "import os\nos.environ['JULIUS_SIDEBAR_FLAG'] = '7'\n%load_ext julius_magics",
        f"%record start {NAME} --note '{INJECTION}'",
        "%cluster start -n 1",
        "import dask\ntotal = dask.delayed(sum)([1, 2, 3, 4]).compute()\ntotal",
        "%record stop",
        f"%record start {FAILING} --note 'needs a variable the replay does not have'",
        "%%addrules side\nimport os\ndef flag():\n    return ApplyFn(lambda: int(os.environ['JULIUS_SIDEBAR_FLAG']))()",
        "from julius_magics import compute, ref\ncompute(ref.side.flag(label='flag'))",
        "%record stop",
        "%cluster stop",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, kernel_name="python3", timeout=180).execute()  # the kernel inherits env
    assert nb.cells[3].outputs[0]["data"]["text/plain"] == "10"
    assert nb.cells[7].outputs[0]["data"]["text/plain"] == "7"


@pytest.fixture
def jp_asyncio_loop():
    """pytest-jupyter's autouse event loop (its plugin is loaded by the server tests), made apart here:
    Playwright's sync API keeps the current loop running across this module's tests."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab with the extension, on a store of 1,000 recordings; yields (base URL, store)."""
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
        writer = store.create(f"filler-{i:04d}", {"note": f"filler {i}" + (" blue" if i % 100 == 7 else ""),
                                                  "workers": 1})
        for step in range(1 + i % 3):
            writer.add_step("cell", {"source": f"x = {i}\ny = {step}"})
        writer.close()
    # `created` has whole seconds, and ties sort by name ("filler-…" first): a kernel quick to start
    # recorded sidebar-demo in the last fillers' second, 140 rows down, beyond the rows shown
    time.sleep(1.1)
    record_in_kernel()

    with running_lab(tmp, root, TOKEN) as base:
        yield base, store


def test_api_needs_the_token_and_lists_the_store(lab):
    base, _ = lab
    assert get(f"{base}/julius/api/recordings")[0] == 403
    assert get(f"{base}/julius/api/recordings", token="wrong")[0] == 403
    get(f"{base}/julius/api/recordings", token=TOKEN)  # the first one also opens the store
    timings = []
    for _ in range(RUNS):  # a median: one spike of a busy 2-core machine is not the API's
        started = time.perf_counter()
        code, body = get(f"{base}/julius/api/recordings", token=TOKEN)
        timings.append(time.perf_counter() - started)
        assert code == 200
    seconds = sorted(timings)[len(timings) // 2]
    names = [info["name"] for info in json.loads(body)["recordings"]]
    assert len(names) == FILLERS + 2 and {NAME, FAILING} <= set(names)
    print(f"API list of {len(names)} recordings: {seconds * 1000:.0f} ms (median of {len(timings)})")


@pytest.fixture(scope="module")
def sidebar(lab):
    """One Chromium page on JupyterLab with the Recordings sidebar open and listed."""
    base, _ = lab
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            # no service worker: page.route() must see every request
            page = browser.new_page(viewport={"width": 1400, "height": 900}, service_workers="block")
            page.goto(f"{base}/lab?token={TOKEN}")
            page.wait_for_selector(".jp-Launcher", timeout=60_000)
            page.evaluate("window.jupyterapp.shell.activateById('julius-recordings')")
            try:
                page.wait_for_selector(f'.jp-JuliusRecordings-item[data-name="{NAME}"]', timeout=90_000)
            except PlaywrightTimeout:
                shown = page.evaluate("document.getElementById('julius-recordings')?.innerText ?? 'no sidebar'")
                code, body = get(f"{base}/julius/api/recordings", token=TOKEN)
                listed = re.findall(rb'\{[^{}]*"name": ?"' + NAME.encode() + rb'"[^{}]*', body) if code == 200 else body
                pytest.fail(f"the sidebar did not list {NAME!r} within 90 s; the API lists it as {listed!r}; "
                            f"the sidebar shows: {shown[:600]!r}")
            yield page
        finally:
            browser.close()


def row(page, name):
    return page.locator(f'.jp-JuliusRecordings-item[data-name="{name}"]')


def listed_names(page):
    return page.evaluate("[...document.querySelectorAll('.jp-JuliusRecordings-item')].map(r => r.dataset.name)")


def refresh(page):
    page.evaluate("window.jupyterapp.commands.execute('julius:refresh')")
    page.wait_for_function("document.querySelector('.jp-JuliusRecordings-status').textContent.includes('loaded in')")


# Time from an input to the next painted frame, in the page.
TIMED = """async ([what, arg]) => {
  const panel = document.getElementById('julius-recordings');
  const started = performance.now();
  if (what === 'search') {
    const input = panel.querySelector('.jp-JuliusRecordings-search');
    input.value = arg;
    input.dispatchEvent(new Event('input'));
  } else {
    panel.querySelector(`th[data-column="${arg}"]`).click();
  }
  await new Promise(resolve => requestAnimationFrame(() => setTimeout(resolve, 0)));
  return performance.now() - started;
}"""


def median_ms(page, what, args):
    times = sorted(page.evaluate(TIMED, [what, arg]) for arg in args)
    return times[len(times) // 2]


def test_list_loads_1000_recordings_and_renders_notes_as_text(sidebar):
    page = sidebar
    loads = []
    for _ in range(RUNS):   # measured on refreshes, once JupyterLab has finished starting up
        refresh(page)
        loads.append(int(page.get_attribute("#julius-recordings", "data-load-ms")))
    assert page.locator(".jp-JuliusRecordings-item").count() == 100   # one page; the rest on demand
    assert page.text_content(".jp-JuliusRecordings-status").startswith(f"{FILLERS + 2} recordings")
    page.click(".jp-JuliusRecordings-more")
    assert page.locator(".jp-JuliusRecordings-item").count() == 200
    assert "(200 of 1000 shown)" in page.text_content(".jp-JuliusRecordings-more")
    print(f"sidebar list of {FILLERS + 2} recordings: {sorted(loads)[len(loads) // 2]} ms (median of {RUNS})")
    # the columns, and each row's values formatted as the Python side formats them
    headers = page.evaluate("[...document.querySelectorAll('.jp-JuliusRecordings-list th[data-column]')]"
                            ".map(th => th.textContent)")
    assert headers == ["name", "created", "status", "results", "steps", "size"]
    page.locator(".jp-JuliusRecordings-search").fill("filler-0002")
    cells = row(page, "filler-0002").locator("td")
    assert cells.nth(5).text_content() == "3"
    assert re.fullmatch(r"\d+(\.\d)? KB|\d+ B", cells.nth(6).text_content())
    # the injected note is shown as text, and no element was created from it
    page.locator(".jp-JuliusRecordings-search").fill(NAME)
    note = row(page, NAME).locator(".jp-JuliusRecordings-note")
    assert note.text_content() == INJECTION
    assert page.locator("#julius-recordings img").count() == 0
    assert page.evaluate("window.__juliusPwned") is None
    page.locator(".jp-JuliusRecordings-search").fill("")


def test_search_by_name_and_note_and_sort_by_any_column(sidebar, lab):
    page = sidebar
    search = page.locator(".jp-JuliusRecordings-search")
    search.fill("filler-012")
    assert listed_names(page) and all(n.startswith("filler-012") for n in listed_names(page))
    assert len(listed_names(page)) == 10
    search.fill("BLUE")   # the note, in any case
    assert sorted(listed_names(page)) == [f"filler-{i:04d}" for i in range(7, FILLERS, 100)]
    assert "10 of 1000 shown" in page.text_content(".jp-JuliusRecordings-status")
    search.fill("no such recording")
    assert listed_names(page) == []
    assert "No recording matches" in page.text_content(".jp-JuliusRecordings-list tbody")
    search.fill("")
    assert len(listed_names(page)) == 100

    infos = json.loads(get(f"{lab[0]}/julius/api/recordings", TOKEN)[1])["recordings"]
    everything = sorted(info["name"] for info in infos)
    page.click('th[data-column="name"]')
    assert listed_names(page) == everything[:100]
    assert page.get_attribute('th[data-column="name"]', "data-order") == "ascending"
    page.click('th[data-column="name"]')
    assert listed_names(page) == everything[::-1][:100]
    page.click('th[data-column="steps"]')
    steps_js = ("[...document.querySelectorAll('.jp-JuliusRecordings-item td:nth-child(6)')]"
                ".map(td => Number(td.textContent))")
    steps = page.evaluate(steps_js)
    assert steps == sorted(steps) and steps[0] == 1
    page.click('th[data-column="steps"]')
    assert page.evaluate(steps_js)[0] == max(info["steps"] for info in infos)
    page.click('th[data-column="created"]')   # newest first, as the list starts
    assert page.get_attribute("#julius-recordings", "data-sort") == "created descending"
    page.click('th[data-column="created"]')
    assert page.get_attribute("#julius-recordings", "data-sort") == "created ascending"
    assert listed_names(page)[:3] == ["filler-0000", "filler-0001", "filler-0002"]

    words = [f"filler-{i:02d}" for i in range(RUNS * 2)]
    search_ms = median_ms(page, "search", words + [""])
    sort_ms = median_ms(page, "sort", ["name", "size", "status", "steps", "created", "results", "name"] * (RUNS // 3 + 1))
    print(f"sidebar search over 1000 recordings: {search_ms:.1f} ms; sort: {sort_ms:.1f} ms (medians, to the next frame)")
    page.locator(".jp-JuliusRecordings-search").fill("")


def test_diff_two_ticked_recordings_as_a_table(sidebar):
    page = sidebar
    page.locator(".jp-JuliusRecordings-search").fill("filler-000")
    assert page.is_disabled(".jp-JuliusRecordings-diffButton")
    row(page, "filler-0001").locator("input[type=checkbox]").check()
    assert page.is_disabled(".jp-JuliusRecordings-diffButton")
    row(page, "filler-0004").locator("input[type=checkbox]").check()
    page.click(".jp-JuliusRecordings-diffButton")
    table = page.wait_for_selector(".jp-JuliusRecordings-diffTable")
    assert page.text_content(".jp-JuliusRecordings-diff h3") == "filler-0001 vs filler-0004"
    assert page.text_content(".jp-JuliusRecordings-diffVerdict") == "differences"
    headers = page.evaluate("[...document.querySelectorAll('.jp-JuliusRecordings-diffTable tr:first-child th')]"
                            ".map(th => th.textContent)")
    assert headers[2:] == ["filler-0001", "filler-0004"]
    code = table.query_selector('tr[data-what="code"] pre').text_content()
    assert "-x = 1" in code and "+x = 4" in code   # the unified diff julius diff prints
    # a third tick drops the oldest: always the last two ticked are compared
    row(page, "filler-0005").locator("input[type=checkbox]").check()
    assert not row(page, "filler-0001").locator("input[type=checkbox]").is_checked()
    assert page.evaluate("window.jupyterapp.commands.isEnabled('julius:diff')")
    page.evaluate("window.jupyterapp.commands.execute('julius:diff', {a: 'filler-0004', b: 'filler-0004'})")
    page.wait_for_function("document.querySelector('.jp-JuliusRecordings-diffVerdict')?.textContent === 'no differences'")
    for name in ("filler-0004", "filler-0005"):
        row(page, name).locator("input[type=checkbox]").uncheck()


def test_delete_asks_first_then_deletes(sidebar, lab):
    page, (_, store) = sidebar, lab
    victim = f"filler-{FILLERS - 1:04d}"
    page.locator(".jp-JuliusRecordings-search").fill(victim)
    row(page, victim).click()
    page.wait_for_selector(".jp-JuliusRecordings-deleteButton")
    page.click(".jp-JuliusRecordings-deleteButton")
    dialog = page.wait_for_selector(".jp-Dialog")
    assert victim in dialog.text_content() and "cannot be undone" in dialog.text_content()
    page.click(".jp-Dialog .jp-mod-reject")   # Cancel: nothing happens
    page.wait_for_selector(".jp-Dialog", state="detached")
    assert row(page, victim).count() == 1 and victim in {i.name for i in store.list()}
    page.click(".jp-JuliusRecordings-deleteButton")
    page.click(".jp-Dialog .jp-mod-accept")
    row(page, victim).wait_for(state="detached")
    assert victim not in {i.name for i in store.list()}
    assert page.text_content(".jp-JuliusRecordings-status").startswith(f"deleted {victim}")
    assert page.text_content(".jp-JuliusRecordings-details").strip() == ""


def wait_for_result(page, seen):
    deadline = time.monotonic() + 180
    while not page.query_selector(".jp-JuliusRecordings-result[data-state]"):
        seen.add(page.text_content(".jp-JuliusRecordings-progressMessage"))
        assert time.monotonic() < deadline, f"replay did not end in 180 s; progress seen: {seen}"
        time.sleep(0.1)
    return page.query_selector(".jp-JuliusRecordings-result")


def test_replay_shows_progress_and_verifies(sidebar, lab, tmp_path):
    page, (_, store) = sidebar, lab
    page.locator(".jp-JuliusRecordings-search").fill("sidebar-")
    row(page, NAME).click()
    page.wait_for_selector(".jp-JuliusRecordings-detailsName")
    assert page.text_content(".jp-JuliusRecordings-detailsName") == NAME
    page.wait_for_selector('.jp-JuliusRecordings-section[data-key="steps"] li')
    summaries = page.evaluate("[...document.querySelectorAll('.jp-JuliusRecordings-section[data-key=\"steps\"] li')]"
                              ".map(li => li.textContent)")
    assert summaries and all(" — " in text for text in summaries)   # the server's summary of each step
    assert not any("{" in text for text in page.evaluate(
        "[...document.querySelectorAll('.jp-JuliusRecordings-detailsBody td')].map(td => td.textContent)"))
    page.click(".jp-JuliusRecordings-replayButton")
    page.wait_for_selector(".jp-JuliusRecordings-progress")
    seen = set()
    result = wait_for_result(page, seen)
    assert result.get_attribute("data-state") == "verified", result.text_content()
    assert result.text_content().startswith("verified")
    assert any("steps" in text for text in seen), seen  # "done/total steps · message" was shown
    steps = store.info(NAME).steps
    assert page.evaluate("document.querySelector('.jp-JuliusRecordings-progress').max") == steps
    assert page.evaluate("document.querySelector('.jp-JuliusRecordings-progress').value") == steps
    assert "jp-mod-verified" in page.get_attribute(".jp-JuliusRecordings-progress", "class")
    # the replay marked the recording verified, and the refreshed list shows what the server says
    page.wait_for_selector(f'.jp-JuliusRecordings-item[data-name="{NAME}"] .jp-mod-verified')
    assert store.info(NAME).status == "verified"
    page.wait_for_function("[...document.querySelectorAll('.jp-JuliusRecordings-table td')]"
                           ".some(td => td.textContent === 'verified')")  # details refreshed too
    page.screenshot(path=str(tmp_path / "sidebar.png"))  # never the README's picture


def test_failed_replay_is_one_line_of_cause_with_the_traceback_folded(sidebar, lab):
    page, (_, store) = sidebar, lab
    page.locator(".jp-JuliusRecordings-search").fill("sidebar-")
    row(page, FAILING).click()
    page.wait_for_function(f"document.querySelector('.jp-JuliusRecordings-detailsName')?.textContent === '{FAILING}'")
    page.click(".jp-JuliusRecordings-replayButton")
    result = wait_for_result(page, set())
    assert result.get_attribute("data-state") == "error"
    cause = result.query_selector(".jp-JuliusRecordings-cause").text_content()
    assert "\n" not in cause and "failed: KeyError: 'JULIUS_SIDEBAR_FLAG'" in cause and "on worker tcp://" in cause
    assert "Traceback" not in cause
    fold = result.query_selector("details.jp-JuliusRecordings-traceback")
    assert fold.get_attribute("open") is None   # collapsed
    pre = fold.query_selector("pre")
    assert "Traceback (most recent call last)" in pre.text_content()
    assert pre.evaluate("p => getComputedStyle(p).overflow") == "auto"
    assert "monospace" in pre.evaluate("p => getComputedStyle(p).fontFamily")
    assert result.text_content().count("KeyError: 'JULIUS_SIDEBAR_FLAG'") == 2   # the cause, and the traceback's last line
    bar = page.query_selector(".jp-JuliusRecordings-progress")
    assert "jp-mod-failed" in bar.get_attribute("class")
    accent = bar.evaluate("b => getComputedStyle(b).accentColor")
    error_colour = page.evaluate("""() => {
        const probe = document.createElement('span');
        probe.style.color = 'var(--jp-error-color1)';
        document.body.appendChild(probe);
        const colour = getComputedStyle(probe).color;
        probe.remove();
        return colour;
    }""")
    assert accent == error_colour   # the bar is red
    assert "verified" not in result.text_content().replace("not verified", "")
    assert store.info(FAILING).status == "complete"   # never "verified"
    page.wait_for_selector(f'.jp-JuliusRecordings-item[data-name="{FAILING}"] .jp-mod-complete')


def test_isolated_replay_sends_isolated_in_the_request(sidebar):
    page = sidebar
    page.locator(".jp-JuliusRecordings-search").fill("sidebar-")
    row(page, NAME).click()
    page.wait_for_selector(".jp-JuliusRecordings-isolated")
    bodies = []

    def answer(route):
        bodies.append(json.loads(route.request.post_data))
        route.fulfill(status=400, content_type="application/json",
                      body=json.dumps({"message": "seen by the test"}))

    replays = re.compile(r"/julius/api/replays(\?\d*)?$")  # with a cache-busting query
    page.route(replays, answer)
    try:
        page.check(".jp-JuliusRecordings-isolated")
        page.click(".jp-JuliusRecordings-replayButton")
        result = wait_for_result(page, set())
        page.uncheck(".jp-JuliusRecordings-isolated")
        page.click(".jp-JuliusRecordings-replayButton")
        wait_for_result(page, set())
    finally:
        page.unroute(replays)
    assert bodies == [{"name": NAME, "isolated": True}, {"name": NAME}]
    assert "seen by the test" in result.text_content()


def test_isolated_ticked_while_the_details_load_stays_ticked(sidebar):
    """The details are drawn twice (at once, then with what the server says): a tick in between stays."""
    page = sidebar
    held = []
    details = re.compile(rf"/julius/api/recordings/{NAME}(\?\d*)?$")
    page.route(details, lambda route: held.append(route))   # answered once the box is ticked
    try:
        page.locator(".jp-JuliusRecordings-search").fill("sidebar-")
        row(page, NAME).click()
        page.wait_for_selector(".jp-JuliusRecordings-isolated")
        page.check(".jp-JuliusRecordings-isolated")
        deadline = time.monotonic() + 30
        while not held:
            assert time.monotonic() < deadline, "the sidebar never asked for the details"
            page.wait_for_timeout(50)
        held[0].continue_()
    finally:
        page.unroute(details)
    page.wait_for_selector('.jp-JuliusRecordings-section[data-key="steps"] li')
    assert page.is_checked(".jp-JuliusRecordings-isolated")


LISTING = re.compile(r"/julius/api/recordings(\?\d*)?$")  # with a cache-busting query
MISSING_EXTENSION = "server extension is not available"


def shown_error(page):
    return page.locator(".jp-JuliusRecordings-error:not([hidden])")


def test_a_late_answer_of_an_older_refresh_never_replaces_a_newer_one(sidebar):
    page = sidebar
    held = []

    def answer(route):  # the first listing is held back; every later one is a 404
        if held:
            route.fulfill(status=404, body="Not Found")
        else:
            held.append(route)

    page.route(LISTING, answer)
    try:
        page.evaluate("void window.jupyterapp.commands.execute('julius:refresh')")
        while not held:  # Playwright calls the handler while the page waits
            page.wait_for_timeout(50)
        page.evaluate("window.jupyterapp.commands.execute('julius:refresh')")
        shown_error(page).wait_for()
        with page.expect_response(LISTING):
            held[0].continue_()  # the older refresh's real listing arrives last
        page.wait_for_timeout(500)  # time for it to be parsed and, were it applied, rendered
        assert MISSING_EXTENSION in shown_error(page).text_content()
        assert "loaded in" not in page.text_content(".jp-JuliusRecordings-status")
    finally:
        page.unroute(LISTING)
    refresh(page)
    assert shown_error(page).count() == 0


def test_missing_server_extension_and_open_in_notebook(sidebar):
    page = sidebar
    # a Jupyter server without the extension answers 404: the sidebar says what to do
    page.route(LISTING, lambda route: route.fulfill(status=404, body="Not Found"))
    page.evaluate("window.jupyterapp.commands.execute('julius:refresh')")
    assert MISSING_EXTENSION in shown_error(page).text_content()
    page.unroute(LISTING)
    refresh(page)
    page.wait_for_selector(".jp-JuliusRecordings-list .jp-JuliusRecordings-item")
    assert shown_error(page).count() == 0

    # "Open in notebook" inserts a %replay cell into the active notebook
    page.evaluate("window.jupyterapp.commands.execute('notebook:create-new', {kernelName: 'python3'})")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=30_000)
    inserted = page.evaluate(
        f"window.jupyterapp.commands.execute('julius:open-in-notebook', {{name: '{NAME}'}})")
    assert inserted is True
    source = page.evaluate(
        "window.jupyterapp.shell.currentWidget.content.activeCell.model.sharedModel.getSource()")
    assert source == f"%replay {NAME}"
