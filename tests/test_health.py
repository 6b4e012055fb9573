"""Station health from timestamps alone (no services): online, late after 3x, offline after 10x or --offline-after."""

from __future__ import annotations

from sensorhub.alerting.health import KEEP_INTERVALS, Track, summary


def _track(every_ms: int, n: int, start_ms: int = 1_000_000) -> Track:
    track = Track()
    for i in range(n):
        at = start_ms + i * every_ms
        track.observe(at, at)
    return track


def test_usual_interval_is_the_median_gap_of_the_stations_own_timestamps() -> None:
    track = Track()
    for ts in (0, 1000, 2000, 9000, 10000):  # one long gap does not move the median
        track.observe(1_000_000 + ts, 5_000_000)
    assert track.usual_ms == 1000
    assert Track().usual_ms is None


def test_online_then_late_after_three_times_then_offline_after_ten_times() -> None:
    track = _track(2000, 10)  # every 2 s; last heard at 1,018,000
    last = track.heard_ms
    assert track.state(last + 6000) == "online"
    assert track.state(last + 6001) == "late"
    assert track.state(last + 20000) == "late"
    assert track.state(last + 20001) == "offline"


def test_offline_after_seconds_replaces_ten_times_when_configured() -> None:
    track = _track(2000, 10)
    last = track.heard_ms
    assert track.state(last + 5001, offline_after=5) == "offline"
    assert track.state(last + 4000, offline_after=5) == "online"
    assert track.state(last + 7000, offline_after=60) == "late"  # late still follows the rhythm
    assert track.state(last + 30000, offline_after=60) == "late"


def test_silence_is_wall_time_since_the_reading_was_stored_not_the_stations_clock() -> None:
    track = Track()
    for i in range(5):  # a station whose clock is an hour behind, reporting every second
        track.observe(i * 1000, 3_600_000 + i * 1000)
    assert track.state(3_604_000 + 1000) == "online"
    assert track.state(3_604_000 + 10_001) == "offline"


def test_one_reading_has_no_rhythm_yet_so_only_offline_after_can_make_it_offline() -> None:
    track = Track()
    track.observe(1000, 1000)
    assert track.state(10**9) == "online"
    assert track.state(1000 + 30_001, offline_after=30) == "offline"


def test_old_and_repeated_readings_do_not_shrink_the_interval_and_gaps_are_bounded() -> None:
    track = _track(1000, 5)
    track.observe(1_001_000, track.heard_ms)  # out of order
    track.observe(track.last_ts_ms, track.heard_ms)  # same ts again
    assert track.gaps == [1000] * 4
    long = _track(1000, 100)
    assert len(long.gaps) == KEEP_INTERVALS


def test_summary_counts_every_state() -> None:
    assert summary(["online", "offline", "online"]) == {"online": 2, "late": 0, "offline": 1}
