"""Scheduled minimums on fixed instants, with a table of daylight-saving cases (after fission's table tests)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings, strategies as st

from autoscaler.schedules import is_open, minimum_at, next_opening, open_until
from nest.contracts.manifest import ManifestError, parse_manifest
from nest.contracts.model import ScalingSchedule

HOUR = 3600.0
WORKDAY = ScalingSchedule("0 9 * * MON-FRI", "Europe/Paris", 8 * HOUR, 4)
NIGHTLY_PARIS = ScalingSchedule("30 2 * * *", "Europe/Paris", HOUR, 2)
NIGHTLY_NEW_YORK = ScalingSchedule("30 2 * * *", "America/New_York", HOUR, 3)
HOURLY_PARIS = ScalingSchedule("0 * * * *", "Europe/Paris", HOUR, 1)


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


SHIFTS = [utc(2026, 3, 29, 1, 0), utc(2026, 10, 25, 1, 0), utc(2026, 3, 8, 7, 0), utc(2026, 11, 1, 6, 0)]
"""DST transitions of 2026 in Paris and New York (UTC instants), to sample near."""


def near(instant: float) -> st.SearchStrategy[float]:
    return st.floats(instant - 4 * 3600, instant + 4 * 3600)


# 2026: Europe/Paris springs forward on Sunday 29 March at 02:00 CET (01:00 UTC) and falls back on Sunday
# 25 October at 03:00 CEST (01:00 UTC). America/New_York springs forward on 8 March at 02:00 EST (07:00 UTC)
# and falls back on 1 November at 02:00 EDT (06:00 UTC).
CASES = [
    # schedule, instant (UTC), expected minimum, why
    (WORKDAY, utc(2026, 3, 27, 7, 59), 0, "Friday before DST: 08:59 CET, not yet"),
    (WORKDAY, utc(2026, 3, 27, 8, 0), 4, "Friday 09:00 CET = 08:00 UTC opens"),
    (WORKDAY, utc(2026, 3, 27, 15, 59), 4, "Friday 16:59 CET, still open"),
    (WORKDAY, utc(2026, 3, 27, 16, 0), 0, "Friday 17:00 CET, eight hours later, closed"),
    (WORKDAY, utc(2026, 3, 28, 10, 0), 0, "Saturday: no window"),
    (WORKDAY, utc(2026, 3, 30, 6, 59), 0, "Monday after DST: 08:59 CEST"),
    (WORKDAY, utc(2026, 3, 30, 7, 0), 4, "Monday 09:00 CEST = 07:00 UTC opens (an hour earlier in UTC)"),
    (WORKDAY, utc(2026, 3, 30, 14, 59), 4, "Monday 16:59 CEST"),
    (WORKDAY, utc(2026, 3, 30, 15, 0), 0, "Monday 17:00 CEST closed"),
    (WORKDAY, utc(2026, 10, 26, 7, 59), 0, "Monday after fall-back: 08:59 CET"),
    (WORKDAY, utc(2026, 10, 26, 8, 0), 4, "Monday 09:00 CET = 08:00 UTC"),
    (NIGHTLY_PARIS, utc(2026, 3, 28, 1, 30), 2, "Saturday 02:30 CET fires normally"),
    (NIGHTLY_PARIS, utc(2026, 3, 29, 0, 59), 0, "spring forward: 01:59 CET, the gap is not there yet"),
    (NIGHTLY_PARIS, utc(2026, 3, 29, 1, 0), 2, "02:30 does not exist: fires at the transition, 03:00 CEST"),
    (NIGHTLY_PARIS, utc(2026, 3, 29, 1, 59), 2, "the window still lasts one real hour"),
    (NIGHTLY_PARIS, utc(2026, 3, 29, 2, 0), 0, "closed an hour after the transition"),
    (NIGHTLY_PARIS, utc(2026, 3, 30, 0, 30), 2, "the next night fires at 02:30 CEST again"),
    (NIGHTLY_PARIS, utc(2026, 10, 25, 0, 29), 0, "fall back: 02:29 CEST, first pass"),
    (NIGHTLY_PARIS, utc(2026, 10, 25, 0, 30), 2, "02:30 CEST, first occurrence, fires"),
    (NIGHTLY_PARIS, utc(2026, 10, 25, 1, 30), 2, "02:30 CET, second occurrence, fires again"),
    (NIGHTLY_PARIS, utc(2026, 10, 25, 2, 29), 2, "the window runs an hour from the second firing"),
    (NIGHTLY_PARIS, utc(2026, 10, 25, 2, 30), 0, "closed"),
    (NIGHTLY_NEW_YORK, utc(2026, 3, 8, 6, 59), 0, "New York spring forward: 01:59 EST"),
    (NIGHTLY_NEW_YORK, utc(2026, 3, 8, 7, 0), 3, "02:30 does not exist: fires at 03:00 EDT"),
    (NIGHTLY_NEW_YORK, utc(2026, 3, 8, 8, 0), 0, "one real hour later, closed"),
    (NIGHTLY_NEW_YORK, utc(2026, 11, 1, 5, 30), 0, "New York fall back: 01:30 EDT, the day's 02:30 is ahead"),
    (NIGHTLY_NEW_YORK, utc(2026, 11, 1, 7, 30), 3, "02:30 EST (02:30 happens once, after the fall back)"),
    (HOURLY_PARIS, utc(2026, 10, 25, 0, 45), 1, "hourly at 02:00 CEST"),
    (HOURLY_PARIS, utc(2026, 10, 25, 1, 15), 1, "hourly at 02:00 CET: no hour without a window"),
    (HOURLY_PARIS, utc(2026, 3, 29, 1, 15), 1, "hourly across the spring gap: 03:00 CEST"),
]


@pytest.mark.parametrize(("schedule", "now", "expected", "why"), CASES, ids=[case[3] for case in CASES])
def test_daylight_saving_edges(schedule: ScalingSchedule, now: float, expected: int, why: str) -> None:
    assert minimum_at([schedule], now) == expected, why


def test_no_schedule_means_no_minimum() -> None:
    assert minimum_at([], utc(2026, 3, 30, 8, 0)) == 0


def test_overlapping_windows_take_the_largest_minimum() -> None:
    morning = ScalingSchedule("0 8 * * *", "UTC", 4 * HOUR, 2)
    lunch = ScalingSchedule("0 11 * * *", "UTC", 2 * HOUR, 6)
    assert minimum_at([morning, lunch], utc(2026, 5, 4, 9, 0)) == 2
    assert minimum_at([morning, lunch], utc(2026, 5, 4, 11, 30)) == 6
    assert minimum_at([morning, lunch], utc(2026, 5, 4, 12, 30)) == 6
    assert minimum_at([morning, lunch], utc(2026, 5, 4, 13, 0)) == 0


def test_a_window_longer_than_the_period_stays_open() -> None:
    every_hour_for_three = ScalingSchedule("0 * * * *", "UTC", 3 * HOUR, 5)
    assert all(is_open(every_hour_for_three, utc(2026, 5, 4, 0, 0) + minute * 60) for minute in range(240))


def test_the_window_opens_on_the_minute_and_closes_after_its_duration() -> None:
    quarter = ScalingSchedule("15 10 * * *", "UTC", 90.0, 1)
    opens = utc(2026, 5, 4, 10, 15)
    assert not is_open(quarter, opens - 0.5)
    assert is_open(quarter, opens)
    assert is_open(quarter, opens + 89.9)
    assert not is_open(quarter, opens + 90.0)


def test_the_same_instant_gives_the_same_answer() -> None:
    now = utc(2026, 3, 29, 1, 30)
    assert [minimum_at([NIGHTLY_PARIS, WORKDAY], now) for _ in range(3)] == [2, 2, 2]


def test_nest_yaml_schedules_become_scaling_schedules() -> None:
    manifest = parse_manifest(
        "name: hello\n"
        "scaling:\n"
        "  stable_window: 30s\n"
        "  panic_window: 3s\n"
        "  start_latency: 2s\n"
        "  target_memory: 256Mi\n"
        "  schedules: [{cron: '0 9 * * MON-FRI', timezone: Europe/Paris, duration: 8h, min: 4}]\n"
    )
    spec = manifest.scaling_spec()
    assert spec.schedules == (ScalingSchedule("0 9 * * MON-FRI", "Europe/Paris", 8 * HOUR, 4),)
    assert (spec.stable_window_s, spec.panic_window_s, spec.start_latency_s) == (30.0, 3.0, 2.0)
    assert spec.target_memory == 256 * 1024**2
    assert spec.initial_scale == 0, "a deploy runs nothing until the first request unless asked"


@pytest.mark.parametrize(
    ("scaling", "problem"),
    [
        ("{schedules: [{cron: '0 9 * *', duration: 1h, min: 1}]}", "is not a five-field cron expression"),
        ("{schedules: [{cron: '0 25 * * *', duration: 1h, min: 1}]}", "is not a five-field cron expression"),
        ("{schedules: [{cron: '0 9 * * *', timezone: Mars/Olympus, duration: 1h, min: 1}]}", "not an IANA timezone"),
        ("{panic_window: 90s}", "panic_window (90s) is longer than stable_window (60s)"),
        ("{max: 2, activation_scale: 3}", "activation_scale (3) is above max (2)"),
    ],
)
def test_bad_scaling_keys_name_the_problem(scaling: str, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(f"name: hello\nscaling: {scaling}\n")
    assert problem in str(caught.value)


def _brute_force_open(schedule: ScalingSchedule, now: float) -> bool:
    """Minute by minute over the last `duration_s`: does the wall clock in the zone match the cron fields?"""
    zone = ZoneInfo(schedule.timezone)
    minute = math.floor(now / 60) * 60
    while minute > now - schedule.duration_s:
        wall = datetime.fromtimestamp(minute, zone).replace(tzinfo=None)
        if croniter.match(schedule.cron, wall):
            return True
        minute -= 60
    return False


def _offset_changes(zone_name: str, start: float, end: float) -> bool:
    zone = ZoneInfo(zone_name)
    return datetime.fromtimestamp(start, zone).utcoffset() != datetime.fromtimestamp(end, zone).utcoffset()


@settings(max_examples=150, deadline=None)
@given(
    cron=st.sampled_from(["0 9 * * MON-FRI", "30 2 * * *", "*/20 * * * *", "15 1-3 * * SUN", "0 0 1 * *"]),
    zone=st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]),
    duration_min=st.integers(1, 180),
    now=st.floats(utc(2026, 1, 1), utc(2027, 1, 1)) | st.sampled_from(SHIFTS).flatmap(near),
)
def test_schedules_agree_with_a_minute_by_minute_reading_of_the_wall_clock(
    cron: str, zone: str, duration_min: int, now: float
) -> None:
    schedule = ScalingSchedule(cron, zone, duration_min * 60.0, 1)
    mine, brute = is_open(schedule, now), _brute_force_open(schedule, now)
    if brute:
        assert mine, "every wall-clock firing opens a window"
    elif mine:
        # Only a skipped wall time fires where the wall clock never shows it: at a transition inside the window.
        assert _offset_changes(zone, now - schedule.duration_s - 60, now)


NEXT_CASES = [
    # schedule, instant (UTC), next opening (UTC), open until (UTC) or None, why
    (WORKDAY, utc(2026, 3, 27, 7, 0), utc(2026, 3, 27, 8, 0), None, "Friday morning: opens at 09:00 CET"),
    (WORKDAY, utc(2026, 3, 27, 12, 0), utc(2026, 3, 30, 7, 0), utc(2026, 3, 27, 16, 0), "open; next is Monday, CEST"),
    (NIGHTLY_PARIS, utc(2026, 3, 28, 23, 0), utc(2026, 3, 29, 1, 0), None, "02:30 is skipped: the transition"),
    (NIGHTLY_PARIS, utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 1, 30), "02:30 twice"),
    (NIGHTLY_NEW_YORK, utc(2026, 11, 1, 5, 0), utc(2026, 11, 1, 7, 30), None, "01:00-02:00 repeats, 02:30 once (EST)"),
]


@pytest.mark.parametrize(
    ("schedule", "now", "opens", "until", "why"), NEXT_CASES, ids=[case[-1] for case in NEXT_CASES]
)
def test_next_opening_and_open_until(
    schedule: ScalingSchedule, now: float, opens: float, until: float | None, why: str
) -> None:
    assert next_opening(schedule, now) == opens, why
    assert open_until(schedule, now) == until, why


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([WORKDAY, NIGHTLY_PARIS, NIGHTLY_NEW_YORK, HOURLY_PARIS]), st.one_of(*map(near, SHIFTS)))
def test_a_window_is_open_at_its_next_opening_and_not_just_before(schedule: ScalingSchedule, now: float) -> None:
    opens = next_opening(schedule, now)
    assert opens is not None
    assert opens > now
    assert is_open(schedule, opens)
    if not is_open(schedule, now) and opens - 1 > now:
        assert not is_open(schedule, opens - 1), "nothing fired between now and the next opening"
