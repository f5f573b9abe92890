"""Driving the console in a real headless browser: Debian's ``chromium`` through its
``chromium-driver`` (``/usr/bin/chromedriver``), with selenium (the ``dev`` extra).

Used by the browser tests (``tests/service/test_ui.py``) and by ``make demo``, which saves the
screenshots of the search and identity pages to ``demo/``. Nothing is downloaded: selenium is given
the driver's path, so its Selenium Manager (which would fetch browsers) never runs.
"""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

BROWSER_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)
INSTALL_HINT = "install Debian's chromium and chromium-driver packages (`make chromium`, which `make test` runs)"
# The longest screenshot kept; a gallery page of 50 identities is well under it.
MAX_SHOT_HEIGHT = 4000
_AUTH_ANSWER = re.compile(r"Failed to load resource: the server responded with a status of 40[13]\b")


def _which(names: Sequence[str]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) when both are installed."""
    browser, driver = _which(BROWSER_NAMES), _which(DRIVER_NAMES)
    return (browser, driver) if browser and driver else None


def missing_browser() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    missing = [what for what, names in (("chromium", BROWSER_NAMES), ("chromedriver", DRIVER_NAMES)) if not _which(names)]
    return f"{' and '.join(missing)} not found on PATH: {INSTALL_HINT}" if missing else None


@contextmanager
def headless_chromium(width: int = 1280, height: int = 900) -> Iterator[WebDriver]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = browser_paths()
    if paths is None:
        raise RuntimeError(missing_browser() or "chromium not found")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests and CI run as root, where chromium's sandbox refuses to start
        "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
        "--disable-gpu",
        f"--window-size={width},{height}",
        # Nothing outside loopback is reachable, and nothing else should be asked.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
    ):
        options.add_argument(arg)
    # The console's messages (a CSP violation is reported there) are read back by browser_errors.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Console:
    """The console at ``base_url/ui`` in ``driver``."""

    driver: WebDriver
    base_url: str
    timeout: float = 20.0

    # ---- waiting ------------------------------------------------------------------------------
    def wait(self, condition: Any, message: str = "") -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # A re-render replaces elements a condition may be reading: that poll counts as "not yet".
        wait = WebDriverWait(self.driver, self.timeout, poll_frequency=0.05,
                             ignored_exceptions=(StaleElementReferenceException,))
        return wait.until(condition, message)

    def by_id(self, element_id: str) -> WebElement:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def all(self, css: str, within: WebElement | None = None) -> list[WebElement]:
        from selenium.webdriver.common.by import By

        return (within or self.driver).find_elements(By.CSS_SELECTOR, css)

    def wait_text(self, element_id: str, contains: str) -> str:
        self.wait(lambda _: contains in self.by_id(element_id).text, f"#{element_id} never showed {contains!r}")
        return str(self.by_id(element_id).text)

    # ---- actions -------------------------------------------------------------------------------
    def open(self, fragment: str = "#/search") -> None:
        """Load the console afresh (the tab's sessionStorage, and so the key, stays)."""
        # Via about:blank: a get() of the URL already shown would only move to its fragment.
        self.driver.get("about:blank")
        self.driver.get(f"{self.base_url}/ui{fragment}")
        self.wait(lambda d: d.execute_script("return document.body.dataset.ready === '1'"), "the console did not start")
        self.settled_after(0)

    def generation(self) -> int:
        return int(self.driver.execute_script("return Number(document.body.dataset.generation || 0)"))

    def settled_after(self, generation: int) -> None:
        """Wait until a page rendering started after ``generation`` has finished."""
        self.wait(
            lambda d: d.execute_script("return Number(document.body.dataset.routed || 0)") > generation,
            "the page did not finish rendering",
        )

    def go(self, fragment: str) -> None:
        """Navigate inside the page (keeps sessionStorage and the loaded script), re-rendering it
        even when ``fragment`` is the one shown, and wait until it is rendered."""
        before = self.generation()
        self.driver.execute_script(
            "if (location.hash === arguments[0]) window.dispatchEvent(new HashChangeEvent('hashchange'));"
            "else location.hash = arguments[0];",
            fragment,
        )
        self.settled_after(before)

    def use_key(self, key: str) -> None:
        before = self.generation()
        field = self.by_id("api-key")
        field.clear()
        field.send_keys(key)
        self.by_id("key-use").click()
        self.wait_text("key-status", "accepted")
        self.settled_after(before)  # using a key re-renders the page shown

    def search_by_upload(self, frames: Sequence[Path], top_k: int = 10) -> list[str]:
        """Upload ``frames`` as the query; returns the identities in the page's ranked order."""
        self.go("#/search")
        self.by_id("mode-upload-radio").click()
        self.by_id("frames").send_keys("\n".join(str(Path(p).resolve()) for p in frames))
        self.wait_text("frames-chosen", f"{len(frames)} frame")
        top = self.by_id("top-k")
        top.clear()
        top.send_keys(str(top_k))
        self.by_id("search-run").click()
        self.wait_text("search-timings", "total")
        return self.ranked_identities()

    def ranked_identities(self) -> list[str]:
        return [str(li.get_attribute("data-identity")) for li in self.all("#search-results > li.result")]

    def wait_thumbnails(self, container_css: str, at_least: int = 1) -> int:
        """Wait until every thumbnail under ``container_css`` has loaded (and at least ``at_least``
        exist); returns how many."""
        script = """
            const imgs = [...document.querySelectorAll(arguments[0] + ' img.thumb')];
            const done = imgs.every((i) => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0);
            return done ? imgs.length : -1;
        """
        self.wait(lambda d: d.execute_script(script, container_css) >= at_least,
                  f"thumbnails under {container_css} did not load")
        return int(self.driver.execute_script(script, container_css))

    def open_identity_from_results(self, rank: int = 1) -> str:
        link = self.all("#search-results > li.result a.identity-link")[rank - 1]
        name = str(link.text)
        link.click()
        self.wait(lambda _: self.by_id("identity-name").text == name and self.all("#identity-tracklets > li"),
                  f"the identity page of {name!r} did not open")
        return name

    def screenshot(self, path: Path) -> Path:
        """The whole page (beyond the window) as PNG."""
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics["cssContentSize"]
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], MAX_SHOT_HEIGHT),
                         "scale": 1},
            },
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def browser_errors(self) -> list[str]:
        """Console messages at error level since the last call (CSP violations, uncaught errors,
        failed loads), except the API's 401/403 answers: chromium logs every non-2xx fetch, and the
        console asks ``/v1/stats`` without a key on purpose (it is how it learns that auth is off)."""
        messages = [str(e["message"]) for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]
        return [m for m in messages if not _AUTH_ANSWER.search(m)]


