"""Rule evaluation as a pure step: (state, rules, new readings, now) -> (new state, alerts).

No I/O, no clock: `sensorhub alerts` loads the state from Redis, calls `advance`, and writes the
new state, the alerts and the cursor back in one script. The same readings from the same state give
the same alerts, so a step that was never committed (a crash) is simply done again.

`for_seconds` is measured on the readings' own `ts`: a value fires once readings have stayed past
`value` from one reading's ts to a later one's for that long (so a replay after downtime, or a test
that publishes quickly, gives the alert a user would expect). `offline` is wall time (see health).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec

from sensorhub.alerting.health import Track
from sensorhub.alerting.rules import Rule
from sensorhub.reading import Reading


class Condition(msgspec.Struct, kw_only=True):
    """One rule at one station."""

    firing: bool = False
    since_ms: int | None = None  # ts of the first reading of the current run past `value`


class RuleState(msgspec.Struct, kw_only=True):
    rule: Rule  # as evaluated: a rule changed through the API starts over
    stations: dict[str, Condition] = msgspec.field(default_factory=dict)


class UserState(msgspec.Struct, kw_only=True):
    cursor: str  # the last log id evaluated
    seeded: bool = False  # the stations' rhythm was learnt from the log before the cursor
    tracks: dict[str, Track] = msgspec.field(default_factory=dict)
    rules: dict[str, RuleState] = msgspec.field(default_factory=dict)


class Alert(msgspec.Struct, kw_only=True, omit_defaults=False):
    """An alert event, as logged and sent: the contract's `{"type": "alert", ...}`."""

    type: Literal["alert"] = "alert"
    state: Literal["firing", "resolved"]
    rule: Rule
    station: str
    quantity: str | None
    value: float | None
    ts: datetime


_encode = msgspec.json.Encoder().encode
_decode_state = msgspec.json.Decoder(UserState).decode


def encode(item: UserState | Alert) -> bytes:
    return _encode(item)


def decode_state(raw: bytes | str) -> UserState | None:
    try:
        return _decode_state(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def advance(
    state: UserState,
    rules: list[Rule],
    readings: Sequence[tuple[int, Reading]],
    now_ms: int,
    *,
    offline_after: float = 0,
    forget_after_ms: int | None = None,
) -> list[Alert]:
    """Apply new readings (each with the ms it was stored at), in log order, then look at silence at
    `now_ms`; change `state` in place and return the alerts, in order."""
    _sync_rules(state, rules)
    alerts: list[Alert] = []
    for heard_ms, reading in readings:
        state.tracks.setdefault(reading.station, Track()).observe(reading.ts_ms, heard_ms)
        for rule_state in state.rules.values():
            if rule_state.rule.applies_to(reading.station):
                alerts += _on_reading(rule_state, reading)
    for station, track in sorted(state.tracks.items()):
        if track.state(now_ms, offline_after) != "offline":
            continue
        for rule_state in state.rules.values():
            rule = rule_state.rule
            if rule.kind != "offline" or not rule.applies_to(station):
                continue
            condition = rule_state.stations.setdefault(station, Condition())
            if not condition.firing:
                condition.firing = True
                silent = round(track.silent_ms(now_ms) / 1000, 1)
                alert = Alert(state="firing", rule=rule, station=station, quantity=None, value=silent, ts=_at(now_ms))
                alerts.append(alert)
    if forget_after_ms is not None:
        _forget_silent(state, now_ms, forget_after_ms)
    return alerts


def _on_reading(rule_state: RuleState, reading: Reading) -> list[Alert]:
    rule = rule_state.rule
    condition = rule_state.stations.setdefault(reading.station, Condition())
    if rule.kind == "offline":
        if not condition.firing:
            return []
        condition.firing = False  # it reported again
        return [Alert(state="resolved", rule=rule, station=reading.station, quantity=None, value=None, ts=reading.ts)]
    assert rule.quantity is not None
    value: float = getattr(reading, rule.quantity)
    if condition.firing:
        if not rule.past_clear(value):
            return []
        condition.firing, condition.since_ms = False, None
        state: Literal["firing", "resolved"] = "resolved"
    elif rule.past_value(value):
        if condition.since_ms is None:
            condition.since_ms = reading.ts_ms
        if reading.ts_ms - condition.since_ms < rule.for_seconds * 1000:
            return []
        condition.firing = True
        state = "firing"
    else:
        condition.since_ms = None
        return []
    return [Alert(state=state, rule=rule, station=reading.station, quantity=rule.quantity, value=value, ts=reading.ts)]


def _sync_rules(state: UserState, rules: list[Rule]) -> None:
    """Rules deleted or changed through the API lose their state; new ones start clean."""
    wanted = {rule.id: rule for rule in rules}
    for rule_id in list(state.rules):
        if wanted.get(rule_id) != state.rules[rule_id].rule:
            del state.rules[rule_id]
    for rule_id, rule in wanted.items():
        state.rules.setdefault(rule_id, RuleState(rule=rule))


def _forget_silent(state: UserState, now_ms: int, after_ms: int) -> None:
    """Stations silent for longer than the readings live are forgotten, with their conditions."""
    for station in [s for s, t in state.tracks.items() if now_ms - t.heard_ms > after_ms]:
        del state.tracks[station]
        for rule_state in state.rules.values():
            rule_state.stations.pop(station, None)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def firing(state: UserState) -> list[tuple[Rule, str]]:
    """(rule, station) pairs firing now."""
    return [(rs.rule, station) for rs in state.rules.values() for station, c in sorted(rs.stations.items()) if c.firing]
