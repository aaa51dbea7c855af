"""Duplicate merging: a report joins an open case of the same incident instead of opening a new one.

Rule (FixMyStreet's duplicate rule, plus a time window): a report joins an OPEN case when it is on
the same case-stream partition (street, or the district desk), of the same category, within
`max_distance_m` (default 250 m, haversine) of the case's first report, and within `window`
(default 24 h) of the case's reports: not earlier than `opened_at - window`, not later than
`last_reported_at + window` (every merged report extends the window, so a pile of garbage reported
daily while its case stays open keeps joining it). Reports without coordinates (desk-routed) join
only a case with the same place key: same grid, else same normalised address text, else same camera.
Several candidates: the nearest wins, then the earliest opened, then the smallest case id, so the
outcome never depends on insertion order.

The index is a small mutable object owned by one case processor. It is derived state: rebuild it
on recovery by add()ing the open cases from the case table (OpenCase holds all it needs).
Lookups touch the 3 x 3 neighbouring cells only. Cells are `max_distance_m` tall; their width is
chosen per latitude band so that any point within `max_distance_m` lies in a neighbouring column,
and columns wrap round the antimeridian: exact at every latitude, poles included.
"""
from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from streams.domain.enrich import EARTH_RADIUS_M, case_partition_key, haversine_m
from streams.domain.model import EnrichedReport
from streams.domain.trusted_time import CLOCK_SKEW
from whistle.ground.errors import ConfigError
from whistle.ground.times import from_iso, to_epoch_ms

DEFAULT_MAX_DISTANCE_M = 250.0
DEFAULT_WINDOW = timedelta(hours=24)
_BAND_STRIDE = 1 << 32  # cell key = band * _BAND_STRIDE + column (columns per band stay far below 2**32)


@dataclass(frozen=True, slots=True)
class OpenCase:
    """What the merge rule needs to know about one open case."""

    case_id: str
    partition: str
    category: str
    opened_at: datetime
    last_reported_at: datetime
    lat: float | None
    lon: float | None
    place_key: str | None  # only for cases without coordinates


def open_case_from_stored(values: tuple) -> OpenCase:
    """An OpenCase from its fields in order (recovery), with the partition and category strings shared:
    a million open cases hold a dozen distinct values of each, not two million copies; and with one datetime
    object for both times while no report has joined (they are equal), not two."""
    case_id, partition, category, opened_at, last_reported_at, *rest = values
    if last_reported_at == opened_at:
        last_reported_at = opened_at
    return OpenCase(case_id, sys.intern(partition), sys.intern(category), opened_at, last_reported_at, *rest)


