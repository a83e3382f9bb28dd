"""Where the test servers are, and what a test does when one is not configured.

PostgreSQL and Redis come from LITEEMBED_TEST_POSTGRES_URL / LITEEMBED_TEST_REDIS_URL. Unset,
their tests are skipped with the reason; with LITEEMBED_TEST_REQUIRE_SERVICES=1 (CI) they fail
instead.
"""

from __future__ import annotations

import os

import pytest

POSTGRES_ENV = "LITEEMBED_TEST_POSTGRES_URL"
REDIS_ENV = "LITEEMBED_TEST_REDIS_URL"
REQUIRE_ENV = "LITEEMBED_TEST_REQUIRE_SERVICES"

EXAMPLE_URLS = {
    POSTGRES_ENV: "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    REDIS_ENV: "redis://127.0.0.1:6379/0",
}


def server_url(env: str, what: str) -> str:
    """The URL in `env`; without one, skip the test (or fail it, where CI requires servers)."""
    url = os.environ.get(env)
    if url:
        return url
    reason = f"{what} tests need {env} (e.g. {EXAMPLE_URLS[env]})"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 forbids skipping")
    pytest.skip(reason)
