"""Webhooks: `class.ready` and `class.failed` delivered to a class's `callback_url`, signed per
the Standard Webhooks spec, from the database outbox (`webhook_deliveries`).

- `urls.py`: which callback URLs are accepted (only hosts in WEBHOOK_ALLOWED_HOSTS);
- `events.py`: an event's body, written to the outbox with the status change;
- `signing.py`: the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers;
- `dispatcher.py`: the thread in every API process that sends due deliveries and retries them.
"""
