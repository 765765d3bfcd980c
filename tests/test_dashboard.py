"""The live map dashboard in a real browser: Debian's Chromium driven by Playwright, against a
real ``yujing serve`` (HTTP, SSE, embedded MQTT broker, SQLite in memory), no mocks.

A simulated quake (scenario luding2022, 20,000 phones) is started from the page's replay
control, after typing in the operator key the server made on its first start; the test waits for the event row, the alert and its tier outlines on the map, and
checks that the page never asked anything of another origin (the dashboard works offline).

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright
install``: it downloads browsers). Without them the test fails, it does not skip.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from yujing.serve import ServeOptions, Server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DOCS_PNG = Path(__file__).resolve().parents[1] / "docs" / "dashboard.png"
WAIT_MS = 30_000
#: the id of an event that has an alert (not a cancel), is not retracted, and whose magnitude
#: in the list is that of the scenario (M6.6, within the estimate's spread); else null
ALERTED_EVENT_JS = """() => {
  for (const a of document.querySelectorAll('#alerts tr[data-alert-id]')) {
    if (a.dataset.msgType === 'cancel') continue;
    const e = document.querySelector(`#events tr[data-event-id="${a.dataset.eventId}"]`);
    if (!e || e.classList.contains('retracted')) continue;
    const m = parseFloat(e.querySelector('td.mag').textContent);
    if (m >= 5.5 && m <= 7.5) return a.dataset.eventId;
  }
  return null;
}"""


class ThreadedServer:
    """A :class:`Server` on its own asyncio loop in a background thread."""

    def __init__(self, opts: ServeOptions):
        self.srv = Server(opts)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="yujing-serve", daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.srv.start(), self.loop).result(timeout=60)
        return self.srv

    def __exit__(self, *exc) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()

    async def _stop(self) -> None:
        await self.srv.stop()


@pytest.fixture
def server():
    with ThreadedServer(ServeOptions(port=0, mqtt_port=0, store="sqlite://:memory:")) as srv:
        yield srv


def _sync_playwright():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: the dashboard test needs Debian's Chromium; run `apt-get install -y chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: run `pip install playwright` (not `playwright install`)")
    return sync_playwright


def _not_blank(png: bytes) -> float:
    """Standard deviation of the screenshot's grey levels (a blank page is ~0)."""
    from PIL import Image, ImageStat

    im = Image.open(io.BytesIO(png)).convert("L")
    return ImageStat.Stat(im).stddev[0]


def _save_docs_png(png: bytes) -> None:
    """A small copy for docs/dashboard.md: scaled to 960 px wide, 256 colours."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    im = im.resize((960, round(im.height * 960 / im.width)), Image.LANCZOS)
    im = im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    DOCS_PNG.parent.mkdir(exist_ok=True)
    im.save(DOCS_PNG, optimize=True)


def test_dashboard_shows_a_replayed_quake(server, tmp_path):
    sync_playwright = _sync_playwright()
    base = server.http_url
    origin = urlsplit(base)
    requests: list[str] = []
    console_errors: list[str] = []
    failed: list[str] = []

    t0 = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"uncaught: {e}"))
            page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))

            page.goto(base + "/")
            assert page.url == base + "/static/index.html"

            # the basemap: world-atlas countries drawn by Leaflet as SVG paths
            page.wait_for_selector("body[data-basemap=ready]", timeout=WAIT_MS)
            n_countries = page.locator("path.basemap-country").count()
            assert n_countries > 150, f"basemap drew only {n_countries} countries"
            page.wait_for_selector("#stream-state.dot-on", timeout=WAIT_MS)  # the SSE stream is open

            # the replay control needs an operator key: the page asks for it, and the user pastes
            # the one yujing serve made on its first start (printed, for a memory store)
            page.wait_for_selector('#replay-state[data-state="need-key"]', timeout=WAIT_MS)
            assert page.is_visible("#key-form") and not page.is_visible("#replay-form")
            page.fill("#operator-key", server.operator_key)
            page.click("#key-button")
            # choose the scenario, 20,000 phones, Replay
            page.wait_for_selector('#replay-source option[value="scenario:luding2022"]', state="attached", timeout=WAIT_MS)
            assert not page.is_visible("#key-form")
            page.select_option("#replay-source", "scenario:luding2022")
            page.fill("#replay-phones", "20000")
            page.click("#replay-button")
            page.wait_for_selector('#replay-state[data-state="ok"][data-running="true"]', timeout=WAIT_MS)
            assert "Luding" in page.inner_text("#replay-state")

            # an event row, then an alert with its tiers on the map. A false event from a few
            # noise triggers may come first (then be retracted and its alert cancelled): wait for
            # an alert, not a cancel, of an event that stands, and read that event's magnitude.
            page.wait_for_selector("#events tr[data-event-id]", timeout=WAIT_MS)
            try:
                event_id = page.wait_for_function(ALERTED_EVENT_JS, timeout=WAIT_MS).json_value()
            except Exception:
                pytest.fail(f"no standing alerted event with 5.5 <= M <= 7.5 in {WAIT_MS / 1000:.0f} s; "
                            f"events {page.inner_text('#events')!r}, alerts {page.inner_text('#alerts')!r}")
            row = page.locator(f'#events tr[data-event-id="{event_id}"]')
            page.wait_for_selector("path.tier-take_action", state="attached", timeout=WAIT_MS)
            assert page.locator("path.tier").count() >= 2  # take_action and be_aware
            page.wait_for_selector("path.mmi-band", state="attached", timeout=WAIT_MS)
            # trigger areas are public only once k (10) devices triggered in the area: they may
            # come a few seconds after the first alert, as the P wave reaches more phones
            page.wait_for_selector("path.trigger-area", state="attached", timeout=WAIT_MS)
            # devices online per area arrive with the next network poll (every 10 s)
            page.wait_for_function("Number(document.getElementById('map').dataset.networkAreas || 0) > 0", timeout=15_000)
            page.wait_for_function("/devices online [1-9]/.test(document.getElementById('health').textContent)", timeout=15_000)

            mag = float(row.locator("td.mag").inner_text())
            assert 5.5 <= mag <= 7.5, f"event {event_id} shown as M{mag}"
            assert int(row.get_attribute("data-version")) >= 1
            assert "retracted" not in (row.get_attribute("class") or "")
            page.wait_for_selector(f'#events tr.selected[data-event-id="{event_id}"]', timeout=5_000)  # followed

            page.select_option("#timeline-span", "1")  # the last minute: the replay's messages spread out
            page.wait_for_timeout(800)  # let the last coalesced redraw land
            png = page.screenshot(path=str(tmp_path / "dashboard.png"))
            issues = list(console_errors), list(failed)
        finally:
            browser.close()
    elapsed = time.monotonic() - t0

    foreign = [u for u in requests if urlsplit(u).scheme != "data" and
               (urlsplit(u).scheme, urlsplit(u).netloc) != (origin.scheme, origin.netloc)]
    assert not foreign, f"requests to other origins: {foreign}"
    errors, failures = issues
    assert not errors, f"console errors: {errors}"
    assert not failures, f"failed requests: {failures}"

    assert len(png) > 30_000, f"screenshot only {len(png)} bytes"
    spread = _not_blank(png)
    assert spread > 20, f"screenshot looks blank (grey-level std {spread:.1f})"
    if os.environ.get("YUJING_UPDATE_SCREENSHOT"):  # the docs' copy changes only when asked
        _save_docs_png(png)
    assert elapsed < 90, f"the browser part took {elapsed:.0f} s"
