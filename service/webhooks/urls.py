"""Which callback URLs a registration may give. Only hosts the operator listed: the service
must never become a way to send requests to addresses its callers choose (internal services,
cloud metadata endpoints)."""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_URL_CHARS = 2000


def callback_url_problem(url: str, allowed_hosts: list[str]) -> str | None:
    """Why `url` may not be a callback URL (None: it may)."""
    if not allowed_hosts:
        return (
            "callback_url is not accepted: this service delivers webhooks only to the hosts in "
            "LITEEMBED_WEBHOOK_ALLOWED_HOSTS, and none is set"
        )
    if len(url) > MAX_URL_CHARS:
        return f"callback_url is longer than {MAX_URL_CHARS} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "callback_url is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "callback_url must be an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "callback_url must not carry credentials"
    if not host_allowed(parts.hostname, port, allowed_hosts):
        return (
            f"callback_url's host {parts.hostname!r} is not in LITEEMBED_WEBHOOK_ALLOWED_HOSTS "
            f"({', '.join(allowed_hosts)})"
        )
    return None


def host_allowed(hostname: str, port: int | None, allowed_hosts: list[str]) -> bool:
    """An entry "host" allows any port of it; "host:port" that port only."""
    host = hostname.lower().rstrip(".")
    return host in allowed_hosts or (port is not None and f"{host}:{port}" in allowed_hosts)
