"""The send loop: simulated events into the real pipeline, paced, with the case stream's clock.

Kept apart from the generator (`whistle.devtools.simulate`): the generator decides *what* happens and when
(event time); the feed decides how fast it is replayed and by which way in:
- `SdkWay`: the producer SDK (any channel);
- `GatewayWay`: the HTTP ingest gateway (camera webhooks, hotline tickets, Open311 for the app);
- `PublishWay`: JSON-lines files handed to `whistle publish` (its library function), chunk by chunk.

Order: events go out in event-time order; before switching to another way, the previous way is
drained (acknowledged by Kafka), so no channel overtakes another.

Pacing: event time advances at `speed` simulated seconds per wall second, but no wait between two
events is longer than `max_gap_s` (quiet nights pass quickly). The feed owns the pipeline's time:
a background thread writes clock ticks at the feed's current simulated time every `tick_s`, so
deadlines fire on the simulated timeline, without waiting in real time (trailing what was sent by a
couple of wall seconds, so a tick never overtakes a report still passing through ingestion).
"""
from __future__ import annotations

import hashlib
import secrets
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

import httpx
import orjson
import yaml
from rich.console import Console

from streams.domain.credentials import RecordSigner, derived_signer, issued_secret, load_credentials
from streams.domain.reference import load_reference
from streams.pipeline import Ingestor, Output
from whistle.devtools.simulate import SimEvent
from whistle.edges.sdk import Publisher
from whistle.ground.datafiles import read_entries
from whistle.ground.deadletter import Position
from whistle.ground.errors import ConfigError, DeliveryError, WhistleError
from whistle.ground.settings import PROJECT_ROOT, Secret, Settings

NAMESPACE = "org.whistle.v1"


def source_record(event: SimEvent) -> dict:
    """The record as its raw topic carries it: app events travel in the AppEvent envelope."""
    if event.source == "app":
        return {"event": (f"{NAMESPACE}.{event.record_type}", event.record)}
    return event.record


def json_line(event: SimEvent) -> bytes:
    """The record as one line of a `whistle publish` file (JSON form: a union names its branch)."""
    record = {"event": {event.record_type: event.record}} if event.source == "app" else event.record
    return orjson.dumps(record, option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE)


class Way(Protocol):
    def send(self, event: SimEvent) -> None: ...
    def drain(self) -> None: ...


class Signers:
    """Each simulated integrator's record signer, derived from the master key (dev tools stand in for every integrator)."""

    def __init__(self, settings: Settings) -> None:
        self.master = settings.record_signing_key.value
        self.credentials = load_credentials(settings.keys_file, load_reference())

    def __call__(self, integrator: str) -> RecordSigner:
        credential = self.credentials.by_integrator.get(integrator)
        if credential is None:
            raise ConfigError(f"the key file has no integrator {integrator!r} (the simulator's integrators: infra/gateway-keys.example.yaml)",
                              field="integrator")
        return derived_signer(self.master, credential)  # the secret's derivation is cached

    def headers(self, event: SimEvent, spec_topic: str, key: bytes | None, value: bytes | None) -> list[tuple[str, bytes]]:
        """The headers `event`'s integrator puts on its encoded record."""
        return self(event.integrator).headers(spec_topic, key, value)


EXAMPLE_KEY_FILE = PROJECT_ROOT / "infra" / "gateway-keys.example.yaml"


def write_dev_key_file(path: Path) -> dict[str, str]:
    """A key file with the example's integrators and scopes, each with a fresh random API key; returns integrator -> key
    (the file keeps only their SHA-256). The demo and tests stand in for every integrator with it."""
    entries = read_entries(EXAMPLE_KEY_FILE, "keys")
    keys = {entry["integrator"]: secrets.token_urlsafe(24) for entry in entries}
    for entry in entries:
        entry["sha256"] = hashlib.sha256(keys[entry["integrator"]].encode()).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"keys": entries}, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return keys


def settings_as(settings: Settings, integrator: str) -> Settings:
    """`settings` for a producer that is `integrator` (WHISTLE_INTEGRATOR and its issued secret), as `whistle publish` needs."""
    credential = load_credentials(settings.keys_file, load_reference()).by_integrator[integrator]
    return replace(settings, integrator=integrator, integrator_secret=Secret(issued_secret(settings.record_signing_key.value, credential)))


def ingest_event(ingestor: Ingestor, signers: Signers, where: Position, event: SimEvent, now: datetime,
                 arrived: datetime | None = None) -> Output:
    """A simulated event through the pure ingest stage, as its sender produces it: validated, encoded, signed."""
    spec = ingestor.serde.catalog.topic_for_source(event.source)
    key, value = event.key.encode(), ingestor.serde.encode(spec.schema, source_record(event))
    return ingestor.process(where, key, value, now, arrived, signers.headers(event, spec.name, key, value))


