"""/docs and /redoc render in a real browser with no network beyond the server itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.core.config import Settings
from tests.helpers.browser import chromium
from tests.helpers.uvicorn_thread import serving

pytestmark = pytest.mark.slow

# A page, and the (resource type, URL) of every request it made off the server.
OfflinePage = tuple[Any, list[tuple[str, str]]]


@pytest.fixture
def live_server(sqlite_url: str, make_settings: Callable[..., Settings]) -> Iterator[str]:
    """The app served by uvicorn on a free port, in a thread of this process."""
    from service.main import create_app

    with serving(create_app(make_settings(sqlite_url))) as url:
        yield url


@pytest.fixture
def offline_page(live_server: str) -> Iterator[OfflinePage]:
    """A Chromium page whose requests to any host but the server are refused and recorded
    (resource type and URL)."""
    server_host = urlsplit(live_server).netloc
    blocked: list[tuple[str, str]] = []

    def only_local(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).netloc == server_host:
            route.continue_()
        else:
            blocked.append((route.request.resource_type, url))
            route.abort()

    with chromium() as browser:
        page = browser.new_page()
        page.route("**/*", only_local)
        yield page, blocked


def test_swagger_ui_renders_every_operation_offline(
    live_server: str, offline_page: OfflinePage
) -> None:
    page, blocked = offline_page
    paths = set(httpx.get(f"{live_server}/openapi.json").json()["paths"])
    page.goto(f"{live_server}/docs")
    page.wait_for_selector(".opblock", timeout=20_000)
    shown = set(page.locator(".opblock-summary-path").all_inner_texts())
    shown = {p.replace("\u200b", "").strip() for p in shown}
    assert paths <= shown, f"operations missing from /docs: {paths - shown}"
    assert blocked == [], f"/docs asked for resources off the server: {blocked}"


def test_redoc_renders_offline(live_server: str, offline_page: OfflinePage) -> None:
    page, blocked = offline_page
    page.goto(f"{live_server}/redoc")
    # ReDoc lists each operation in its side menu; a blank page has none.
    page.wait_for_selector(
        "li[data-item-id^='tag/'], li[data-item-id^='operation/']", timeout=20_000
    )
    text = page.inner_text("body")
    assert "/v1/classes" in text and "/v1/classify" in text
    # ReDoc's bundle links its "API docs by Redocly" badge image to its CDN; a missing badge
    # changes nothing else on the page. Everything that renders the page must come from here.
    needed = [(kind, url) for kind, url in blocked if kind != "image"]
    assert needed == [], f"/redoc asked for resources off the server: {needed}"
