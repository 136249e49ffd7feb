"""When a scheduled rotation may start: the key's ``rotation_window`` minus its ``blackout`` dates.

Pure functions of the inventory settings and a moment, so the sensor, the page and the tests agree. Rules:

* ``days`` are the days on which the window *opens*: ``hours: "22:00-02:00"`` with ``days: [fri]`` runs from
  Friday 22:00 to Saturday 02:00. ``24:00`` is the end of the day.
* Clock times are wall-clock times in ``timezone`` (zoneinfo, so DST-correct): a time that does not exist on a
  spring-forward day means the moment the clock jumps past it; one that happens twice on a fall-back day means its
  first occurrence.
* A blackout date (in the window's time zone, UTC without a window) blocks every moment of that local date, also
  the part of a window that crosses midnight into it; the window resumes at the first allowed moment after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from kosli_rotation.lifecycle import WEEKDAYS, LifecycleSettings, RotationWindow

#: How far ahead an opening is looked for; a window that never opens in this long is a configuration error.
SEARCH_DAYS = 400
ALWAYS = RotationWindow()


class NoOpeningError(ValueError):
    """The window and the blackouts leave no moment to rotate in within ``SEARCH_DAYS``."""


def restricted(settings: LifecycleSettings) -> bool:
    """Whether scheduled runs of this key wait for anything (a window or a blackout)."""
    return settings.rotation_window is not None or bool(settings.blackout)


def next_opening(settings: LifecycleSettings, now: datetime) -> datetime:
    """The first moment at or after ``now`` (aware) at which a scheduled rotation may start, in UTC: ``now`` itself
    when it is inside the window and not blacked out."""
    if now.tzinfo is None:
        raise ValueError("next_opening needs an aware datetime (with a time zone)")
    now = now.astimezone(UTC)
    window = settings.rotation_window or ALWAYS
    zone = window.zone
    for opens, closes in _spans(window, now.astimezone(zone).date() - timedelta(days=1)):
        if opens > now + timedelta(days=SEARCH_DAYS):
            break
        moment = _first_allowed(settings, zone, max(opens, now), closes)
        if moment is not None:
            return moment
    raise NoOpeningError(
        f"no moment to rotate in within {SEARCH_DAYS} days of {now:%Y-%m-%d %H:%M} UTC: {describe(settings)}; "
        "the blackouts cover every day the window opens: shorten them or widen rotation_window"
    )


def is_open(settings: LifecycleSettings, now: datetime) -> bool:
    return next_opening(settings, now) <= now.astimezone(UTC)


def describe(settings: LifecycleSettings) -> str:
    """``tue, wed, thu 09:00-16:00 Europe/Oslo; blackout 2026-12-20..2027-01-03, 2027-03-31`` (for logs and page)."""
    window = settings.rotation_window
    text = "any time"
    if window is not None:
        days = "every day" if len(window.days) == 7 else ", ".join(window.days)
        text = f"{days} {window.hours} {window.timezone}"
    if settings.blackout:
        dates = ", ".join(
            b.first.isoformat() if b.first == b.last else f"{b.first.isoformat()}..{b.last.isoformat()}"
            for b in settings.blackout
        )
        text += f"; blackout {dates} ({window.timezone if window else 'UTC'})"
    return text


def describe_moment(moment: datetime, settings: LifecycleSettings) -> str:
    """``2026-12-01 09:00 CET (08:00 UTC)``: the window's own clock first, then UTC."""
    zone = (settings.rotation_window or ALWAYS).zone
    local = moment.astimezone(zone)
    utc = moment.astimezone(UTC)
    if zone.key == "UTC":
        return f"{utc:%Y-%m-%d %H:%M} UTC"
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({utc:%Y-%m-%d %H:%M} UTC)"


# -- internals ------------------------------------------------------------------------------------------------


def _spans(window: RotationWindow, first_day: date) -> Iterator[tuple[datetime, datetime]]:
    """Every span of the window, in UTC, opening on ``first_day`` or later, in order."""
    start, end = window.span
    day = first_day
    while True:
        if WEEKDAYS[day.weekday()] in window.days:
            opens = first_moment(datetime.combine(day, start), window.zone)
            if end is None:
                closes = first_moment(datetime.combine(day + timedelta(days=1), time(0)), window.zone)
            elif end > start:
                closes = first_moment(datetime.combine(day, end), window.zone)
            else:  # crosses midnight
                closes = first_moment(datetime.combine(day + timedelta(days=1), end), window.zone)
            if closes > opens:  # a span inside a DST gap has no moment at all
                yield opens, closes
        day += timedelta(days=1)


def first_moment(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the wall clock in ``zone`` reads ``wall`` or later: its first occurrence
    on a fall-back day, the moment the clock jumps past it on a spring-forward day."""
    earliest = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if earliest.astimezone(zone).replace(tzinfo=None) == wall:
        return earliest
    # In a DST gap: the wall clock is monotonic around it, so bisect (to the second) for when it passes ``wall``.
    low, high = sorted((earliest, wall.replace(tzinfo=zone, fold=1).astimezone(UTC)))
    while high - low > timedelta(seconds=1):
        middle = low + timedelta(seconds=int((high - low).total_seconds()) // 2)
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high


def _first_allowed(settings: LifecycleSettings, zone: ZoneInfo, start: datetime, end: datetime) -> datetime | None:
    """The first moment in [start, end) whose local date is not blacked out."""
    moment = start
    while moment < end:
        day = moment.astimezone(zone).date()
        if not any(blackout.covers(day) for blackout in settings.blackout):
            return moment
        moment = first_moment(datetime.combine(day + timedelta(days=1), time(0)), zone)
    return None


def window_summary(settings: LifecycleSettings, now: datetime, due: datetime | None = None) -> str | None:
    """What the page says about a key's window: None without one; else the window and when the next scheduled
    rotation can start (its next opening once the key is due, or from now when it is overdue)."""
    if not restricted(settings):
        return None
    start = max(now, due) if due else now
    try:
        opening = next_opening(settings, start)
    except NoOpeningError as error:
        return f"window: {describe(settings)}; {error}"
    if opening <= now:
        return f"window: {describe(settings)}; window open now"
    return f"window: {describe(settings)}; next opening {describe_moment(opening, settings)}"
