"""API keys are real keys: a placeholder or a short key is refused, with how to make one; an
open service binds a non-loopback address only when asked to."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import ValidationError

from cli.main import serve_host, settings_error
from service.core.config import Settings

GOOD = "Zk3-9xQ_pLm2vB7nR4tYw8sE"  # what secrets.token_urlsafe gives, shortened


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ("change-me-admin", "placeholder"),
        ("change-me-client-0123456789", "placeholder"),
        ("CHANGEME0123456789abcdef", "placeholder"),
        ("your-admin-key-goes-here", "placeholder"),
        ("an-example-key-0123456789", "placeholder"),
        ("admin-key-1", "shorter than 16 characters"),
        (f"{GOOD},tiny-k3y-9", "key 2 is shorter than 16 characters"),
        ("x" * 32, "repeats too few characters"),
    ],
)
@pytest.mark.parametrize("field", ["admin_keys", "client_keys"])
def test_a_placeholder_or_short_key_is_refused(field: str, keys: str, problem: str) -> None:
    with pytest.raises(ValidationError) as raised:
        settings(**{field: keys})
    message = settings_error(raised.value)
    assert f"LITEEMBED_{field.upper()}" in message and problem in message, message
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in message
    # The rejected key is not repeated (it may be a real, if short, key).
    for key in keys.split(","):
        assert key not in message and key not in str(raised.value)


def test_real_keys_are_accepted() -> None:
    made = settings(admin_keys=f"{GOOD}, {GOOD[::-1]}", client_keys=GOOD + "x")
    assert made.admin_keys == [GOOD, GOOD[::-1]] and made.auth_enabled


def test_keys_from_the_environment_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITEEMBED_ADMIN_KEYS", "change-me-admin")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_host_with_keys_defaults_to_every_interface() -> None:
    keyed = settings(admin_keys=GOOD)
    assert serve_host(keyed, None) == "0.0.0.0"
    assert serve_host(keyed, "127.0.0.1") == "127.0.0.1"


def test_open_service_binds_loopback_and_refuses_a_public_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    open_service = settings()
    with caplog.at_level(logging.WARNING, logger="liteembed"):
        assert serve_host(open_service, None) == "127.0.0.1"
        assert serve_host(open_service, "localhost") == "localhost"
    assert "NO API KEYS CONFIGURED" in caplog.text
    for host in ("0.0.0.0", "10.1.2.3"):
        with pytest.raises(SystemExit) as refused:
            serve_host(open_service, host)
        message = str(refused.value.code)
        assert "no API keys configured" in message and "LITEEMBED_ALLOW_OPEN=true" in message
        assert "secrets.token_urlsafe(32)" in message


def test_allow_open_serves_a_public_host_open(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="liteembed"):
        assert serve_host(settings(allow_open=True), "0.0.0.0") == "0.0.0.0"
    assert "OPEN" in caplog.text and "0.0.0.0" in caplog.text
