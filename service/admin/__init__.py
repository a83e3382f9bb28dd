"""The /admin page: a static HTML + JS + CSS page on the JSON API.

The page holds no data and no secret: it asks for an admin key, keeps it in the tab's
sessionStorage, and sends it as a Bearer header on every API call. No asset comes from
elsewhere, and the Content-Security-Policy says so to the browser.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

# Scripts, styles and API calls from this origin only; thumbnails arrive as blob: URLs.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/admin")
def admin_page() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "admin.html",
        media_type="text/html",
        headers={
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


def mount_admin(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/admin/static", StaticFiles(directory=STATIC_DIR), name="admin-static")
