"""End to end in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium): type text, read the grid, click a cell, switch pages, trigger refusals, abort a
computation from the page. Skipped, with the reason printed, where no browser can run
(``scripts/setup.sh`` installs it when it runs as root with apt-get, as CI does)."""

from __future__ import annotations

import math
import shutil
import time

import pytest

from serve_helpers import request

TEXT = "the cat sat on the mat ."


def _vis(s: str) -> str:
    return s.replace(" ", "\u2423").replace("\n", "\u23ce").replace("\t", "\u21e5")


def _browser_or_skip():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("browser test: selenium is not installed (pip install selenium; scripts/setup.sh does)")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("browser test: Debian's chromium and chromium-driver are not installed "
                    "(apt-get install chromium chromium-driver; scripts/setup.sh does as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
              "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    try:
        return webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    except Exception as e:  # e.g. no usable display libraries in a minimal container
        pytest.skip(f"browser test: chromium could not start: {' '.join(str(e).split())[:200]}")


@pytest.fixture(scope="module")
def browser():
    drv = _browser_or_skip()
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _wait(fn, timeout=60.0, what="condition"):
    t0 = time.monotonic()
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception:  # element not there yet / stale while re-rendering
            pass
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _open(browser, url):
    browser.get(url)
    _wait(lambda: browser.find_element("tag name", "body").get_attribute("data-ready") == "1", what="page ready")


def _set_text(browser, text):
    """Put ``text`` in the shared text box (JS: control characters cannot be typed)."""
    browser.execute_script("document.getElementById('text').value = arguments[0];", text)


def _error(browser):
    e = browser.find_element("id", "error")
    return e.text if e.is_displayed() else ""


def _new_grid(browser, old_stamp):
    g = browser.find_element("id", "lens-grid")
    stamp = g.get_attribute("data-render-ms")
    return g if stamp and stamp != old_stamp else None


def test_lens_page_grid_cell_and_refusals(browser, explorer):
    import jetex

    _open(browser, explorer.url + "/lens")
    box = browser.find_element("id", "text")
    box.clear()
    box.send_keys(TEXT)
    box.send_keys("\n")  # Enter runs the page's computation
    grid = _wait(lambda: _new_grid(browser, None), what="lens grid")
    ref = jetex.iterative_lens(explorer.tiny, TEXT, order=1, top_k=10)
    heads = [th.text for th in grid.find_elements("css selector", "thead th")][1:-1]
    assert heads == [_vis(t) for t in ref.tokens]
    cells = grid.find_elements("css selector", "td.cell[data-r='2']")
    assert [c.text for c in cells] == [_vis(t) for t in ref.top1[2]]
    model_row = grid.find_elements("css selector", "td.cell[data-r='m']")
    assert [c.text for c in model_row] == [_vis(t) for t in ref.model_vocab]
    assert float(grid.get_attribute("data-render-ms")) > 0 and float(grid.get_attribute("data-server-s")) > 0

    # the default colour scale is the logit: no probabilities asked for; the probability scale
    # asks the server for them (a new request), then a click shows a cell's top-k with them
    from selenium.webdriver.support.ui import Select

    stamp = grid.get_attribute("data-render-ms")
    Select(browser.find_element("id", "lens-scale")).select_by_value("probability")
    grid = _wait(lambda: _new_grid(browser, stamp), what="grid with probabilities")
    cells = grid.find_elements("css selector", "td.cell[data-r='2']")
    cells[3].click()
    panel = _wait(lambda: browser.find_element("id", "cell-topk"), what="cell panel")
    rows = panel.find_elements("css selector", "tr")[1:]
    assert [r.find_elements("tag name", "td")[1].text for r in rows] == [_vis(t) for t in ref.vocab[2][3]]
    st, api = request(explorer.url, "POST", "/api/lens", {"text": TEXT, "order": 1})
    p0 = math.exp(api["view"]["logprobs"][2][3][0])
    shown = rows[0].find_elements("tag name", "td")[3].text
    assert shown.endswith("%") and abs(float(shown[:-1]) - 100 * p0) <= 0.06
    assert "cosine" in browser.find_element("id", "cell-info").text

    # another scale with the same data recolours the grid without a new request
    before = cells[3].value_of_css_property("background-color")
    stamp = grid.get_attribute("data-server-s")
    Select(browser.find_element("id", "lens-scale")).select_by_value("rank")
    recoloured = browser.find_elements("css selector", "#lens-grid td.cell[data-r='2']")[3].value_of_css_property("background-color")
    assert recoloured != before and browser.find_element("id", "lens-grid").get_attribute("data-server-s") == stamp
    Select(browser.find_element("id", "lens-scale")).select_by_value("logit")

    # the joint lens adds the expansion's row
    stamp = grid.get_attribute("data-render-ms")
    Select(browser.find_element("id", "lens-kind")).select_by_value("joint")
    browser.find_element("id", "lens-run").click()
    grid = _wait(lambda: _new_grid(browser, stamp), what="joint grid")
    assert grid.find_elements("css selector", "td.cell[data-r='e']")
    Select(browser.find_element("id", "lens-kind")).select_by_value("iterative")

    # refusals: each a one-line message on the page
    for text, order, fragment in [("", "1", "empty text"), ("the\x07cat", "1", "control character U+0007"),
                                  ("the " * 600, "1", "the limit is 2000"), ("the cat", "99", "out of range")]:
        _set_text(browser, text)
        o = browser.find_element("id", "lens-order")
        o.clear()
        o.send_keys(order)
        browser.find_element("id", "lens-run").click()
        msg = _wait(lambda: _error(browser), what=f"error {fragment!r}")
        assert fragment in msg and "\n" not in msg
    o = browser.find_element("id", "lens-order")
    o.clear()
    o.send_keys("1")
    _set_text(browser, TEXT)
    browser.find_element("id", "lens-run").click()
    _wait(lambda: not _error(browser) and browser.find_element("id", "lens-status").text.startswith("iterative"), what="served again")


def test_pages_paths_attribution_ngrams_and_abort(browser, explorer):
    _open(browser, explorer.url + "/lens")
    _set_text(browser, TEXT)
    # paths page via the navigation (no reload: the text stays)
    browser.find_element("css selector", "nav a[data-nav='paths']").click()
    assert browser.current_url.endswith("/paths") and browser.find_element("id", "page-paths").is_displayed()
    browser.find_element("id", "paths-run").click()
    table = _wait(lambda: browser.find_elements("css selector", "#paths-table tr")[1:], what="paths table")
    st, ref = request(explorer.url, "POST", "/api/paths", {"text": TEXT})
    assert [r.find_elements("tag name", "td")[1].text for r in table] == [p["path"] for p in ref["paths"]]
    # an unknown block is refused with its reason
    browser.find_element("id", "paths-use").send_keys("mlp.9")
    browser.find_element("id", "paths-run").click()
    assert "unknown block 'mlp.9'" in _wait(lambda: _error(browser), what="block error")

    # attribution: tokens coloured, a candidate target chosen by a click
    browser.find_element("css selector", "nav a[data-nav='attribution']").click()
    browser.find_element("id", "attr-run").click()
    toks = _wait(lambda: browser.find_elements("css selector", "#attr-tokens span.tok"), what="attribution tokens")
    st, ref = request(explorer.url, "POST", "/api/attribute", {"text": TEXT})
    assert [t.text for t in toks] == [_vis(t) for t in ref["attribution"]["tokens"]]
    chips = browser.find_elements("css selector", "#attr-candidates button")
    second = ref["candidates"][1]["token"]
    chips[1].click()
    _wait(lambda: f'attribution of "{second}"' in browser.find_element("id", "attr-status").text
          or f"attribution of {second!r}" in browser.find_element("id", "attr-status").text, what="new target")

    # n-grams: listing, token search, export link, diff side by side
    browser.find_element("css selector", "nav a[data-nav='ngrams']").click()
    assert not browser.find_element("id", "shared").is_displayed()
    browser.find_element("id", "ng-run").click()
    rows = _wait(lambda: browser.find_elements("css selector", "#ng-table tr")[1:], what="n-gram rows")
    assert len(rows) == 20
    browser.find_element("id", "ng-token").send_keys("cat")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "ng-side")).select_by_value("output")
    browser.find_element("id", "ng-run").click()
    _wait(lambda: "token \"cat\" as output" in browser.find_element("id", "ng-status").text, what="token search")
    outs = [r.find_elements("tag name", "td")[2].text for r in browser.find_elements("css selector", "#ng-table tr")[1:]]
    assert outs and set(outs) == {"cat"}
    assert "format=csv" in browser.find_element("id", "ng-export").get_attribute("href")
    Select(browser.find_element("id", "ng-diff-store")).select_by_value("store_b")
    browser.find_element("id", "ng-diff-run").click()
    diff_rows = _wait(lambda: browser.find_elements("css selector", "#ng-diff tr")[1:], what="diff")
    assert len(diff_rows) == 10

    # back to the lens; a slow computation is abandoned by a newer request: the server stops it
    browser.back()
    browser.back()
    browser.back()
    _wait(lambda: browser.find_element("id", "page-lens").is_displayed(), what="lens page after back")
    ex = explorer.app.state.explorer
    cancelled0 = ex.counters.cancelled
    explorer.slow_hooks.delay = 1.0  # a lens of several seconds on the slow model
    try:
        Select(browser.find_element("id", "model")).select_by_value("slow")
        browser.find_element("id", "lens-run").click()
        _wait(lambda: ex.counters.running.get("slow") == "lens", what="slow lens running")
        Select(browser.find_element("id", "model")).select_by_value("tiny")
        browser.find_element("id", "lens-run").click()  # aborts the page's previous request
        _wait(lambda: ex.counters.cancelled == cancelled0 + 1, timeout=20, what="the abandoned computation to stop")
    finally:
        explorer.slow_hooks.delay = 0.15
    _wait(lambda: browser.find_element("id", "lens-status").text.startswith("iterative"), what="the new lens")
