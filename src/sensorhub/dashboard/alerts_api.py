"""The user's station health, alert rules and alert log over HTTP: `/api/stations`, `/api/rules`,
`/api/alerts`, `/api/alerts/ack`.

Endpoints read only `request.state` (`user`, `redis`, `settings`), so they serve one user's
dashboard or a user under a shared service alike.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sensorhub.alerting import engine, health, rules
from sensorhub.alerting.alertlog import DEFAULT_LIMIT, MAX_LIMIT, AlertLog
from sensorhub.alerting.health import Track
from sensorhub.dashboard.security import same_origin
from sensorhub.dashboard.userlog import UserLog, parse_log_id
from sensorhub.keys import Keys
from sensorhub.settings import Settings

STATION_WINDOW = 2000  # newest readings the station list is computed from (plus `sensorhub alerts`' tracks)
NO_STORE = {"Cache-Control": "no-store"}


def _keys(request: Request) -> Keys:
    settings: Settings = request.state.settings
    return Keys(settings.namespace)


def _json(body: object, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=NO_STORE)


def _same_origin_write(request: Request) -> None:
    """A change must come from this dashboard's own page (or a non-browser client)."""
    if not same_origin(request):
        raise HTTPException(403, f"cross-origin request from {request.headers['origin']!r} refused")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def stations(request: Request) -> Response:
    """Each station's state, last reading and usual interval, computed now on the server."""
    settings: Settings = request.state.settings
    user: str = request.state.user
    keys = _keys(request)
    tracks: dict[str, Track] = {}
    raw_state = await request.state.redis.get(keys.alert_state(user))
    evaluated = engine.decode_state(raw_state) if raw_state is not None else None
    if evaluated is not None:
        tracks.update(evaluated.tracks)
    recent: dict[str, Track] = {}
    page = await UserLog(request.state.redis, keys, user).newest(STATION_WINDOW)
    for (heard_ms, _), reading in page.entries:
        recent.setdefault(reading.station, Track()).observe(reading.ts_ms, heard_ms)
    for station, track in recent.items():
        known = tracks.get(station)
        if known is None or track.heard_ms > known.heard_ms or len(track.gaps) > len(known.gaps):
            tracks[station] = track
    now_ms = int(time.time() * 1000)
    listed: list[dict[str, Any]] = []
    for station, track in sorted(tracks.items()):
        usual = track.usual_ms
        listed.append(
            {
                "station": station,
                "state": track.state(now_ms, settings.offline_after),
                "last_reading": _iso(track.last_ts_ms),
                "last_heard": _iso(track.heard_ms),
                "silent_seconds": round(track.silent_ms(now_ms) / 1000, 1),
                "usual_interval_seconds": None if usual is None else round(usual / 1000, 3),
            }
        )
    summary = health.summary([s["state"] for s in listed])
    return _json({"stations": listed, "summary": summary, "offline_after_seconds": settings.offline_after or None})


async def rules_api(request: Request) -> Response:
    store = rules.Rules(request.state.redis, _keys(request), request.state.user)
    if request.method == "GET":
        return _json({"rules": [rules.to_builtins(r) for r in await store.all()]})
    _same_origin_write(request)
    if request.method == "DELETE":
        rule_id = request.query_params.get("id", "")
        if not rule_id:
            raise HTTPException(400, "DELETE /api/rules needs ?id=<rule id>")
        if not await store.delete(rule_id):
            raise HTTPException(404, f"no rule {rule_id!r}")
        return _json({"deleted": rule_id})
    try:
        rule = rules.parse(await request.body())
    except rules.BadRule as exc:
        raise HTTPException(400, str(exc)) from None
    if not await store.put(rule):
        raise HTTPException(400, f"at most {rules.MAX_RULES} rules per user")
    return _json(rules.to_builtins(rule), 201)


async def alerts(request: Request) -> Response:
    """The alert log after `after` (or the newest `limit`), and what fires now."""
    raw_limit = request.query_params.get("limit")
    if raw_limit is not None and (not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT):
        raise HTTPException(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw_limit!r}")
    limit = int(raw_limit) if raw_limit is not None else DEFAULT_LIMIT
    after = _alert_id(request.query_params.get("after"), "after")
    log = AlertLog(request.state.redis, _keys(request), request.state.user)
    page = await log.after(after, limit)
    return _json({"alerts": page.alerts, "last_id": page.last_id, "firing": await log.firing()})


async def acknowledge(request: Request) -> Response:
    _same_origin_write(request)
    try:
        body = await request.json()
    except ValueError:
        body = None
    alert_id = _alert_id(body.get("id") if isinstance(body, dict) else None, "id")
    if alert_id is None:
        raise HTTPException(400, 'the body must be {"id": "<alert id>"}')
    settings: Settings = request.state.settings
    log = AlertLog(request.state.redis, _keys(request), request.state.user)
    if not await log.acknowledge(alert_id, settings.ttl_seconds):
        raise HTTPException(404, f"no alert {alert_id!r}")
    return _json({"acknowledged": alert_id})


def _alert_id(raw: object, name: str) -> str | None:
    if raw is None or raw == "":
        return None
    try:
        if not isinstance(raw, str):
            raise ValueError
        ms, seq = parse_log_id(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be an alert id like 1795823506595-0, got {raw!r}") from None
    return f"{ms}-{seq}"
