"""Fixtures for the service, worker and end-to-end tests, one module per resource.

Each test session gets its own PostgreSQL database and Redis key namespace and removes them at
the end (tests/fixtures/databases.py, redis.py); helpers the tests import live in tests/helpers/.
"""

pytest_plugins = [
    "tests.fixtures.settings",
    "tests.fixtures.databases",
    "tests.fixtures.redis",
    "tests.fixtures.apps",
]
