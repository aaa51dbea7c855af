"""`python -m whistle.devtools.serde_bench`: microseconds per record to validate, encode and decode each topic's example.

A budget check for the hot path (~20k events/s end to end on 2 cores leaves ~50 us per event for
everything): run it after changing schemas, validation or serde.
"""
from __future__ import annotations

import sys
import timeit

from schemas.catalog import default_catalog
from schemas.serde import Serde


def _per_record_us(action, records: int = 20_000) -> float:
    best = min(timeit.repeat(action, number=records, repeat=3))
    return best / records * 1e6


def main() -> int:
    catalog = default_catalog()
    serde = Serde(catalog)
    print(f"{'schema':<16} {'bytes':>5} {'validate':>9} {'encode*':>8} {'encode':>8} {'decode':>8} {'decode*':>8}  (us/record; * = without validation)")
    for spec in catalog.topics.values():
        record = serde.validate(spec.schema, spec.examples[0])
        data = serde.encode(spec.schema, record)
        print(
            f"{spec.schema:<16} {len(data):>5}"
            f" {_per_record_us(lambda: serde.validate(spec.schema, record)):>9.1f}"
            f" {_per_record_us(lambda: serde.encode(spec.schema, record, validate=False)):>8.1f}"
            f" {_per_record_us(lambda: serde.encode(spec.schema, record)):>8.1f}"
            f" {_per_record_us(lambda: serde.decode(data)):>8.1f}"
            f" {_per_record_us(lambda: serde.decode(data, validate=False)):>8.1f}"
        )
    example = serde.validate("CameraDetection", catalog.topic("whistle.raw.camera").examples[1])
    data = serde.encode("CameraDetection", example, release=1)
    print(f"CameraDetection v1 -> current (schema resolution): decode {_per_record_us(lambda: serde.decode(data)):.1f} us/record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
