"""A real `liteembed serve` process for the client, CLI and admin-page tests: one for the session
(starting the model costs seconds); each test uses its own class names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.live_server import LiveServer, running_server


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[LiveServer]:
    with running_server(tmp_path_factory.mktemp("live-server"), cache_dir) as server:
        yield server
