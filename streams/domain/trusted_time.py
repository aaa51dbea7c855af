"""Which time a record is decided at: the device's claim while it is believable, else its arrival.

A device's clock can be wrong by seconds or years, and a sender can lie. The arrival time — stamped by
Kafka when the record was appended (LogAppendTime on the raw topics), or by Whistle when it read it —
is the time Whistle trusts. The device's time is kept as evidence and used for ordering and merging
only while it lies within the configured bounds of the arrival; beyond them the record is decided at
its arrival and flagged `clock_skew:device=<its claim>`, which auditors see on the case's events.

The ingest stage applies this once and writes the decided time into the case stream, so the case stream
alone determines every decision and a replay of it reproduces them whatever the bounds are set to later.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from whistle.ground.settings import TimeSettings
from whistle.ground.times import iso_ms, to_epoch_ms

CLOCK_SKEW = "clock_skew"


@dataclass(frozen=True, slots=True)
class SkewBounds:
    """How far a device's claim may lie after (`ahead_ms`) or before (`behind_ms`) the record's arrival."""

    ahead_ms: int = 300_000
    behind_ms: int = 86_400_000

    @classmethod
    def of_seconds(cls, ahead_s: float, behind_s: float) -> SkewBounds:
        return cls(int(ahead_s * 1000), int(behind_s * 1000))

    @classmethod
    def of(cls, settings: TimeSettings) -> SkewBounds:
        """The bounds a deployment configured (WHISTLE_TIME_DEVICE_AHEAD_S / _BEHIND_S)."""
        return cls.of_seconds(settings.device_ahead_s, settings.device_behind_s)


DEFAULT_SKEW = SkewBounds()


def decided_time(claimed: datetime, arrived: datetime, bounds: SkewBounds) -> tuple[datetime, str | None]:
    """The time to decide a record at, and the clock_skew flag when the claim was not believed (else None)."""
    skew_ms = to_epoch_ms(claimed) - to_epoch_ms(arrived)
    if -bounds.behind_ms <= skew_ms <= bounds.ahead_ms:
        return claimed, None
    return arrived, f"{CLOCK_SKEW}:device={iso_ms(claimed)}"


def flagged_note(note: str | None, flag: str) -> str:
    """A note with an evidence flag (`[clock_skew:…]`, `[backdated:…]`) appended: the sender's text is kept as written."""
    return f"{note} [{flag}]" if note else f"[{flag}]"
