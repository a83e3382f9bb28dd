"""The documented PostgreSQL backup and restore (`pg_dump -Fc`, `pg_restore --clean
--if-exists --no-owner` into another database): the restored deployment lists the same classes
and scores an image the same."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.helpers.images import COLOURS, class_images, image_bytes

pytestmark = pytest.mark.postgres


def _libpq(url: str) -> str:
    """The SQLAlchemy URL as pg_dump and pg_restore read it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _scores(client: Any) -> list[tuple[str, float]]:
    image = image_bytes(COLOURS["green"], seed=321)
    answer = client.post("/v1/classify", files={"image": ("q.png", image, "image/png")})
    assert answer.status_code == 200, answer.text
    return [(p["label"], p["similarity"]) for p in answer.json()["predictions"]]


@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is not installed")
def test_a_pg_dump_restored_elsewhere_answers_as_the_original(
    postgres_database: str,
    empty_postgres: str,
    make_settings: Any,
    make_client: Any,
    wait_status: Any,
    tmp_path: Any,
) -> None:
    from tests.helpers.databases import truncate_postgres

    truncate_postgres(postgres_database)
    original = make_client(make_settings(postgres_database))
    for name, colour in (("zorb", "green"), ("plax", "magenta")):
        answer = original.post("/v1/classes", data={"name": name}, files=class_images(colour))
        assert answer.status_code == 202, answer.text
        assert wait_status(original, answer.json()["id"], {"ready", "failed"})["status"] == "ready"
    dump = tmp_path / "liteembed.dump"
    subprocess.run(["pg_dump", "-Fc", "-d", _libpq(postgres_database), "-f", str(dump)], check=True)
    subprocess.run(
        [
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            "-d",
            _libpq(empty_postgres),
            str(dump),
        ],
        check=True,
    )
    restored = make_client(make_settings(empty_postgres))
    assert _scores(restored) == _scores(original)
    listed = restored.get("/v1/classes").json()
    assert sorted(item["name"] for item in listed["items"]) == ["plax", "zorb"]