class MergeIndex:
    """Open cases indexed by (partition, category, geo cell), and by place key for cases without coordinates."""

    __slots__ = ("max_distance_m", "window", "_normalize_address", "_cell_deg", "_columns_of_band", "_half_angle_sin",
                 "_by_cell", "_by_place", "_cases")

    def __init__(self, normalize_address: Callable[[str], str], max_distance_m: float = DEFAULT_MAX_DISTANCE_M,
                 window: timedelta = DEFAULT_WINDOW) -> None:
        """`normalize_address` is the gazetteer's normaliser (reference.gazetteer.normalize), so that
        unresolved addresses written differently still meet under one key."""
        if max_distance_m <= 0 or window <= timedelta(0):
            raise ConfigError(f"merge distance ({max_distance_m} m) and window ({window}) must be positive", field="merge")
        self.max_distance_m = max_distance_m
        self.window = window
        self._normalize_address = normalize_address
        self._cell_deg = math.degrees(max_distance_m / EARTH_RADIUS_M)
        self._half_angle_sin = math.sin(max_distance_m / (2 * EARTH_RADIUS_M))
        self._columns_of_band: dict[int, tuple[int, float]] = {}
        self._by_cell: dict[tuple[str, str], dict[int, list[OpenCase]]] = {}  # (partition, category) -> cell -> cases
        self._by_place: dict[tuple[str, str], dict[str, list[OpenCase]]] = {}  # (partition, category) -> place key -> cases
        self._cases: dict[str, OpenCase] = {}

    def open_case(self, case_id: str, enriched: EnrichedReport) -> OpenCase:
        """The entry for a case that `enriched` (its first report) opened; add() it."""
        location, at = enriched.location, enriched.report.occurred_at
        place_key = None if location.lat is not None and location.lon is not None else self.place_key(enriched)
        return OpenCase(case_id, case_partition_key(enriched), enriched.report.category, at, at, location.lat, location.lon, place_key)

    def place_key(self, enriched: EnrichedReport) -> str | None:
        """Where a report without coordinates is, for exact matching: grid, else address, else camera."""
        location, report = enriched.location, enriched.report
        if location.grid_id is not None:
            return f"grid:{location.grid_id}"
        if report.address_text:
            return f"address:{self._normalize_address(report.address_text)}"
        if report.camera_id is not None:
            return f"camera:{report.camera_id}"
        return None

    def add(self, case: OpenCase) -> None:
        """Insert or replace (by case id) an open case."""
        self.remove(case.case_id)
        found = self._bucket_of(case)
        if found is None:
            return  # nowhere to meet: no later report can be recognised as this incident
        table, key = found
        table.setdefault(key, []).append(case)
        self._cases[case.case_id] = case

    def remove(self, case_id: str) -> OpenCase | None:
        """Forget a case (resolved or closed). Returns what was removed, if anything."""
        case = self._cases.pop(case_id, None)
        if case is None:
            return None
        table, key = self._filed(case)
        bucket = table[key]
        if len(bucket) == 1:
            del table[key]
        else:
            bucket[:] = [other for other in bucket if other is not case]
        return case

    def entry(self, case_id: str) -> OpenCase:
        """The open case's entry (KeyError if it is not open)."""
        return self._cases[case_id]

    def touch(self, case_id: str, at: datetime) -> OpenCase | None:
        """A report joined `case_id` at `at`: the time window now runs from the latest report. Returns the entry (to persist)."""
        case = self._cases.get(case_id)
        if case is None or at <= case.last_reported_at:
            return case
        later = OpenCase(case.case_id, case.partition, case.category, case.opened_at, at, case.lat, case.lon, case.place_key)
        table, key = self._filed(case)
        bucket = table[key]
        bucket[next(i for i, other in enumerate(bucket) if other is case)] = later
        self._cases[case_id] = later
        return later

    def _bucket_of(self, case: OpenCase) -> tuple[dict, int | str] | None:
        """The table and key of the bucket a case is filed under (None: it has nowhere to meet). Recomputed when needed,
        not kept per case: a (table, cell) pair per open case was a tenth of a recovered worker's memory (README)."""
        if case.lat is not None and case.lon is not None:
            return self._by_cell.setdefault((case.partition, case.category), {}), self._cell(case.lat, case.lon)
        if case.place_key is not None:
            return self._by_place.setdefault((case.partition, case.category), {}), case.place_key
        return None

    def _filed(self, case: OpenCase) -> tuple[dict, int | str]:
        found = self._bucket_of(case)
        assert found is not None  # only a case with a bucket is in the index
        return found

    def find_case_to_join(self, enriched: EnrichedReport, now: datetime | None = None) -> str | None:
        """The open case this report belongs to, or None when it opens a new case.

        `now` is the report's event time (default: when it occurred).
        """
        now = enriched.report.occurred_at if now is None else now
        partition = case_partition_key(enriched)
        category = enriched.report.category
        lat, lon = enriched.location.lat, enriched.location.lon
        # within the window of a case <=> opened_at - window <= now <= last_reported_at + window
        latest_opening, earliest_last_report = now + self.window, now - self.window
        best: tuple | None = None
        if lat is None or lon is None:
            place_key = self.place_key(enriched)
            places = self._by_place.get((partition, category))
            if place_key is None or places is None:
                return None
            for case in places.get(place_key, ()):
                if case.opened_at <= latest_opening and case.last_reported_at >= earliest_last_report:
                    rank = (0.0, case.opened_at, case.case_id)
                    if best is None or rank < best:
                        best = rank
            return best[2] if best is not None else None
        cells = self._by_cell.get((partition, category))
        if cells is None:
            return None
        cell_deg, max_distance_m = self._cell_deg, self.max_distance_m
        band = math.floor(lat / cell_deg)
        for b in (band - 1, band, band + 1):
            count, width = self._columns_of_band.get(b) or self._band_columns(b)
            column = int((lon + 180.0) / width) % count
            base = b * _BAND_STRIDE
            columns = (column - 1, column, column + 1) if 0 < column < count - 1 else {(column - 1) % count, column, (column + 1) % count}
            for c in columns:
                bucket = cells.get(base + c)
                if bucket is None:
                    continue
                for case in bucket:
                    assert case.lat is not None and case.lon is not None  # add() files only cases with coordinates under cells
                    if (case.opened_at > latest_opening or case.last_reported_at < earliest_last_report
                            or abs(case.lat - lat) > cell_deg):
                        continue
                    distance = haversine_m(lat, lon, case.lat, case.lon)
                    if distance <= max_distance_m:
                        rank = (distance, case.opened_at, case.case_id)
                        if best is None or rank < best:
                            best = rank
        return best[2] if best is not None else None

    def __len__(self) -> int:
        return len(self._cases)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._cases

    def __iter__(self) -> Iterator[OpenCase]:
        return iter(self._cases.values())

    def _cell(self, lat: float, lon: float) -> int:
        band = math.floor(lat / self._cell_deg)
        count, width = self._band_columns(band)
        return band * _BAND_STRIDE + int((lon + 180.0) / width) % count

    def _band_columns(self, band: int) -> tuple[int, float]:
        """(number of columns around the globe, column width in degrees) of a latitude band.

        A column is at least as wide as the longitude span of max_distance_m anywhere in this band
        and its two neighbours, so the neighbouring columns always suffice; a whole number of
        columns goes round the globe, so neighbours wrap across the antimeridian.
        """
        columns = self._columns_of_band.get(band)
        if columns is None:
            poleward = min(90.0, max(abs((band - 1) * self._cell_deg), abs((band + 2) * self._cell_deg)))
            cos_lat = math.cos(math.radians(poleward))
            ratio = self._half_angle_sin / cos_lat if cos_lat > 1e-12 else 2.0
            count = 1 if ratio >= 1.0 else max(1, int(360.0 / math.degrees(2 * math.asin(ratio))))
            columns = self._columns_of_band[band] = (count, 360.0 / count)
        return columns


def report_fingerprint(enriched: EnrichedReport) -> bytes:
    """What a report says, for telling a redelivery (same id, same content: a no-op) from a different report
    under a reused id (a conflicting duplicate). It covers the sender's claims — the device's time (from the
    clock_skew flag when the decided time is the arrival), place, category, text, media, reporter — and not
    what depends on when it was delivered."""
    report = enriched.report
    claimed = next((flag.partition("=")[2] for flag in enriched.flags if flag.startswith(f"{CLOCK_SKEW}:device=")), None)
    claimed_ms = to_epoch_ms(from_iso(claimed)) if claimed else to_epoch_ms(report.occurred_at)
    content = (report.report_id, report.source.value, claimed_ms, report.category, report.urgency.value,
               report.description, report.lat, report.lon, report.address_text, report.camera_id, report.reporter_hash,
               report.reporter_role, list(report.media), report.confidence)
    return hashlib.blake2b(orjson.dumps(content), digest_size=16).digest()