@dataclass(frozen=True)
class Walkthrough:
    ranked: list[str]
    search_png: Path
    identity_png: Path
    gallery_png: Path
    identity: str


def walkthrough(console: Console, key: str | None, query_frames: Sequence[Path], out_dir: Path,
                top_k: int = 5) -> Walkthrough:
    """Open the console, enter ``key`` (None: auth is off), search by uploading ``query_frames``,
    open the first identity, then the gallery; saves ``console-search.png``,
    ``console-identity.png`` and ``console-gallery.png`` in ``out_dir``, each once its thumbnails
    have loaded (when the server keeps frames)."""
    console.open()
    if key is not None:
        console.use_key(key)
    ranked = console.search_by_upload(query_frames, top_k=top_k)
    if not ranked:
        raise RuntimeError("the search answered no identity")
    kept = bool(console.driver.execute_script("return document.getElementById('search-frames-notice').hidden"))
    if kept:
        console.wait_thumbnails("#search-results")
    search_png = console.screenshot(out_dir / "console-search.png")
    identity = console.open_identity_from_results(1)
    if kept:
        console.wait_thumbnails("#identity-tracklets")
    identity_png = console.screenshot(out_dir / "console-identity.png")
    console.go("#/gallery")
    gallery_png = console.screenshot(out_dir / "console-gallery.png")
    return Walkthrough(ranked, search_png, identity_png, gallery_png, identity)
