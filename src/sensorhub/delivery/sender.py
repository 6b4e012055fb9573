"""One webhook request: signed per the Standard Webhooks spec, and what its answer means."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from sensorhub.delivery.endpoints import Endpoint, Message


@dataclass(frozen=True)
class Outcome:
    kind: str  # delivered | rejected | timeout | unreachable | gone
    error: str = ""
    retry_after: float | None = None


def headers(endpoint: Endpoint, message: Message, now: float) -> dict[str, str]:
    """Signed anew at each attempt (receivers reject old timestamps); id and body stay the same."""
    timestamp = int(now)
    signature = Webhook(endpoint.secret).sign(message.id, datetime.fromtimestamp(timestamp, UTC), message.body.decode())
    return {
        "content-type": "application/json",
        "user-agent": "sensorhub-push",
        "webhook-id": message.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


async def send(http: httpx.AsyncClient, endpoint: Endpoint, message: Message) -> Outcome:
    """POST the message; the response body is never read (a receiver cannot make us buffer it)."""
    request = http.build_request(
        "POST", endpoint.url, content=message.body, headers=headers(endpoint, message, time.time())
    )
    try:
        response = await http.send(request, stream=True)
        await response.aclose()
    except httpx.TimeoutException:
        return Outcome("timeout", "timed out")
    except httpx.HTTPError as exc:
        return Outcome("unreachable", f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__)
    status = response.status_code
    if 200 <= status < 300:
        return Outcome("delivered")
    if status == 410:
        return Outcome("gone", "HTTP 410 Gone")
    retry_after = _retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
    return Outcome("rejected", f"HTTP {status}", retry_after)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())
