"""The message schema: what is a reading, and what each kind of bad message is told."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorhub.reading import InvalidReading, parse
from tests.support.readings import body, reading

# As many examples as Hypothesis's default, but no clock: a cold first run (imports, a busy machine)
# is as green as a warm one. Neither check says anything about the parser.
fuzz = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_valid_reading_is_parsed_with_exact_millisecond_timestamp() -> None:
    """A valid body becomes a Reading whose ts_ms is exact, whatever the offset."""
    parsed = parse(body(ts="2026-11-27T10:00:00.123+03:00", temperature=-12))
    assert parsed.ts_ms == 1795762800123
    assert parsed.temperature == -12.0
    assert parsed.address == "ул. Ленина, 1, Москва"


def test_unknown_fields_are_ignored() -> None:
    """Extra fields do not make a reading invalid."""
    assert parse(body(firmware="1.2.3", extra={"nested": [1, 2]})).user == "user1"


def test_boundaries_are_inclusive() -> None:
    """The documented ranges include their ends."""
    parse(body(temperature=-90, pressure=300, humidity=0))
    parse(body(temperature=70, pressure=1100, humidity=100, id="a" * 64, station="s" * 64, address="a" * 200))


def _without(field: str) -> bytes:
    value = reading()
    del value[field]
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    ("raw", "kind", "says"),
    [
        (b"", "empty", "empty"),
        (b"\xff\xfe{}", "not_utf8", "not UTF-8"),
        (b"{not json", "not_json", "not valid JSON"),
        (b'{"temperature": NaN}', "not_json", "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "invalid_field", "Expected `object`"),
        (b'{"a":' * 10000 + b"1" + b"}" * 10000, "not_json", "JSON"),
        (b"x" * (64 * 1024 + 1), "too_large", "over the 65536-byte limit"),
        (_without("station"), "invalid_field", "missing required field `station`"),
        (body(temperature="21.5"), "invalid_field", "$.temperature"),
        (body(temperature=True), "invalid_field", "$.temperature"),
        (body(temperature=70.01), "invalid_field", "<= 70"),
        (body(pressure=299.9), "invalid_field", ">= 300"),
        (body(humidity=100.5), "invalid_field", "$.humidity"),
        (body(temperature=float("inf")), "not_json", "not valid JSON"),
        (body(temperature=999).replace(b"999", b"1e400"), "invalid_field", "Number out of range"),
        (body(user="User1"), "invalid_field", "$.user"),
        (body(user="user1\n"), "invalid_field", "$.user"),
        (body(user="u" * 33), "invalid_field", "$.user"),
        (body(user="user1}:x"), "invalid_field", "$.user"),
        (body(id=""), "invalid_field", "$.id"),
        (body(id="a b"), "invalid_field", "$.id"),
        (body(id="a" * 65), "invalid_field", "$.id"),
        (body(station=""), "invalid_field", "$.station"),
        (body(address="a" * 201), "invalid_field", "$.address"),
        (body(ts="2026-11-27T10:00:00"), "invalid_field", "timezone"),
        (body(ts="yesterday"), "invalid_field", "$.ts"),
        (b"42", "invalid_field", "Expected `object`"),
    ],
)
def test_invalid_messages_say_what_is_wrong(raw: bytes, kind: str, says: str) -> None:
    """Each kind of bad message raises InvalidReading with a reason a person can act on."""
    with pytest.raises(InvalidReading) as caught:
        parse(raw)
    assert caught.value.kind == kind
    assert says in str(caught.value)


@fuzz
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_give_a_validation_error(raw: bytes) -> None:
    """Fuzz: nothing but InvalidReading escapes the parser."""
    with contextlib.suppress(InvalidReading):
        parse(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@fuzz
@given(st.fixed_dictionaries({}, optional={k: json_values for k in reading()}))
def test_arbitrary_json_objects_only_ever_give_a_validation_error(value: dict[str, object]) -> None:
    """Fuzz with the reading's own field names and any JSON values: parse or InvalidReading."""
    try:
        parsed = parse(json.dumps(value).encode())
    except InvalidReading:
        return
    assert -90 <= parsed.temperature <= 70
