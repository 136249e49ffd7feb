"""Inventory fields for a key's whole life: its TTL, when it counts as due, its change window, its retry budget
and where each rotation is attested in Kosli.

``KeyEntry`` inherits these; they live here so the rules about time stay in one place::

    key_ttl_days: 120              # Kosli kills each key we mint 120 days after minting it
    expiry_lead_days: 14           # due once Kosli's expires_at is this close, whatever the key's age
    expiry_warning_days: 30        # the staleness check warns at 30, 7 and 1 day(s) before expiry
    rotation_window: {days: [tue, wed, thu], hours: "09:00-16:00", timezone: Europe/Oslo}
    blackout: ["2026-12-20..2027-01-03", "2027-03-31"]
    max_failed_attempts: 3         # failed runs of one rotation before it waits for a human
    attest: {flow: key-rotations, trail: "{name}-{date}"}
"""

from __future__ import annotations

import re
from datetime import date, time
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: The tool's own time after the grace period: a scheduled check a day late, a rotation's steps, a retry.
TTL_MARGIN_HOURS = 24
#: Kosli's names (flows, trails): the CLI's rule, letters, digits, ``_ . ~ -``, no leading punctuation.
KOSLI_ARTIFACT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,199}$"
TRAIL_PLACEHOLDERS = ("{name}", "{date}")
HOURS = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")


class RotationWindow(BaseModel):
    """When scheduled rotations may run: some days of the week, one span of hours, in one time zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(WEEKDAYS), min_length=1
    )
    hours: str = Field(default="00:00-24:00", description="'HH:MM-HH:MM', local time; may cross midnight.")
    timezone: str = "UTC"

    @field_validator("hours", mode="before")
    @classmethod
    def _hours_is_text(cls, hours: object) -> object:
        """YAML 1.1 reads an unquoted ``10:00`` as the base-60 number 600: say so, not "a valid string"."""
        if isinstance(hours, int | float) and not isinstance(hours, bool):
            raise ValueError(
                f"{hours!r} is a number, not 'HH:MM-HH:MM': YAML reads unquoted times as numbers; quote them: "
                'hours: "09:00-16:00"'
            )
        return hours

    @field_validator("hours")
    @classmethod
    def _hours(cls, hours: str) -> str:
        match = HOURS.match(hours)
        if not match:
            raise ValueError(f"{hours!r} is not 'HH:MM-HH:MM' (quote it in YAML: unquoted 09:00 reads as a number)")
        start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
        if start_h > 23 or end_h > 24 or start_m > 59 or end_m > 59 or (end_h == 24 and end_m):
            raise ValueError(f"{hours!r} is not a span of clock times")
        if (start_h, start_m) == (end_h, end_m):
            raise ValueError(f"{hours!r} is an empty span")
        return hours

    @field_validator("timezone")
    @classmethod
    def _zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{zone!r} is not an IANA time zone (e.g. Europe/Oslo, UTC)") from None
        return zone

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def span(self) -> tuple[time | None, time | None]:
        """Start and end of the hours; an end of 24:00 is None (the end of the day)."""
        start_h, start_m, end_h, end_m = (int(part) for part in HOURS.match(self.hours).groups())  # type: ignore[union-attr]
        return time(start_h, start_m), (None if end_h == 24 else time(end_h, end_m))


class Blackout(BaseModel):
    """Dates on which scheduled rotations wait (both ends included), in the window's time zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first: date
    last: date

    @classmethod
    def parse(cls, text: object) -> Blackout:
        if isinstance(text, date):
            return cls(first=text, last=text)
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a date ('2026-12-24') or a range ('2026-12-20..2027-01-03')")
        first, _, last = text.partition("..")
        try:
            blackout = cls(first=date.fromisoformat(first.strip()), last=date.fromisoformat((last or first).strip()))
        except ValueError:
            raise ValueError(f"{text!r} is not a date ('2026-12-24') or a range ('2026-12-20..2027-01-03')") from None
        if blackout.last < blackout.first:
            raise ValueError(f"{text!r} ends before it starts")
        return blackout

    def covers(self, day: date) -> bool:
        return self.first <= day <= self.last


class Attest(BaseModel):
    """Where each finished rotation is attested in Kosli: a flow and a trail (templates of the key's name and the
    rotation's date, so one trail per key per day or per key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flow: str = Field(pattern=KOSLI_ARTIFACT_NAME)
    trail: str = Field(default="{name}-{date}", min_length=1, max_length=200)

    @field_validator("trail")
    @classmethod
    def _trail(cls, trail: str) -> str:
        probe = trail
        for placeholder in TRAIL_PLACEHOLDERS:
            probe = probe.replace(placeholder, "x")
        if "{" in probe or "}" in probe or not re.match(KOSLI_ARTIFACT_NAME, probe):
            raise ValueError(
                f"{trail!r}: letters, digits, '_.~-' and the placeholders {', '.join(TRAIL_PLACEHOLDERS)} only"
            )
        return trail

    def trail_name(self, key_name: str, day: date) -> str:
        return self.trail.replace("{name}", key_name).replace("{date}", day.isoformat())


class LifecycleSettings(BaseModel):
    """The fields; ``KeyEntry`` inherits them, with ``max_age_days`` and ``grace_hours`` for the TTL rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_ttl_days: int | None = Field(
        default=None, ge=1, le=3650, description="Kosli's expiry for each key minted: expires_at = now + TTL."
    )
    expiry_lead_days: int = Field(
        default=14,
        ge=1,
        le=365,
        description="Due once Kosli's expires_at is this close: two weeks leaves a failed rotation a week of "
        "daily retries and a human a week to fix what the retries could not.",
    )
    expiry_warning_days: int = Field(default=30, ge=1, le=365, description="The first expiry warning.")
    rotation_window: RotationWindow | None = None
    blackout: list[Blackout] = Field(default_factory=list)
    max_failed_attempts: int = Field(default=3, ge=1, le=100, description="Failed runs before needs_attention.")
    attest: Attest | None = None

    @field_validator("blackout", mode="before")
    @classmethod
    def _blackouts(cls, value: object) -> object:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError("expected a list of dates ('2026-12-24') or ranges ('2026-12-20..2027-01-03')")
        return [item if isinstance(item, Blackout | dict) else Blackout.parse(item) for item in value]

    @model_validator(mode="after")
    def _ttl_outlives_the_next_rotation(self) -> LifecycleSettings:
        """A key minted with a TTL must live until its successor is rotated in and the grace is over."""
        if self.key_ttl_days is None:
            return self
        max_age_days = getattr(self, "max_age_days", 90)
        grace_hours = getattr(self, "grace_hours", 24)
        needed_hours = max_age_days * 24 + grace_hours + TTL_MARGIN_HOURS
        if self.key_ttl_days * 24 <= needed_hours:
            raise ValueError(
                f"key_ttl_days ({self.key_ttl_days}) would kill the key before its next rotation is over: it must "
                f"be more than max_age_days ({max_age_days}) + grace_hours ({grace_hours}) + {TTL_MARGIN_HOURS} h, "
                f"so more than {needed_hours / 24:g} days"
            )
        if self.expiry_lead_days >= self.key_ttl_days:
            raise ValueError(
                f"expiry_lead_days ({self.expiry_lead_days}) must be less than key_ttl_days ({self.key_ttl_days}): "
                "every key would be due the moment it is minted"
            )
        return self
