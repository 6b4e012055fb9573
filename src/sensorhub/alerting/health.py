"""Station health from timestamps alone: online, late or offline, against the station's own rhythm.

Pure: no I/O and no clock. The callers (the evaluator, `/api/stations`) feed it readings and ask
about a moment. The usual interval is the median of the gaps between a station's recent readings,
by their own `ts` (the station's cadence; a batch that arrives at once does not look like 0 s).
How long a station has been silent is measured from when its last reading was *stored* (the log
id's milliseconds, Redis time) to the wall-clock now, so a station with a wrong clock is not
declared offline, nor kept online, by its clock.
"""

from __future__ import annotations

import statistics
from typing import Literal

import msgspec

State = Literal["online", "late", "offline"]
LATE_FACTOR = 3
OFFLINE_FACTOR = 10
KEEP_INTERVALS = 20  # gaps kept per station: enough for a steady median, small in Redis


class Track(msgspec.Struct, kw_only=True):
    """What is known of one station: its last reading and its recent gaps, in ms."""

    last_ts_ms: int = 0  # the last reading's own ts
    heard_ms: int = 0  # when the last reading was stored (Redis time)
    gaps: list[int] = msgspec.field(default_factory=list)

    def observe(self, ts_ms: int, heard_ms: int) -> None:
        """A new reading; an older one (out of order) only moves `heard_ms`."""
        if self.last_ts_ms and ts_ms > self.last_ts_ms:
            self.gaps.append(ts_ms - self.last_ts_ms)
            del self.gaps[:-KEEP_INTERVALS]
        self.last_ts_ms = max(self.last_ts_ms, ts_ms)
        self.heard_ms = max(self.heard_ms, heard_ms)

    @property
    def usual_ms(self) -> float | None:
        """The median gap; None until the station has reported twice."""
        return statistics.median(self.gaps) if self.gaps else None

    def offline_after_ms(self, offline_after: float) -> float | None:
        """Silence that makes the station offline: `offline_after` s if set (> 0), else 10x its usual interval."""
        if offline_after > 0:
            return offline_after * 1000
        usual = self.usual_ms
        return None if usual is None else usual * OFFLINE_FACTOR

    def silent_ms(self, now_ms: int) -> int:
        return max(0, now_ms - self.heard_ms)

    def state(self, now_ms: int, offline_after: float = 0) -> State:
        """online, late after 3x the usual interval, offline after `offline_after_ms`.

        A station that has reported once has no rhythm yet: it is online until `offline_after`
        (when set) has passed.
        """
        silent = self.silent_ms(now_ms)
        limit = self.offline_after_ms(offline_after)
        if limit is not None and silent > limit:
            return "offline"
        usual = self.usual_ms
        if usual is not None and silent > usual * LATE_FACTOR:
            return "late"
        return "online"


def summary(states: list[State]) -> dict[State, int]:
    """How many stations are in each state, every state present (0 if none)."""
    return {s: states.count(s) for s in ("online", "late", "offline")}
