"""Freeze evaluation with an injected clock (agents_app.services.freeze): pure, no database.
Windows are unsaved FreezeWindow rows; `now` is whatever moment the test needs."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, time, timedelta

from agents_app.models import FreezeKind, FreezeWindow, freeze_window_errors
from agents_app.services.freeze import freeze_at, window_active_occurrence

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def weekly(days, start, end, tz="UTC", name="nightly", **kw) -> FreezeWindow:
    return FreezeWindow(name=name, kind=FreezeKind.WEEKLY, weekdays=list(days), start_time=time(*start),
                        end_time=time(*end), time_zone=tz, **kw)


def one_off(start: datetime, end: datetime, name="release", **kw) -> FreezeWindow:
    return FreezeWindow(name=name, kind=FreezeKind.ONE_OFF, starts_at=start, ends_at=end, **kw)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def berlin(*args, fold=0) -> datetime:
    # In UTC: an aware datetime with fold=1 never compares equal to one of another zone (PEP 495).
    return datetime(*args, tzinfo=BERLIN, fold=fold).astimezone(UTC)


# 2026-11-27 is a Friday.


def test_it_is_frozen_inside_a_weekly_window_and_not_outside():
    w = weekly(["fri"], (9, 0), (17, 0))
    assert freeze_at([w], utc(2026, 11, 27, 8, 59)).until is None
    frozen = freeze_at([w], utc(2026, 11, 27, 9, 0))
    assert (frozen.until, frozen.window) == (utc(2026, 11, 27, 17, 0), w)
    assert freeze_at([w], utc(2026, 11, 27, 17, 0)).until is None, "the end is not part of the window"
    assert freeze_at([w], utc(2026, 11, 26, 12, 0)).until is None, "thursday is not selected"


def test_a_window_crossing_midnight_ends_the_next_day_and_belongs_to_its_start_day():
    w = weekly(["fri"], (22, 0), (6, 0))
    assert freeze_at([w], utc(2026, 11, 28, 5, 59)).until == utc(2026, 11, 28, 6, 0), "saturday morning: friday's"
    assert freeze_at([w], utc(2026, 11, 27, 5, 0)).until is None, "friday morning is thursday night's: not selected"
    assert freeze_at([w], utc(2026, 11, 27, 23, 0)).until == utc(2026, 11, 28, 6, 0)


def test_an_end_equal_to_the_start_lasts_24_hours():
    w = weekly(["sat"], (0, 0), (0, 0))
    assert freeze_at([w], utc(2026, 11, 28, 23, 59)).until == utc(2026, 11, 29, 0, 0)


def test_it_tells_the_next_start_when_not_frozen():
    w = weekly(["mon", "fri"], (22, 0), (6, 0), name="nights")
    state = freeze_at([w], utc(2026, 11, 28, 12, 0))  # saturday noon
    assert state.until is None
    assert (state.next_start, state.next_window) == (utc(2026, 11, 30, 22, 0), w)
    assert state.thawed_at == utc(2026, 11, 28, 6, 0), "when the last freeze ended"


def test_weekly_windows_keep_local_wall_clock_time_in_their_time_zone():
    w = weekly(["wed"], (9, 0), (17, 0), tz="Europe/Berlin")
    # Winter: CET (+1).
    assert freeze_at([w], utc(2026, 11, 25, 7, 59)).until is None
    assert freeze_at([w], utc(2026, 11, 25, 8, 0)).until == utc(2026, 11, 25, 16, 0)
    # Summer: CEST (+2).
    assert freeze_at([w], utc(2026, 7, 1, 7, 0)).until == utc(2026, 7, 1, 15, 0)


def test_a_night_window_over_spring_forward_lasts_an_hour_less_and_keeps_its_local_times():
    # Berlin, 2026-03-29 (sunday): 02:00 CET becomes 03:00 CEST.
    w = weekly(["sat"], (22, 0), (6, 0), tz="Europe/Berlin")
    state = freeze_at([w], berlin(2026, 3, 28, 22, 0))
    assert state.until == berlin(2026, 3, 29, 6, 0)
    assert state.until - berlin(2026, 3, 28, 22, 0) == timedelta(hours=7)
    assert freeze_at([w], berlin(2026, 3, 28, 21, 59)).until is None
    assert freeze_at([w], berlin(2026, 3, 29, 5, 59)).until == berlin(2026, 3, 29, 6, 0)
    assert freeze_at([w], berlin(2026, 3, 29, 6, 0)).until is None


def test_a_night_window_over_fall_back_lasts_an_hour_more():
    # Berlin, 2026-10-25 (sunday): 03:00 CEST becomes 02:00 CET.
    w = weekly(["sat"], (22, 0), (6, 0), tz="Europe/Berlin")
    start = berlin(2026, 10, 24, 22, 0)
    state = freeze_at([w], start)
    assert state.until == berlin(2026, 10, 25, 6, 0)
    assert state.until - start == timedelta(hours=9)
    # Both 02:30s of that night are frozen.
    assert freeze_at([w], berlin(2026, 10, 25, 2, 30, fold=0)).until == state.until
    assert freeze_at([w], berlin(2026, 10, 25, 2, 30, fold=1)).until == state.until


def test_a_start_the_clocks_skip_begins_when_they_jump_and_a_repeated_time_makes_the_window_longer():
    skipped = weekly(["sun"], (2, 30), (4, 0), tz="Europe/Berlin")
    # 02:30 does not exist on 2026-03-29: the window starts at the jump, 03:00 CEST (01:00 UTC).
    assert freeze_at([skipped], utc(2026, 3, 29, 0, 59)).until is None
    assert freeze_at([skipped], utc(2026, 3, 29, 1, 0)).until == utc(2026, 3, 29, 2, 0)
    # 02:30 happens twice on 2026-10-25: a window 01:00-02:30 ends at the second one.
    repeated = weekly(["sun"], (1, 0), (2, 30), tz="Europe/Berlin")
    assert freeze_at([repeated], berlin(2026, 10, 25, 1, 0)).until == berlin(2026, 10, 25, 2, 30, fold=1)


def test_a_one_off_window_freezes_from_its_start_to_its_end():
    w = one_off(utc(2026, 12, 20, 18, 0), utc(2027, 1, 4, 8, 0), name="holidays")
    assert freeze_at([w], utc(2026, 12, 20, 17, 59)).until is None
    assert freeze_at([w], utc(2026, 12, 20, 17, 59)).next_start == utc(2026, 12, 20, 18, 0)
    assert freeze_at([w], utc(2026, 12, 25, 0, 0)).until == utc(2027, 1, 4, 8, 0)
    assert freeze_at([w], utc(2027, 1, 4, 8, 0)).until is None


def test_overlapping_and_touching_windows_are_one_freeze_until_the_last_ends():
    evening = weekly(["fri"], (18, 0), (0, 0), name="evening")  # to midnight
    weekend = weekly(["sat", "sun"], (0, 0), (0, 0), name="weekend")  # 24 hours each
    monday = weekly(["mon"], (0, 0), (8, 0), name="monday morning")
    release = one_off(utc(2026, 11, 30, 7, 0), utc(2026, 11, 30, 12, 0), name="release")
    state = freeze_at([evening, weekend, monday, release], utc(2026, 11, 27, 19, 0))
    assert (state.until, state.window.name) == (utc(2026, 11, 30, 12, 0), "release")
    assert state.next_start == utc(2026, 12, 4, 18, 0), "the next friday evening"


def test_disabled_windows_do_not_freeze():
    w = weekly(["fri"], (9, 0), (17, 0), enabled=False)
    assert freeze_at([w], utc(2026, 11, 27, 12, 0)).until is None


def test_an_early_lift_ends_the_current_occurrence_and_the_next_one_freezes_again():
    w = weekly(["fri", "sat"], (9, 0), (17, 0))
    w.lifted_at = utc(2026, 11, 27, 12, 0)
    w.lifted_until = utc(2026, 11, 27, 17, 0)
    assert freeze_at([w], utc(2026, 11, 27, 11, 59)).until == utc(2026, 11, 27, 12, 0), "it ends at the lift"
    after = freeze_at([w], utc(2026, 11, 27, 12, 0))
    assert after.until is None and after.thawed_at == utc(2026, 11, 27, 12, 0)
    assert after.next_start == utc(2026, 11, 28, 9, 0)
    assert freeze_at([w], utc(2026, 11, 28, 10, 0)).until == utc(2026, 11, 28, 17, 0), "saturday freezes again"
    assert window_active_occurrence(w, utc(2026, 11, 27, 13, 0)) is None


def test_a_lifted_window_leaves_an_overlapping_one_in_force():
    a = weekly(["fri"], (9, 0), (17, 0), name="a")
    b = one_off(utc(2026, 11, 27, 10, 0), utc(2026, 11, 27, 20, 0), name="b")
    b.lifted_at = utc(2026, 11, 27, 12, 0)
    state = freeze_at([a, b], utc(2026, 11, 27, 13, 0))
    assert (state.until, state.window.name) == (utc(2026, 11, 27, 17, 0), "a")


def test_it_refuses_windows_that_cannot_mean_anything():
    def errors(**kw) -> dict:
        base = {"name": "w", "kind": "weekly", "weekdays": ["mon"], "start_time": time(1), "end_time": time(2),
                "time_zone": "UTC"}
        return freeze_window_errors(FreezeWindow(**{**base, **kw}))

    assert errors() == {}
    assert errors(weekdays=[]) == {"weekdays": ["a weekly window needs at least one weekday (mon, tue, wed, thu, "
                                               "fri, sat, sun)"]}
    assert errors(weekdays=["monday"])["weekdays"] == ["unknown weekday 'monday': use mon, tue, wed, thu, fri, sat, sun"]
    assert errors(time_zone="Mars/Olympus")["time_zone"] == [
        "unknown time zone 'Mars/Olympus': use an IANA name such as Europe/Berlin or UTC"]
    assert "start_time" in errors(start_time=None)
    assert errors(name=" ")["name"] == ["a window needs a name (it is shown in waiting reasons)"]
    one = {"kind": "one_off", "weekdays": [], "start_time": None, "end_time": None}
    assert errors(**one, starts_at=utc(2026, 1, 2), ends_at=utc(2026, 1, 1)) == {
        "ends_at": ["ends_at must be after starts_at"]}
    assert errors(**one, starts_at=utc(2026, 1, 1), ends_at=utc(2026, 1, 2)) == {}
    assert "starts_at" in errors(**one, ends_at=utc(2026, 1, 2))
