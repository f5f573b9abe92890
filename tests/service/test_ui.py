"""The investigators' console (``/ui``) driven in a real headless browser.

Debian's ``chromium`` through ``chromium-driver`` (``make test`` installs both, like redis-server),
with selenium, against the real app under uvicorn on loopback with an SQLite store. Identities are
enrolled through the API, then everything else happens in the page as a user would do it. The
browser tests skip, saying why, only when chromium or its driver is not installed; the header and
``--no-ui`` tests need no browser.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from service.core.config import Settings
from service.serve_cli import _overrides, add_arguments
from service.ui import STATIC_DIR
from service.ui.walkthrough import Console, headless_chromium, missing_browser, walkthrough

READ_KEY = "test-read-key"
WRITE_KEY = "test-write-key"
XSS_NAME = "<img src=x onerror=window.__xss=1>"
XSS_META = {"note": "<script>window.__xss=2</script>", "site": "<b>gate</b>"}
PEOPLE = {"alice": 1, "bob": 2, "carol": 3}

needs_browser = pytest.mark.skipif(missing_browser() is not None, reason=f"no browser: {missing_browser()}")


@pytest.fixture(scope="module")
def served(
    checkpoints: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_settings: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
    module_thread_server: Callable[..., Any],
) -> str:
    """A server that keeps frames, with three people, one hostile name and one to delete."""
    store = f"sqlite:///{tmp_path_factory.mktemp('ui') / 'gallery.sqlite'}"
    server = module_thread_server(make_settings(checkpoints.a, store, keep_frames=True))
    with server.client() as client:
        for name, seed in PEOPLE.items():
            client.enroll(make_tracklet(seed, frames=4), name, tracklet_id=f"{name}_cam1", camera="cam1",
                          platform="ground")
        client.enroll(make_tracklet(7, frames=2), XSS_NAME, tracklet_id="hostile_1", metadata=XSS_META)
        for i in (1, 2):
            client.enroll(make_tracklet(20 + i, frames=2), "dave", tracklet_id=f"dave_{i}", camera="cam2")
    return str(server.url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = missing_browser()
    if reason is not None:
        pytest.skip(f"no browser: {reason}")
    with headless_chromium() as driver:
        yield driver


@pytest.fixture
def console(browser: Any, served: str) -> Iterator[Console]:
    page = Console(browser, served)
    page.open()
    browser.execute_script("sessionStorage.clear()")  # each test enters its own key
    page.open()
    page.browser_errors()  # start each test with an empty console log
    yield page
    assert page.browser_errors() == []  # no CSP violation, uncaught error or failed load


def _query_files(tmp_path: Path, make_tracklet: Callable[..., list[tuple[str, bytes]]], seed: int) -> list[Path]:
    paths = []
    for name, data in make_tracklet(seed, frames=4):
        path = tmp_path / "query" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


# ---- without a browser ---------------------------------------------------------------------------
def test_console_page_has_a_strict_csp_and_no_inline_script_or_secret(served: str) -> None:
    page = httpx.get(f"{served}/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["default-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all(" src=" in tag for tag in scripts)  # scripts are files, none inline
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html)  # and no script tag has a body
    assert not re.search(r"\son[a-z]+\s*=", html)  # no inline event handler
    assert " style=" not in html
    for secret in (READ_KEY, WRITE_KEY):
        assert secret not in html
    for asset, media in (("console.js", "javascript"), ("console.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        response = httpx.get(f"{served}/ui/static/{asset}")
        assert response.status_code == 200 and media in response.headers["content-type"], asset
        assert response.headers["content-security-policy"] == csp
    missing = httpx.get(f"{served}/ui/static/nothing.js")
    assert missing.status_code == 404 and missing.json()["detail"]["error"] == "not_found"
    # The policy is the console's: the API and Swagger UI keep their own headers.
    assert "content-security-policy" not in httpx.get(f"{served}/healthz").headers


def test_the_console_uses_only_the_public_api_and_never_puts_the_key_in_a_url() -> None:
    source = (STATIC_DIR / "console.js").read_text()
    assert "innerHTML" not in source and "insertAdjacentHTML" not in source and "document.write" not in source
    assert "eval(" not in source and "new Function" not in source
    assert "localStorage" not in source  # the key lives for the tab only
    called = set(re.findall(r'`(/[a-z0-9]+(?:/[a-z]+)?)', source)) | set(re.findall(r'"(/[a-z0-9]+(?:/[a-z]+)?)', source))
    # The versioned paths only: the unversioned ones are deprecated aliases.
    assert called == {"/v1/stats", "/v1/tracklets", "/v1/query", "/v1/identities"}, called


def test_no_ui_leaves_the_console_out(checkpoints: Any, sqlite_url: str, make_settings: Callable[..., Any],
                                      thread_server: Callable[..., Any]) -> None:
    # lifespan off: the model is never loaded, and the routes are what is checked.
    server = thread_server(make_settings(checkpoints.a, sqlite_url, ui=False), lifespan="off", wait_ready=False)
    for path in ("/ui", "/ui/", "/ui/static/console.js"):
        response = httpx.get(f"{server.url}{path}")
        assert response.status_code == 404 and response.json()["detail"]["error"] == "not_found", path
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_no_ui_flag_and_environment_turn_the_console_off(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert _overrides(parser.parse_args(["--no-ui"]))["ui"] is False
    assert "ui" not in _overrides(parser.parse_args([]))  # the environment decides then
    monkeypatch.setenv("SASREID_UI", "off")
    assert Settings(auth=False).ui is False
    monkeypatch.delenv("SASREID_UI")
    assert Settings(auth=False).ui is True


def test_without_chromium_the_reason_names_the_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    reason = missing_browser()
    assert reason is not None and "chromium and chromedriver not found" in reason and "chromium-driver" in reason


# ---- in the browser ------------------------------------------------------------------------------
@needs_browser
def test_search_by_upload_then_the_identity_page(
    console: Console, tmp_path: Path, make_tracklet: Callable[..., list[tuple[str, bytes]]]
) -> None:
    """The acceptance path: key, search by upload, the expected identity first, its page;
    screenshots of the search, identity and gallery pages in the test's tmp dir."""
    query = _query_files(tmp_path, make_tracklet, PEOPLE["bob"])  # bob's own frames
    result = walkthrough(console, READ_KEY, query, tmp_path / "screens", top_k=5)
    assert result.ranked[0] == "bob", result.ranked
    assert {*PEOPLE, XSS_NAME} <= set(result.ranked)
    assert result.identity == "bob"
    # The identity page shows bob's tracklet with a thumbnail of each of its 4 frames.
    console.driver.back()
    console.wait(lambda _: console.by_id("identity-name").text == "bob" and console.all("#identity-tracklets > li"),
                 "bob's page did not come back")
    assert [li.get_attribute("data-tracklet") for li in console.all("#identity-tracklets > li")] == ["bob_cam1"]
    assert console.wait_thumbnails("#identity-tracklets", at_least=4) == 4
    for png in (result.search_png, result.identity_png, result.gallery_png):
        with Image.open(png) as shot:
            assert shot.format == "PNG" and shot.width >= 1000 and shot.height >= 400

    # Back on the search page: timings and per-tracklet thumbnails were shown.
    console.driver.back()
    console.wait(lambda _: console.ranked_identities(), "the results were not shown again")
    assert "embed" in console.by_id("search-timings").text and "total" in console.by_id("search-timings").text
    assert console.wait_thumbnails("#search-results > li.result:first-child", at_least=4) == 4

    # The key is in this tab's sessionStorage and nowhere a URL or the page could leak it.
    d = console.driver
    assert d.execute_script("return sessionStorage.getItem('sasreid.apiKey')") == READ_KEY
    assert d.execute_script("return localStorage.length") == 0
    urls = [d.current_url, *d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")]
    assert any("/frames/" in u for u in urls)  # the thumbnails were fetched
    assert not [u for u in urls if READ_KEY in u]
    assert READ_KEY not in d.page_source


@needs_browser
def test_the_enrolment_time_range_filters_the_search(console: Console) -> None:
    """'enrolled since' / 'until' reach the query as [since, until): a range that ends before any
    enrolment finds nobody, one that starts before it finds the gallery again."""
    console.use_key(READ_KEY)

    def search(since: str, until: str) -> tuple[list[str], str]:
        console.go("#/search")
        console.by_id("mode-tracklet-radio").click()
        field = console.by_id("query-tracklet")
        field.clear()
        field.send_keys("dave_1")
        for name, value in (("since", since), ("until", until)):
            console.driver.execute_script("document.getElementById(arguments[0]).value = arguments[1]", name, value)
        # The status line keeps the last search's text: blank it, then wait for this search's.
        console.driver.execute_script("document.getElementById('search-status').textContent = ''")
        console.by_id("search-run").click()
        status = lambda: console.by_id("search-status").text  # noqa: E731
        console.wait(lambda _: status() != "" and "searching" not in status(),
                     "the search did not finish")
        return console.ranked_identities(), console.by_id("search-status").text

    ranked, status = search("", "2001-01-01T00:00:00")
    assert ranked == [] and status.startswith("0 identities"), (ranked, status)
    ranked, status = search("2001-01-01T00:00:00", "")
    assert "dave" in ranked and "bob" in ranked, (ranked, status)
    ranked, status = search("", "")
    assert "dave" in ranked, (ranked, status)


@needs_browser
def test_names_and_metadata_are_shown_as_text(console: Console) -> None:
    console.use_key(READ_KEY)
    d = console.driver
    # In the search results (by an enrolled tracklet id this time) ...
    console.go("#/search")
    console.by_id("mode-tracklet-radio").click()
    console.by_id("query-tracklet").send_keys("alice_cam1")
    console.by_id("search-run").click()
    console.wait_text("search-timings", "total")
    assert "alice" not in console.ranked_identities()  # its only tracklet is the query itself
    hostile = [li for li in console.all("#search-results > li.result") if li.get_attribute("data-identity") == XSS_NAME]
    assert len(hostile) == 1
    assert console.all("a.identity-link", within=hostile[0])[0].text == XSS_NAME
    # ... in the gallery list ...
    console.go("#/gallery")
    console.wait(lambda _: console.all('#identities tbody tr'), "the gallery list did not load")
    link = next(a for a in console.all("#identities a.identity-link") if a.text == XSS_NAME)
    # ... and on its own page, with the metadata.
    link.click()
    console.wait(lambda _: console.by_id("identity-name").text == XSS_NAME, "the hostile identity did not open")
    console.wait_thumbnails("#identity-tracklets", at_least=2)
    facts = console.by_id("identity-tracklets").text
    assert XSS_META["note"] in facts and XSS_META["site"] in facts
    # Nothing ran and no element was made from the strings: every image is a thumbnail, no <b>.
    assert d.execute_script("return window.__xss") is None
    assert d.execute_script("return document.querySelectorAll('img:not(.thumb), b, main script').length") == 0


@needs_browser
def test_deleting_needs_a_write_key_and_a_confirmation(console: Console, served: str) -> None:
    def stored(tracklet_id: str) -> bool:
        response = httpx.get(f"{served}/tracklets/{tracklet_id}", headers={"X-API-Key": READ_KEY})
        return response.status_code == 200

    def delete_button(tracklet_id: str) -> Any:
        card = next(li for li in console.all("#identity-tracklets > li")
                    if li.get_attribute("data-tracklet") == tracklet_id)
        return console.all("button.delete-tracklet", within=card)[0]

    def open_dave() -> None:
        console.go("#/identity/dave")
        console.wait(lambda _: console.by_id("identity-name").text == "dave" and console.all("#identity-tracklets > li"),
                     "dave's page did not open")

    console.use_key(READ_KEY)
    open_dave()
    delete_button("dave_1").click()
    console.wait(lambda _: console.by_id("confirm-dialog").is_displayed(), "no confirmation was asked")
    console.by_id("confirm-ok").click()
    console.wait_text("banner", "403 forbidden")
    assert stored("dave_1")

    console.use_key(WRITE_KEY)
    open_dave()
    delete_button("dave_1").click()
    console.wait(lambda _: console.by_id("confirm-dialog").is_displayed(), "no confirmation was asked")
    assert "dave_1" in console.by_id("confirm-text").text
    console.by_id("confirm-cancel").click()
    assert stored("dave_1")

    delete_button("dave_1").click()
    console.by_id("confirm-ok").click()
    console.wait(lambda _: [li.get_attribute("data-tracklet") for li in console.all("#identity-tracklets > li")]
                 == ["dave_2"], "dave_1 stayed on the page")
    assert not stored("dave_1") and stored("dave_2")

    console.by_id("identity-delete").click()
    console.by_id("confirm-ok").click()
    console.wait(lambda d: d.current_url.endswith("#/gallery") and console.all("#identities tbody tr"),
                 "the gallery did not come back")
    assert "dave" not in [tr.get_attribute("data-identity") for tr in console.all("#identities tbody tr")]
    assert not stored("dave_2")


@pytest.fixture(scope="module")
def plain_server(
    checkpoints: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_settings: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
    module_thread_server: Callable[..., Any],
) -> str:
    """A server without --keep-frames: one enrolled identity and 55 imported ones (two pages)."""
    store = f"sqlite:///{tmp_path_factory.mktemp('ui-plain') / 'gallery.sqlite'}"
    server = module_thread_server(make_settings(checkpoints.a, store))
    with server.client() as client:
        client.enroll(make_tracklet(5, frames=3), "erin", tracklet_id="erin_1")
        stats = client.stats()
    records = []
    for i in range(55):
        vec = [0.0] * stats["dim"]
        vec[i % stats["dim"]] = 1.0
        records.append({"tracklet_id": f"imp_{i:02d}", "identity": f"imported_{i:02d}", "descriptor": vec,
                        "fingerprint": stats["fingerprint"]})
    answer = httpx.post(f"{server.url}/tracklets/batch", json=records, headers={"X-API-Key": WRITE_KEY})
    assert answer.status_code == 201, answer.text
    return str(server.url)


@needs_browser
def test_the_gallery_is_paginated_with_its_stats(browser: Any, plain_server: str) -> None:
    console = Console(browser, plain_server)
    console.open()
    console.use_key(READ_KEY)
    console.go("#/gallery")
    rows = lambda: [tr.get_attribute("data-identity") for tr in console.all("#identities tbody tr")]  # noqa: E731
    assert len(rows()) == 50 and rows()[0] == "erin"  # sorted by name: "erin" < "imported_00"
    assert console.by_id("page-info").text == "1–50 of 56"
    stats = console.by_id("stats").text
    fingerprint = httpx.get(f"{plain_server}/stats", headers={"X-API-Key": READ_KEY}).json()["fingerprint"]
    assert fingerprint in stats and "56" in stats
    assert not console.by_id("page-prev").is_enabled()
    before = console.generation()
    console.by_id("page-next").click()
    console.settled_after(before)
    assert rows() == [f"imported_{i:02d}" for i in range(49, 55)]
    assert console.by_id("page-info").text == "51–56 of 56"
    assert not console.by_id("page-next").is_enabled() and console.by_id("page-prev").is_enabled()
    assert console.browser_errors() == []


@needs_browser
def test_without_kept_frames_the_console_says_why(browser: Any, plain_server: str) -> None:
    answer = httpx.get(f"{plain_server}/tracklets/erin_1/frames/0", headers={"X-API-Key": READ_KEY})
    assert answer.status_code == 404 and answer.json()["detail"]["error"] == "frames_not_kept"
    assert "--keep-frames" in answer.json()["detail"]["message"]

    console = Console(browser, plain_server)
    console.open()
    console.use_key(READ_KEY)
    console.go("#/identity/erin")
    console.wait(lambda _: console.all("#identity-tracklets .no-frames"), "no explanation in place of pictures")
    notice = console.by_id("identity-frames-notice")
    assert notice.is_displayed() and "--keep-frames" in notice.text
    assert console.all("#identity-tracklets img") == []  # no broken images
    console.go("#/gallery")
    console.wait(lambda _: "started without --keep-frames" in console.by_id("stats").text, "stats do not say it")
    assert console.browser_errors() == []
