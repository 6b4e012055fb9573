"""Building test readings."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any


def reading(**overrides: Any) -> dict[str, Any]:
    """A valid reading of user1 as a dict, with a fresh id and the time now; overrides replace or add fields."""
    value: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "user": "user1",
        "station": "post-01",
        "address": "ул. Ленина, 1, Москва",
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "temperature": 21.5,
        "pressure": 1013.2,
        "humidity": 45.0,
    }
    value.update(overrides)
    return value


def body(**overrides: Any) -> bytes:
    """The reading as the message body a station sends."""
    return json.dumps(reading(**overrides), ensure_ascii=False).encode()
