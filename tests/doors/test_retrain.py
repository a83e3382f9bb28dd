"""`liteembed retrain --from-model OLD`: the classes stranded by a change of MODEL are queued
under the current model, keeping their ids, images and names, and the service learns them
again; a name already taken under the current model stays where it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli.main import main
from service import crud
from service.core.config import get_settings
from service.db import make_engine, make_session_factory, session_scope
from service.models import PersonalizedClass
from tests.helpers.images import COLOURS, image_bytes

OLD = "liteembed-tiny@random-7"
CURRENT = "liteembed-tiny@random-0"


def _add(session: Any, name: str, model_id: str, colour: str) -> str:
    images = [image_bytes(COLOURS[colour], seed=i) for i in range(4)]
    row = crud.register_class(
        session=session,
        name=name,
        name_key=name,
        model_id=model_id,
        tenant="acme",
        images=images,
        hints=[],
        confusers=[],
        replace=False,
    ).row
    crud.mark_imported_ready(
        session=session,
        row=row,
        text_feature=np.ones(32, np.float32) / np.sqrt(32),
        token_embedding=np.zeros(16, np.float32),
        templates=["a photo of a {}."],
        threshold=0.2,
    )
    return row.id


def test_retrain_moves_an_old_models_classes_and_they_are_learned_again(
    sqlite_url: str,
    cache_dir: Path,
    make_settings: Any,
    make_client: Any,
    wait_status: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = make_engine(sqlite_url)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        zorb = _add(session, "zorb", OLD, "green")
        clash = _add(session, "plax", OLD, "magenta")
        _add(session, "plax", CURRENT, "magenta")
    for name, value in {
        "DATABASE_URL": sqlite_url,
        "MODEL": "liteembed-tiny",
        "PRETRAINED": "random",
        "CACHE_DIR": str(cache_dir),
    }.items():
        monkeypatch.setenv(f"LITEEMBED_{name}", value)
    monkeypatch.chdir(cache_dir)  # no stray .env
    get_settings.cache_clear()
    try:
        assert main(["retrain", "--from-model", "liteembed-tiny@random-7"]) == 0
    finally:
        get_settings.cache_clear()
    printed = capsys.readouterr()
    assert f"1 classes of {OLD} queued under {CURRENT}" in printed.out
    assert f"{clash}  kept" in printed.err

    with sessions() as session:
        moved = session.get(PersonalizedClass, zorb)
        assert moved is not None and moved.model_id == CURRENT and moved.status == "queued"
        assert moved.embedding is None and len(moved.images) == 4
        assert session.get(PersonalizedClass, clash).model_id == OLD  # type: ignore[union-attr]
    engine.dispose()

    # The service (its reconciler sends queued rows at start) learns it again.
    client = make_client(make_settings(sqlite_url))
    state = wait_status(client, zorb, {"ready", "failed"}, timeout=120)
    assert state["status"] == "ready" and state["model"] == CURRENT
