"""The rebalance phase's probes: one accept action per case-stream partition every `interval_s`, and how
long each waited for its acceptance (see `whistle.devtools.bench.phases`, the rebalance phase)."""
from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

from streams.domain.credentials import RecordSigner
from whistle.devtools.bench.measure import CaseEventWatch
from whistle.edges.sdk import Delivery, Publisher
from whistle.ground.errors import StackError


class ProbeFeed:
    """Sends the probes and follows their acceptances, in one thread: `step` between checks of a wait."""

    def __init__(self, publisher: Publisher, signer: RecordSigner, probes: dict[int, list[dict[str, Any]]], watcher: CaseEventWatch,
                 action_schema: str, interval_s: float) -> None:
        self.publisher, self.signer, self.watcher, self.action_schema, self.interval_s = publisher, signer, watcher, action_schema, interval_s
        self.queues = {partition: list(reversed(found)) for partition, found in probes.items()}
        self.sent: dict[str, tuple[int, float]] = {}  # probe case -> (partition, wall time sent)
        self.deliveries: list[Future[Delivery]] = []
        self.feeding, self._next_at = True, 0.0

    def step(self) -> None:
        now = time.time()
        if self.feeding and now >= self._next_at:
            for partition, queue in self.queues.items():
                if not queue:
                    raise StackError(f"the rebalance phase used up the dispatched cases of partition {partition}: raise --open-cases")
                probe = queue.pop()
                self.deliveries.append(self.publisher.submit("app", {"event": (self.action_schema, probe)}, signer=self.signer))
                self.sent[probe["case_id"]] = (partition, now)
                self.watcher.expect({probe["case_id"]})
            self._next_at = now + self.interval_s
        self.watcher.poll(lambda done: None)

    def answered_before(self, moment: float) -> bool:
        """Every probe sent before `moment` has been accepted."""
        return all(case not in self.watcher.waiting for case, (_, at) in self.sent.items() if at < moment)

    def check(self) -> int:
        """Every probe delivered and accepted exactly once (identical redeliveries share their event id); returns their number."""
        for delivery in self.deliveries:
            delivery.result(timeout=60)
        wrong = sorted(case for case in self.sent if len(self.watcher.copies.get(case, ())) != 1)
        if wrong:
            raise StackError(f"{len(wrong)} probe cases were not accepted exactly once, e.g. {wrong[0]}: {self.watcher.copies.get(wrong[0])}")
        return len(self.sent)


def waits_by_partition(sent: dict[str, tuple[int, float]], accepted_ms: dict[str, int], start: float, end: float) -> dict[int, float]:
    """Partition -> the longest a probe sent in [start, end) waited for its acceptance (s): the partition's processing pause
    in that window, plus one probe's normal latency."""
    waits: dict[int, float] = {}
    for case, (partition, at) in sent.items():
        if start <= at < end:
            waits[partition] = max(waits.get(partition, 0.0), accepted_ms[case] / 1000 - at)
    return {partition: round(wait, 2) for partition, wait in sorted(waits.items())}
