"""The reading: the one message format on the queue, and its validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec

MAX_BODY_BYTES = 64 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)

ReadingId = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z0-9._:-]{1,64}\Z")]
UserId = Annotated[str, msgspec.Meta(pattern=r"\A[a-z0-9][a-z0-9_-]{0,31}\Z")]
Station = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Address = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
Celsius = Annotated[float, msgspec.Meta(ge=-90, le=70)]
Hectopascal = Annotated[float, msgspec.Meta(ge=300, le=1100)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]


class Reading(msgspec.Struct, frozen=True):
    id: ReadingId
    user: UserId
    station: Station
    address: Address
    ts: Timestamp
    temperature: Celsius
    pressure: Hectopascal
    humidity: Percent

    @property
    def ts_ms(self) -> int:
        """`ts` in Unix milliseconds, exact (no float rounding)."""
        return (self.ts - _EPOCH) // _MILLISECOND


class InvalidReading(ValueError):
    """Why a message is not a reading: the text goes into the dead-letter header, the kind into metrics."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


_decoder = msgspec.json.Decoder(Reading)
_encoder = msgspec.json.Encoder()


def parse(body: bytes) -> Reading:
    """Validate a message body; raises InvalidReading and nothing else."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidReading("too_large", f"body is {len(body)} bytes, over the {MAX_BODY_BYTES}-byte limit")
    if not body:
        raise InvalidReading("empty", "body is empty")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidReading("not_utf8", f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidReading("invalid_field", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidReading("not_json", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidReading("not_json", "not valid JSON: nested too deeply") from None


def encode(reading: Reading) -> bytes:
    return _encoder.encode(reading)
