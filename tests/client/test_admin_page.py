"""/admin in headless chromium against a live server: sign in with the admin key, register a
class by dropping images on the form, watch it train to ready, filter, delete it."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from liteembed_client import Client, NotFound
from tests.helpers.browser import chromium
from tests.helpers.live_server import REPO, LiveServer

pytestmark = pytest.mark.slow

# Set to 1 to refresh the README's screenshot from this test.
UPDATE_SCREENSHOT_ENV = "LITEEMBED_UPDATE_SCREENSHOTS"
SCREENSHOT = REPO / "docs" / "images" / "admin.png"

DROP_FILES = """
({files}) => {
  const transfer = new DataTransfer();
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
    transfer.items.add(new File([bytes], f.name, { type: "image/png" }));
  }
  const zone = document.getElementById("drop-zone");
  zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
}
"""


def world_pngs(name: str, count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    from testbed import default_world

    images = []
    for i, image in enumerate(default_world().render([name], n=count, seed=seed)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append((f"{name}-{i}.png", buffer.getvalue()))
    return images


def drop(page: Any, files: list[tuple[str, bytes]]) -> None:
    encoded = [{"name": n, "data": base64.b64encode(d).decode()} for n, d in files]
    page.evaluate(DROP_FILES, {"files": encoded})


def row(page: Any, name: str) -> Any:
    return page.locator("#class-rows tr[data-id]").filter(has=page.locator(".name", has_text=name))


def test_register_watch_filter_delete_in_the_browser(
    live_server: LiveServer, tmp_path: Path
) -> None:
    with Client(live_server.url, live_server.admin_key) as client:
        existing = [
            client.register_class(name, world_pngs(name, 4), hints=[hint])
            for name, hint in (("badge", "star"), ("poppy", "flower"))
        ]
        for info in existing:
            client.wait_ready(info.id, timeout=120, poll_interval=0.1)

    server_host = urlsplit(live_server.url).netloc
    off_server: list[str] = []
    api_calls: list[tuple[str, str | None]] = []

    def only_local(route: Any) -> None:
        if urlsplit(route.request.url).netloc == server_host:
            route.continue_()
        else:
            off_server.append(route.request.url)
            route.abort()

    def record(request: Any) -> None:
        if urlsplit(request.url).path.startswith("/v1/"):
            api_calls.append((request.url, request.headers.get("authorization")))

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 820})
        page.route("**/*", only_local)
        page.on("request", record)
        page.goto(f"{live_server.url}/admin")

        # Signed out: the key dialog comes first, and a wrong key is refused there.
        page.fill("#key-input", "not-the-key")
        page.click("#key-form button[type=submit]")
        expect(page.locator("#key-error")).not_to_be_empty()
        assert page.locator("#key-dialog").is_visible()
        page.fill("#key-input", live_server.admin_key)
        page.click("#key-form button[type=submit]")
        row(page, "badge").wait_for()
        assert not page.locator("#key-dialog").is_visible()
        assert (
            page.evaluate("sessionStorage.getItem('liteembed.adminKey')") == live_server.admin_key
        )

        # The first image's thumbnail is shown for each class.
        page.wait_for_function(
            "() => [...document.querySelectorAll('#class-rows img.thumb')]"
            ".every((img) => img.complete && img.naturalWidth > 0)"
        )
        assert row(page, "poppy").locator(".badge").inner_text() == "ready"
        assert "star" in row(page, "badge").inner_text()
        assert "tenant default" in row(page, "badge").inner_text()

        # Register through the form by dropping images on it; the page follows it to ready.
        drop(page, world_pngs("tartan", 4))
        assert page.locator("#chosen li").count() == 4
        # "Not this": two images of its look-alike, sent as the class's negative images.
        page.set_input_files(
            "#reg-negatives",
            [
                {"name": name, "mimeType": "image/png", "buffer": data}
                for name, data in world_pngs("grille", 2, seed=5)
            ],
        )
        assert page.locator("#chosen-negatives li").count() == 2
        page.fill("#reg-name", "tartan")
        # The hint comes from the model's vocabulary, offered on the page.
        page.click("#vocabulary summary")
        page.fill("#reg-hints", "patt")
        page.click("#vocabulary-words button:text-is('pattern')")
        assert page.input_value("#reg-hints") == "pattern"
        assert page.locator("#vocabulary-list option").count() >= 1
        page.click("#reg-submit")
        expect(page.locator("#reg-message")).to_have_text("Registered tartan: queued.")
        assert page.locator("#chosen li").count() == 0
        assert page.locator("#chosen-negatives li").count() == 0
        tartan = row(page, "tartan")
        tartan.wait_for()
        page.wait_for_function(
            "() => [...document.querySelectorAll('#class-rows tr')]"
            ".some((r) => r.textContent.includes('tartan') && r.dataset.status === 'ready')",
            timeout=120_000,
        )
        tartan_id = tartan.get_attribute("data-id")
        # The worker trained it against the two negative images ("not this", source user).
        with Client(live_server.url, live_server.admin_key) as client:
            learned = client.get_class(tartan_id)
        groups = (learned.diagnostics or {})["evidence"]["groups"]
        assert {"name": "negative images", "source": "user", "images": 2} in groups
        assert "pattern" in tartan.inner_text()
        assert "liteembed-tiny" in tartan.inner_text()

        # Filter by status.
        page.select_option("#status-filter", "failed")
        expect(page.locator("#total")).to_have_text("0 failed classes")
        assert page.locator("#class-rows tr[data-id]").count() == 0
        page.select_option("#status-filter", "ready")
        tartan.wait_for()
        expect(page.locator("#total")).to_have_text("3 ready classes")

        # The screenshot for the README: three classes, and the next one waiting in the form.
        drop(page, world_pngs("grille", 3, seed=1))
        page.fill("#reg-name", "grille")
        page.fill("#reg-hints", "pattern")
        page.select_option("#status-filter", "")
        expect(page.locator("#total")).to_have_text("3 classes")
        shot = tmp_path / "admin.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get(UPDATE_SCREENSHOT_ENV) == "1":
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT)
        page.click("#reg-clear")

        # Delete asks first; Cancel keeps the class, Delete removes it.
        tartan.locator("button", has_text="Delete").click()
        assert page.locator("#delete-dialog").is_visible()
        assert page.locator("#delete-name").inner_text() == "tartan"
        page.click("#delete-dialog button[value=cancel]")
        assert tartan.count() == 1
        tartan.locator("button", has_text="Delete").click()
        page.click("#delete-confirm")
        tartan.wait_for(state="detached")

        # Still signed in after a reload: the key lives in the tab's session storage.
        page.reload()
        row(page, "badge").wait_for()
        assert not page.locator("#key-dialog").is_visible()

    with Client(live_server.url, live_server.admin_key) as client, pytest.raises(NotFound):
        client.get_class(str(tartan_id))
    assert off_server == [], f"/admin asked for resources off the server: {off_server}"
    assert api_calls, "the page made no API calls"
    for url, authorization in api_calls:
        assert live_server.admin_key not in url  # never in a URL
        assert authorization is not None and authorization.startswith("Bearer ")
    assert any(a == f"Bearer {live_server.admin_key}" for _, a in api_calls)


def test_a_class_s_threshold_and_impact_are_shown(live_server: LiveServer) -> None:
    """A ready class's row says its threshold, and what it took from another class when it
    became ready and what another took from it (written into its row here: which way exemplars
    go is the method's business)."""
    import json

    from sqlalchemy import create_engine, text

    with Client(live_server.url, live_server.admin_key) as client:
        first = client.register_class("admin-coin", world_pngs("coin", 4, seed=3))
        second = client.register_class("admin-ramp", world_pngs("ramp", 4, seed=3))
        client.wait_ready(first.id, timeout=120)
        second = client.wait_ready(second.id, timeout=120)
    impact = {"class_id": first.id, "name": "admin-coin", "taken": 2, "of": 4}
    engine = create_engine(f"sqlite:///{live_server.log_path.parent / 'liteembed.db'}")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE classes SET impact = :impact WHERE id = :id"),
            {
                "impact": json.dumps(
                    [
                        {**impact, "relearned": True, "remaining": 0},
                        {**impact, "direction": "taken_by", "taken": 1, "relearned": False},
                    ]
                ),
                "id": second.id,
            },
        )
    engine.dispose()

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 820})
        page.goto(f"{live_server.url}/admin")
        page.fill("#key-input", live_server.admin_key)
        page.click("#key-form button[type=submit]")
        taker = row(page, "admin-ramp")
        taker.wait_for()
        lines = taker.locator(".impact")
        expect(lines).to_have_text(
            ["took 2/4 of admin-coin · re-learned, 0 left", "admin-coin took 1/4 of its images"]
        )
        assert lines.first.get_attribute("title") == first.id
        assert second.threshold is not None
        expect(taker).to_contain_text(f"accepts ≥ {second.threshold:.3f}")
        assert row(page, "admin-coin").locator(".impact").count() == 0
