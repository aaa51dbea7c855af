"""Raw records go to ingest in Kafka's append order across partitions (`streams.ordering.AppendOrder`)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.ordering import AppendOrder

CAMERA, APP = ("raw.camera", 0), ("raw.app", 0)


LATER_MS = 10**13  # a wall clock long past every append time: no grace left to wait


class Merge(AppendOrder[str]):
    """The merge with the consumer's side played by a set: the partitions caught up with their high watermark."""

    def __init__(self, max_wait_s: float, max_queued: int, grace_ms: int, pause_at: int, resume_at: int) -> None:
        super().__init__(max_wait_s, max_queued, grace_ms, pause_at, resume_at)
        self.caught_up: set[tuple[str, int]] = set()

    def add(self, partition, offset, timestamp_ms, record, now_s=0.0):  # a record handed over: more may have been fetched behind it
        self.caught_up.discard(partition)
        super().add(partition, offset, timestamp_ms, record)

    def at_end(self, partition: tuple[str, int]) -> None:
        self.caught_up.add(partition)

    def ready(self, now_s, now_ms, caught_up=None, drained=True):
        return super().ready(now_s, now_ms, self.caught_up.__contains__, drained)


def order(*assigned: tuple[str, int], max_wait_s: float = 0.2, max_queued: int = 1000, grace_ms: int = 100, pause_at: int = 100,
          resume_at: int = 10) -> Merge:
    merge = Merge(max_wait_s, max_queued, grace_ms, pause_at, resume_at)
    merge.assign(assigned)
    return merge


def test_records_of_every_partition_go_in_append_time_order_ties_by_topic_partition_offset():
    merge = order(CAMERA, APP)
    merge.add(CAMERA, 0, 1000, "camera report", now_s=0.0)
    merge.add(CAMERA, 1, 1003, "camera later", now_s=0.0)
    merge.add(APP, 0, 1001, "app action", now_s=0.0)
    merge.add(APP, 1, 1003, "app same ms", now_s=0.0)
    merge.at_end(CAMERA)
    merge.at_end(APP)
    assert [r for _, _, r in merge.ready(now_s=0.0, now_ms=LATER_MS)] == ["camera report", "app action", "app same ms", "camera later"]
    assert (merge.queued(), merge.forced) == (0, 0)


def test_a_partition_with_records_in_flight_holds_the_others_back_for_a_bounded_time():
    merge = order(CAMERA, APP)
    merge.add(APP, 0, 2000, "action", now_s=10.0)  # the camera partition is not caught up yet
    assert merge.ready(now_s=10.1, now_ms=LATER_MS) == []
    merge.add(CAMERA, 0, 1999, "report", now_s=10.15)  # ... and its record was earlier
    assert [r for _, _, r in merge.ready(now_s=10.15, now_ms=LATER_MS)] == ["report"]  # the camera queue is empty again: the action waits
    assert merge.ready(now_s=10.3, now_ms=LATER_MS) == []  # the camera partition went in flight again at 10.15: a new wait
    assert [r for _, _, r in merge.ready(now_s=10.36, now_ms=LATER_MS)] == ["action"]  # waited max_wait_s: it goes anyway
    assert merge.forced == 1 and "whistle_arrival_order_forced_total 1" in merge.metrics()


def test_the_wait_counts_only_while_the_consumer_has_no_more_records_at_hand():
    """Records the consumer already holds are not in flight: a worker busy with a big batch forces nothing."""
    merge = order(CAMERA, APP)
    merge.add(APP, 0, 2000, "action", now_s=0.0)
    assert merge.ready(now_s=5.0, now_ms=LATER_MS, drained=False) == []  # seconds later, but the consumer had more at hand
    assert merge.ready(now_s=5.1, now_ms=LATER_MS) == []  # drained: the wait starts now
    merge.add(CAMERA, 0, 1999, "report", now_s=5.2)
    assert [r for _, _, r in merge.ready(now_s=5.2, now_ms=LATER_MS)] == ["report"]
    assert merge.ready(now_s=5.25, now_ms=LATER_MS) == []  # the camera partition is in flight again: a new wait
    assert [r for _, _, r in merge.ready(now_s=5.46, now_ms=LATER_MS)] == ["action"] and merge.forced == 1


def test_a_caught_up_partition_holds_nothing_back():
    merge = order(CAMERA, APP)
    merge.add(APP, 0, 2000, "action", now_s=0.0)
    merge.at_end(CAMERA)
    assert [r for _, _, r in merge.ready(now_s=0.0, now_ms=LATER_MS)] == ["action"]
    merge.add(CAMERA, 0, 2500, "new camera record", now_s=0.0)  # it has records again: no longer caught up
    merge.add(APP, 1, 2600, "next action", now_s=0.0)
    assert [r for _, _, r in merge.ready(now_s=0.0, now_ms=LATER_MS)] == ["new camera record"]  # camera may bring earlier ones than 2600 now


