"""The rule step, without services: for_seconds on reading time, hysteresis, offline, rule changes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sensorhub.alerting import engine, rules
from sensorhub.alerting.engine import UserState
from sensorhub.alerting.rules import BadRule, Rule
from sensorhub.reading import Reading

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
ABOVE = Rule(id="hot", station="*", kind="above", quantity="temperature", value=30, clear=28, for_seconds=10)


def _reading(second: float, temperature: float, station: str = "post-01") -> tuple[int, Reading]:
    ts = T0 + timedelta(seconds=second)
    reading = Reading(
        id=f"{station}-{second}", user="user1", station=station, address="a", ts=ts,
        temperature=temperature, pressure=1000, humidity=50,
    )  # fmt: skip
    return int(ts.timestamp() * 1000), reading


def _run(state: UserState, temps: list[tuple[float, float]], rule_list: list[Rule] | None = None) -> list[str]:
    """Feed (second, temperature) readings one at a time; the alerts as 'state@second value'."""
    out = []
    for second, temp in temps:
        heard, reading = _reading(second, temp)
        for alert in engine.advance(state, rule_list or [ABOVE], [(heard, reading)], heard):
            out.append(f"{alert.state}@{(alert.ts - T0).total_seconds():g} {alert.value:g}")
    return out


def test_fires_once_after_staying_past_value_for_for_seconds_of_reading_time() -> None:
    state = UserState(cursor="0-0")
    assert _run(state, [(s, 31) for s in range(0, 10)]) == []
    assert _run(state, [(10, 31)]) == ["firing@10 31"]
    assert _run(state, [(s, 31) for s in range(11, 20)]) == []


def test_a_dip_below_value_before_for_seconds_starts_the_hold_again() -> None:
    state = UserState(cursor="0-0")
    assert _run(state, [(0, 31), (5, 29), (6, 31), (15, 31)]) == []
    assert _run(state, [(16, 31)]) == ["firing@16 31"]


def test_hysteresis_hovering_between_clear_and_value_neither_resolves_nor_fires_again() -> None:
    state = UserState(cursor="0-0")
    assert _run(state, [(0, 31), (10, 31)]) == ["firing@10 31"]
    assert _run(state, [(11, 29), (12, 31), (13, 29.5), (14, 31), (15, 28)]) == []
    assert _run(state, [(16, 27)]) == ["resolved@16 27"]
    assert _run(state, [(17, 31), (26, 31)]) == []
    assert _run(state, [(27, 31)]) == ["firing@27 31"]


def test_below_rule_mirrors_above() -> None:
    rule = Rule(id="cold", station="post-01", kind="below", quantity="temperature", value=0, clear=2, for_seconds=0)
    state = UserState(cursor="0-0")
    assert _run(state, [(0, 1), (1, -1), (2, 1.5), (3, 2.5)], [rule]) == ["firing@1 -1", "resolved@3 2.5"]


def test_a_rule_for_another_station_ignores_this_one() -> None:
    rule = Rule(id="x", station="post-02", kind="above", quantity="temperature", value=0, clear=0)
    state = UserState(cursor="0-0")
    assert _run(state, [(0, 50), (1, 50)], [rule]) == []


def test_offline_fires_once_on_silence_and_resolves_when_the_station_reports_again() -> None:
    rule = Rule(id="gone", station="*", kind="offline")
    state = UserState(cursor="0-0")
    readings = [_reading(s, 20) for s in range(5)]  # every second
    assert engine.advance(state, [rule], readings, readings[-1][0]) == []
    last = readings[-1][0]
    assert engine.advance(state, [rule], [], last + 10_000) == []
    fired = engine.advance(state, [rule], [], last + 10_001)
    assert [(a.state, a.station, a.quantity, a.value) for a in fired] == [("firing", "post-01", None, 10.0)]
    assert engine.advance(state, [rule], [], last + 60_000) == []
    back = _reading(70, 20)
    resolved = engine.advance(state, [rule], [back], back[0])
    assert [(a.state, a.ts) for a in resolved] == [("resolved", back[1].ts)]


def test_a_changed_or_deleted_rule_starts_over() -> None:
    state = UserState(cursor="0-0")
    assert _run(state, [(0, 31), (10, 31)]) == ["firing@10 31"]
    changed = Rule(id="hot", station="*", kind="above", quantity="temperature", value=35, clear=33, for_seconds=0)
    assert _run(state, [(11, 36)], [changed]) == ["firing@11 36"]
    engine.advance(state, [], [], T0_MS)
    assert state.rules == {}


def test_state_and_alerts_round_trip_as_json() -> None:
    state = UserState(cursor="5-0")
    assert _run(state, [(0, 31), (10, 31)]) == ["firing@10 31"]
    assert engine.decode_state(engine.encode(state)) == state
    now = Rule(id="hot", station="*", kind="above", quantity="temperature", value=30, clear=28)
    (fired,) = engine.advance(UserState(cursor="0-0"), [now], [_reading(0, 31)], T0_MS)
    event = json.loads(engine.encode(fired))
    assert event == {
        "type": "alert", "state": "firing", "rule": rules.to_builtins(now), "station": "post-01",
        "quantity": "temperature", "value": 31.0, "ts": "2026-11-28T12:00:00Z",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[]", "Expected `object`"),
        (b"{", "must be a JSON object"),
        (b'{"station": "*", "kind": "hot"}', "Invalid enum value 'hot' - at `$.kind`"),
        (b'{"station": "*", "kind": "above", "value": 1}', "needs `quantity`"),
        (b'{"station": "*", "kind": "above", "quantity": "temperature"}', "needs a numeric `value`"),
        (b'{"station": "*", "kind": "above", "quantity": "wind", "value": 1}', "quantity"),
        (b'{"station": "*", "kind": "above", "quantity": "humidity", "value": 1, "clear": 2}', "must not be above"),
        (b'{"station": "*", "kind": "below", "quantity": "humidity", "value": 2, "clear": 1}', "must not be below"),
        (b'{"station": "*", "kind": "offline", "extra": 1}', "unknown field `extra`"),
        (b'{"station": "", "kind": "offline"}', "length >= 1"),
        (b'{"station": "*", "kind": "above", "quantity": "pressure", "value": 1, "for_seconds": -1}', ">= 0"),
    ],
)
def test_bad_rules_are_refused_with_a_reason(body: bytes, says: str) -> None:
    with pytest.raises(BadRule, match=None) as refused:
        rules.parse(body)
    assert says in str(refused.value)


def test_a_rule_gets_an_id_and_clear_defaults_to_value() -> None:
    rule = rules.parse(b'{"station": "post-01", "kind": "above", "quantity": "temperature", "value": 30}')
    assert rule.id.startswith("r_")
    assert rule.clear == 30
    offline = rules.parse(b'{"id": "o1", "station": "*", "kind": "offline", "value": 3}')
    assert (offline.id, offline.value, offline.quantity) == ("o1", None, None)
