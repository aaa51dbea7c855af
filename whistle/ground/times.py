"""Whistle's time: UTC-aware datetimes and exact epoch milliseconds, and the one wall clock to inject.

The hot paths carry time as epoch milliseconds (ints); records and people see UTC datetimes. Naive
datetimes are refused everywhere: their zone would be a guess.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from whistle.ground.errors import ValidationError

UTC = UTC
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def utc_now() -> datetime:
    """The wall clock, UTC. Entry points pass it on; everything below takes a clock as an argument."""
    return datetime.now(UTC)


def to_epoch_ms(value: datetime, field: str = "at") -> int:
    """Exact epoch milliseconds of a timezone-aware datetime. Naive datetimes are refused: their zone would be a guess."""
    if value.utcoffset() is None:
        raise ValidationError(f"{field}={value.isoformat()} has no time zone: Whistle only takes timezone-aware (UTC) datetimes", field=field)
    return (value - EPOCH) // _ONE_MS


def iso_ms(value: datetime) -> str:
    """`2026-06-08T03:59:06.194Z`: the UTC text form of a time in flags and notes (`from_iso` reads it back)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    """The time an `iso_ms` text names."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def from_epoch_ms(ms: int) -> datetime:
    """The UTC datetime of epoch milliseconds (exact, no float rounding)."""
    return EPOCH + timedelta(milliseconds=ms)