def test_a_record_appended_a_moment_ago_waits_for_a_caught_up_partition():
    """Its neighbour's earlier record may still be on its way from the broker."""
    merge = order(CAMERA, APP)
    merge.at_end(CAMERA)
    merge.add(APP, 0, 5000, "action", now_s=0.0)
    assert merge.ready(now_s=0.0, now_ms=5050) == []
    merge.add(CAMERA, 0, 4990, "report", now_s=0.0)  # it came
    assert [r for _, _, r in merge.ready(now_s=0.0, now_ms=5060)] == ["report"]
    merge.at_end(CAMERA)
    assert [r for _, _, r in merge.ready(now_s=0.0, now_ms=5100)] == ["action"]  # grace over
    assert merge.forced == 0


def test_too_many_queued_records_release_the_head_and_a_revoked_partition_holds_nothing():
    merge = order(CAMERA, APP, max_queued=3)
    for n in range(3):
        merge.add(APP, n, 3000 + n, f"action {n}", now_s=0.0)
    assert [r for _, _, r in merge.ready(now_s=0.0, now_ms=LATER_MS)] == ["action 0"]  # at the limit: one goes, the rest wait for the camera
    merge.add(CAMERA, 0, 3100, "camera", now_s=0.0)
    merge.revoke([CAMERA])  # given away: its queued record is the next owner's
    assert merge.queued() == 2
    assert [(p, o) for p, o, _ in merge.ready(now_s=0.0, now_ms=LATER_MS)] == [(APP, 1), (APP, 2)]


def test_a_partition_fetched_ahead_is_paused_until_its_queue_drains_and_resumed_when_given_away():
    merge = order(CAMERA, APP, pause_at=3, resume_at=1)
    for n in range(3):
        merge.add(CAMERA, n, 4000 + n, f"camera {n}", now_s=0.0)  # fetched ahead of the app partition, which has nothing yet
    assert merge.ready(now_s=0.0, now_ms=LATER_MS) == [] and merge.flow() == ([CAMERA], [])
    assert merge.flow() == ([], [])  # paused once
    merge.add(APP, 0, 4001, "action", now_s=0.0)
    merge.at_end(APP)
    assert [r for _, _, r in merge.ready(now_s=0.0, now_ms=LATER_MS)] == ["camera 0", "action", "camera 1", "camera 2"]
    assert merge.flow() == ([], [CAMERA])  # drained: fetch it again
    for n in range(3, 6):
        merge.add(CAMERA, n, 5000 + n, f"camera {n}", now_s=0.0)
    assert merge.flow() == ([CAMERA], [])
    assert merge.revoke([CAMERA, APP]) == [CAMERA]  # the consumer would keep it paused across the rebalance


def test_without_flow_control_a_partition_fetched_ahead_forces_the_order():
    """The negative control of the test above: with nothing paused, the queue keeps growing until heads go out of order."""
    merge = order(CAMERA, APP, max_queued=5, pause_at=10**9)
    for n in range(6):
        merge.add(CAMERA, n, 4000 + n, f"camera {n}", now_s=0.0)
    assert merge.flow() == ([], [])
    out = [r for _, _, r in merge.ready(now_s=0.0, now_ms=LATER_MS)]
    merge.add(APP, 0, 4001, "action", now_s=0.0)
    merge.at_end(APP)
    out += [r for _, _, r in merge.ready(now_s=0.0, now_ms=LATER_MS)]
    assert merge.forced == 2 and out.index("action") > out.index("camera 1")


@given(st.lists(st.tuples(st.sampled_from([CAMERA, APP, ("raw.hotline", 3)]), st.integers(0, 50)), max_size=60),
       st.lists(st.integers(1, 7), min_size=1, max_size=20))
def test_however_the_fetches_interleave_partitions_the_order_is_the_logs(records, chunks):
    """Whatever chunks the consumer hands over, once every partition is caught up the sequence is the one
    anyone gets from the log: (append time, topic, partition, offset)."""
    partitions = {CAMERA, APP, ("raw.hotline", 3)}
    logs: dict = {p: [] for p in partitions}
    for partition, gap in records:
        previous = logs[partition][-1][1] if logs[partition] else 0
        logs[partition].append((len(logs[partition]), previous + gap))  # (offset, append time), times never go back in a partition
    merge, out = order(*partitions, max_wait_s=1e9, max_queued=10_000), []
    cursors, turn = dict.fromkeys(partitions, 0), 0
    while any(cursors[p] < len(logs[p]) for p in partitions):
        for partition in sorted(partitions):
            size = chunks[turn % len(chunks)]
            turn += 1
            for offset, at in logs[partition][cursors[partition]:cursors[partition] + size]:
                merge.add(partition, offset, at, (partition, offset), now_s=0.0)
            cursors[partition] = min(len(logs[partition]), cursors[partition] + size)
            if cursors[partition] == len(logs[partition]):
                merge.at_end(partition)
            out += [r for _, _, r in merge.ready(now_s=0.0, now_ms=LATER_MS)]
    expected = sorted(((at, p, offset) for p in partitions for offset, at in logs[p]))
    assert out == [(p, offset) for _, p, offset in expected]
