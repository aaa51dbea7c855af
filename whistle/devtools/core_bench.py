"""The pure pipeline core (`Ingestor`, then `CaseProcessor`) on the bench's events at a fixed `now`, with a digest of
everything it produced.

WHY: a change made to speed the core up must not change one byte of what it writes. The bench's in-process phase
runs at the wall clock's `now`, so two runs are not comparable byte for byte; here `now` is a constant, and the
SHA-256 over every output (topic, partition, key, value, headers) and every state write (partition, key, value),
in order, is the same before and after a change that keeps the outputs identical. The machine is shared: the CPU
time of this process (`cpu_*`) varies less than the wall-clock rates.

    python -m whistle.devtools.core_bench --events 50000 [--profile FILE] [--rounds 3]
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from schemas.serde import Serde
from streams.domain.reference import DistrictReference, load_reference
from streams.pipeline import Output, StateWrite
from whistle.devtools.bench.events import SIM_START, Message, encode_event, generate_events
from whistle.devtools.bench.inprocess import run_pure
from whistle.devtools.bench.options import BenchOptions
from whistle.devtools.feed import Signers
from whistle.ground.names import Topics
from whistle.ground.settings import Settings

NOW = datetime(2026, 12, 1, tzinfo=UTC)  # the fixed `now` of every run (dead letters' failed_at)


def settings_at(now: datetime) -> Settings:
    """Default settings, believing device times back to the simulated period as the bench does (a backfill)."""
    settings = Settings()
    behind_s = max(settings.time.device_behind_s, (now - SIM_START).total_seconds() + 30 * 86_400)
    return replace(settings, time=replace(settings.time, device_behind_s=behind_s))


def messages(settings: Settings, reference: DistrictReference, events: int) -> list[Message]:
    """The bench's first `events` simulated events, encoded and signed as the bench does."""
    serde, signers = Serde.from_settings(settings), Signers(settings)
    return [encode_event(serde, signers, event) for event in generate_events(reference, BenchOptions(events=events))]


def run(settings: Settings, reference: DistrictReference, batch: list[Message], profile: cProfile.Profile | None = None) -> dict[str, Any]:
    """Ingest then case-process `batch` at `NOW`; the rates, counts and the digest of everything produced."""
    if profile is not None:
        profile.enable()
    pure = run_pure(settings, reference, batch, NOW)
    if profile is not None:
        profile.disable()
    count, records, deadletter = len(batch), max(1, pure.inbox_records), Topics().deadletter
    return {"events": count, "events_per_s": round(count / (pure.ingest_s + pure.cases_s)),
            "ingest_us_per_event": round(pure.ingest_s / count * 1e6, 1), "cases_us_per_record": round(pure.cases_s / records * 1e6, 1),
            "cpu_ingest_us_per_event": round(pure.ingest_cpu_s / count * 1e6, 1), "cpu_cases_us_per_record": round(pure.cases_cpu_s / records * 1e6, 1),
            "inbox_records": pure.inbox_records, "outputs": len(pure.produced),
            "dead_letters": sum(o.topic == deadletter for o in (*pure.routed, *pure.produced)),
            "state_writes": len(pure.written), "digest": digest(pure.routed, pure.produced, pure.written)}


def digest(routed: list[Output], produced: list[Output], written: list[StateWrite]) -> str:
    """SHA-256 over every ingest output, every case output and every state write, in order, each field length-prefixed."""
    sha = hashlib.sha256()

    def put(data: bytes | None) -> None:
        sha.update(b"\xff" if data is None else len(data).to_bytes(4, "big") + data)

    for output in (*routed, *produced):
        put(output.topic.encode())
        put(None if output.partition is None else str(output.partition).encode())
        put(output.key)
        put(output.value)
        for name, value in output.headers:
            put(name.encode())
            put(value)
        put(b"end")
    for write in written:
        put(str(write.partition).encode())
        put(write.key.encode())
        put(write.value)
    return sha.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=1, help="runs over the same events (the digest must not change)")
    parser.add_argument("--profile", help="write a cProfile of the last round here")
    args = parser.parse_args()
    settings, reference = settings_at(NOW), load_reference()
    started = time.perf_counter()
    batch = messages(settings, reference, args.events)
    print(f"generated {len(batch):,} events in {time.perf_counter() - started:.1f} s")
    for round_ in range(args.rounds):
        profile = cProfile.Profile() if args.profile and round_ == args.rounds - 1 else None
        print(run(settings, reference, batch, profile))
        if profile is not None:
            profile.dump_stats(args.profile)


if __name__ == "__main__":
    main()
