"""A user's own app receiving sensorhub webhooks: verify, drop duplicates, show the readings.

    .venv/bin/sensorhub webhook add --user user1 --url http://127.0.0.1:9000/webhook   # prints the secret
    WEBHOOK_SECRET=whsec_... .venv/bin/python examples/webhook_receiver.py --port 9000
    open http://127.0.0.1:9000/

sensorhub retries a message until it gets a 2xx, with the same `webhook-id`: a receiver that
remembers the ids it has taken sees every reading once. This one keeps them in memory; a real app
would record the id in the same transaction that stores the readings.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from collections import OrderedDict, deque
from typing import Any

import uvicorn
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

KEEP_READINGS = 500
KEEP_IDS = 10_000
COLUMNS = ("log_id", "station", "ts", "temperature", "pressure", "humidity", "address")


class Inbox:
    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.seen: OrderedDict[str, None] = OrderedDict()  # webhook-ids taken, oldest first
        self.readings: deque[dict[str, Any]] = deque(maxlen=KEEP_READINGS)

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        try:
            payload = self.webhook.verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            return JSONResponse({"error": f"bad signature: {exc}"}, status_code=400)
        message_id = request.headers["webhook-id"]
        if message_id in self.seen:
            return JSONResponse({"duplicate": message_id})  # 2xx, so sensorhub stops retrying it
        self.seen[message_id] = None
        if len(self.seen) > KEEP_IDS:
            self.seen.popitem(last=False)
        self.readings.extend(payload.get("readings", []))
        return JSONResponse({"received": len(payload.get("readings", []))})

    async def page(self, request: Request) -> Response:
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in COLUMNS) + "</tr>"
            for r in reversed(self.readings)
        )
        head = "".join(f"<th>{c}</th>" for c in COLUMNS)
        return HTMLResponse(
            "<!doctype html><meta charset=utf-8><title>Readings received</title>"
            f"<h1>{len(self.readings)} readings received</h1>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        )


def create_app(secret: str) -> Starlette:
    inbox = Inbox(secret)
    return Starlette(routes=[Route("/webhook", inbox.receive, methods=["POST"]), Route("/", inbox.page)])


def main() -> int:
    parser = argparse.ArgumentParser(description="Receive sensorhub webhooks (secret in $WEBHOOK_SECRET)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    try:
        app = create_app(os.environ.get("WEBHOOK_SECRET", ""))
    except Exception:  # empty, or not base64
        print("webhook_receiver: set WEBHOOK_SECRET to the secret `sensorhub webhook add` printed", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