class SdkWay:
    """Publish with the SDK, each record signed as its integrator; `drain` waits for every acknowledgement."""

    def __init__(self, publisher: Publisher, signers: Signers) -> None:
        self.publisher, self.signers, self._pending = publisher, signers, []

    def send(self, event: SimEvent) -> None:
        self._pending.append(self.publisher.submit(event.source, source_record(event), signer=self.signers(event.integrator)))

    def drain(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result(timeout=60)


class GatewayWay:
    """POST to the HTTP gateway (camera detections and hotline tickets), with the integrator's API key."""

    PATHS = {"camera": "/v1/camera/detections", "hotline": "/v1/hotline/tickets"}

    def __init__(self, base_url: str, api_keys: Mapping[str, str]) -> None:
        self.client, self.api_keys = httpx.Client(base_url=base_url, timeout=30), api_keys

    def send(self, event: SimEvent) -> None:
        body = orjson.dumps(event.record, option=orjson.OPT_UTC_Z)
        answer = self.client.post(self.PATHS[event.source], content=body,
                                  headers={"Content-Type": "application/json", "X-API-Key": self.api_keys[event.integrator]})
        if answer.status_code != 202:
            raise DeliveryError(f"gateway answered {answer.status_code}: {answer.text[:200]}", source=event.source)

    def drain(self) -> None:
        pass


class PublishWay:
    """Collect records into JSON-lines files and publish each chunk with `whistle publish`'s own code."""

    def __init__(self, publish: Callable[[str, Path], int], source: str, chunk: int = 200) -> None:
        self.publish, self.source, self.chunk = publish, source, chunk
        self._lines: list[bytes] = []

    def send(self, event: SimEvent) -> None:
        self._lines.append(json_line(event))
        if len(self._lines) >= self.chunk:
            self.drain()

    def drain(self) -> None:
        if not self._lines:
            return
        with tempfile.NamedTemporaryFile("wb", suffix=f".{self.source}.jsonl", delete=False) as out:
            out.writelines(self._lines)
        self._lines = []
        try:
            if self.publish(self.source, Path(out.name)) != 0:
                raise DeliveryError(f"whistle publish rejected lines of {out.name}", source=self.source)
        finally:
            Path(out.name).unlink(missing_ok=True)


@dataclass
class FeedReport:
    sent: Counter = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None
    wall_s: float = 0.0


class SimulatedClock:
    """The pipeline's time during a feed: ticks from a thread, trailing what was sent by `lag_s` of wall time.

    Ticks go straight into the case stream, while reports still pass through the ingest stage; ticking
    at the simulated time of what was sent at least `lag_s` ago keeps a tick from overtaking them.
    """

    def __init__(self, write_ticks: Callable[[datetime], None], tick_s: float = 0.2, lag_s: float = 2.0) -> None:
        self.write_ticks, self.tick_s, self.lag_s = write_ticks, tick_s, lag_s
        self._sent: deque[tuple[float, datetime]] = deque()  # (wall time sent, simulated time), oldest first
        self.now: datetime | None = None  # the simulated time ticked last
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="whistle-feed-clock", daemon=True)
        self.error: BaseException | None = None

    def sent(self, at: datetime) -> None:
        """The feed has just sent an event of simulated time `at`."""
        self._sent.append((time.monotonic(), at))

    def __enter__(self) -> SimulatedClock:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            settled = time.monotonic() - self.lag_s
            while self._sent and self._sent[0][0] <= settled:
                at = self._sent.popleft()[1]
                self.now = at if self.now is None else max(self.now, at)
            if self.now is not None:
                try:
                    self.write_ticks(self.now)
                except WhistleError as exc:  # reported by feed(); the clock stops
                    self.error = exc
                    return


def feed(events: Iterable[SimEvent], ways: dict[str, Way], clock: SimulatedClock | None, *, speed: float = 600.0,
         max_gap_s: float = 0.5, console: Console | None = None, progress: Callable[[FeedReport], None] | None = None) -> FeedReport:
    """Send `events` (in event-time order) by the way of their channel, paced; returns what was sent."""
    report = FeedReport()
    started = time.monotonic()
    previous: datetime | None = None
    last_way: Way | None = None
    for event in events:
        if previous is not None:
            gap = (event.at - previous).total_seconds() / speed
            if gap > 0:
                time.sleep(min(gap, max_gap_s))
        previous = event.at
        if clock is not None and clock.error is not None:
            raise clock.error
        name = event.source if event.record_type != "HandlingAction" else "actions"
        if last_way is not None and last_way is not ways[name]:
            last_way.drain()  # keep event-time order across ways: what went before is in Kafka first
        last_way = ways[name]
        last_way.send(event)
        if clock is not None:
            clock.sent(event.at)
        report.sent[name] += 1
        report.first = report.first or event.at
        report.last = event.at
        if progress is not None and sum(report.sent.values()) % 100 == 0:
            progress(report)
    for way in ways.values():
        way.drain()
    report.wall_s = time.monotonic() - started
    return report


def write_channel_files(events: Iterable[SimEvent], folder: Path) -> Counter:
    """One JSON-lines file per channel and sender, `<channel>.<integrator>.jsonl` (handling actions travel on app),
    each ready for `whistle publish` run as that integrator (WHISTLE_INTEGRATOR, WHISTLE_INTEGRATOR_SECRET)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, BinaryIO] = {}
    counts: Counter = Counter()
    try:
        for event in events:
            name = f"{event.source}.{event.integrator}"
            out = files.get(name) or files.setdefault(name, (folder / f"{name}.jsonl").open("wb"))
            out.write(json_line(event))
            counts[name] += 1
    finally:
        for out in files.values():
            out.close()
    return counts
