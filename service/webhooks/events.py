"""An event's body: `{"type", "timestamp", "data"}`, `data` being the class as
`GET /v1/classes/{id}` answers it at the moment of the event."""

from __future__ import annotations

import json

from service.api.schemas import ClassOut
from service.models import PersonalizedClass, utcnow

CLASS_READY = "class.ready"
CLASS_FAILED = "class.failed"


def class_event_body(event: str, row: PersonalizedClass) -> str:
    data = ClassOut.of(row).model_dump(mode="json")
    return json.dumps(
        {"type": event, "timestamp": utcnow().isoformat(), "data": data},
        separators=(",", ":"),
    )
