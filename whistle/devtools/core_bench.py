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

from infra.topics import partitions_of
from schemas.serde import Serde
from streams.domain.calendar import load_calendar
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import DistrictReference, load_reference
from streams.domain.sla import load_policies
from streams.domain.trusted_time import SkewBounds
from streams.pipeline import CaseProcessor, Ingestor, Output, Senders, StateWrite, partition_for_key
from whistle.devtools.bench.events import SIM_START, Message, encode_event, generate_events
from whistle.devtools.bench.options import BenchOptions
from whistle.devtools.feed import Signers
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics
from whistle.ground.settings import Settings

NOW = datetime(2026, 12, 1, tzinfo=UTC)  # the fixed `now` of every run (dead letters' failed_at)
BATCH = 1000  # records the worker takes at once: state is encoded once per key per batch, as the worker does


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
    topics = Topics()
    serde = Serde.from_settings(settings)
    partitions = partitions_of(topics.inbox)
    ingestor = Ingestor(serde, reference, PersonalDataHasher(settings.pii_hmac_key), topics, Senders.from_settings(settings, reference),
                        SkewBounds.of(settings.time))
    cases = CaseProcessor(serde, reference, load_policies(), load_calendar(), topics, partitions)
    topic_of = {"camera": topics.camera, "hotline": topics.hotline, "app": topics.app}
    produced: list[Output] = []
    written: list[StateWrite] = []
    if profile is not None:
        profile.enable()
    began, began_cpu = time.perf_counter(), time.process_time()
    routed = [ingestor.process(Position(topic_of[m.source], 0, n), m.key, m.value, NOW, headers=m.headers) for n, m in enumerate(batch)]
    ingested, ingested_cpu = time.perf_counter(), time.process_time()
    offsets = [0] * partitions
    latest: dict[tuple[int, str], StateWrite] = {}
    for n, out in enumerate(routed, 1):
        if out.topic != topics.inbox:
            continue
        assert out.key is not None  # the ingest stage keys every case-stream record
        partition = partition_for_key(out.key.decode(), partitions)
        outputs, writes = cases.process(Position(topics.inbox, partition, offsets[partition]), out.key, out.value, NOW)
        offsets[partition] += 1
        produced += outputs
        written += writes
        latest.update(((write.partition, write.key), write) for write in writes)
        if n % BATCH == 0:
            _ = [write.value for write in latest.values()]
            latest.clear()
    _ = [write.value for write in latest.values()]
    done, done_cpu = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.disable()
    count, records = len(batch), sum(offsets)
    return {"events": count, "events_per_s": round(count / (done - began)), "ingest_us_per_event": round((ingested - began) / count * 1e6, 1),
            "cases_us_per_record": round((done - ingested) / max(1, records) * 1e6, 1),
            "cpu_ingest_us_per_event": round((ingested_cpu - began_cpu) / count * 1e6, 1),
            "cpu_cases_us_per_record": round((done_cpu - ingested_cpu) / max(1, records) * 1e6, 1), "inbox_records": records,
            "outputs": len(produced), "dead_letters": sum(o.topic == topics.deadletter for o in (*routed, *produced)),
            "state_writes": len(written), "digest": digest(routed, produced, written)}


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
