"""Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
`{id}.{timestamp}.{body}` with the secret's key, base64, as `v1,<signature>`."""

from __future__ import annotations

import base64
import hashlib
import hmac

from service.core.config import webhook_secret_bytes


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers a receiver verifies the delivery with."""
    key = webhook_secret_bytes(secret)
    if key is None:  # Settings refuses such a secret at start
        raise ValueError("the webhook secret is not of the whsec_<base64> form")
    signed = f"{message_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
        "content-type": "application/json",
    }
