"""Raw records go to ingest in Kafka's append order across partitions (`streams.ordering.AppendOrder`)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.ordering import AppendOrder

CAMERA, APP = ("raw.camera", 0), ("raw.app", 0)


def order(*assigned: tuple[str, int], max_wait_s: float = 0.2, max_queued: int = 1000) -> AppendOrder[str]:
    merge: AppendOrder[str] = AppendOrder(max_wait_s, max_queued)
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
    assert [r for _, _, r in merge.ready(now_s=0.0)] == ["camera report", "app action", "app same ms", "camera later"]
    assert merge.queued() == 0


def test_a_partition_with_records_in_flight_holds_the_others_back_for_a_bounded_time():
    merge = order(CAMERA, APP)
    merge.add(APP, 0, 2000, "action", now_s=10.0)  # the camera partition has not been read to its end yet
    assert merge.ready(now_s=10.1) == []
    merge.add(CAMERA, 0, 1999, "report", now_s=10.15)  # ... and its record was earlier
    assert [r for _, _, r in merge.ready(now_s=10.15)] == ["report"]  # the camera queue is empty again: the action waits
    assert [r for _, _, r in merge.ready(now_s=10.21)] == ["action"]  # waited max_wait_s: it goes anyway


def test_a_partition_read_to_its_end_holds_nothing_back():
    merge = order(CAMERA, APP)
    merge.add(APP, 0, 2000, "action", now_s=0.0)
    merge.at_end(CAMERA)
    assert [r for _, _, r in merge.ready(now_s=0.0)] == ["action"]
    merge.add(CAMERA, 0, 2500, "new camera record", now_s=0.0)  # it has records again: no longer at its end
    merge.add(APP, 1, 2600, "next action", now_s=0.0)
    assert [r for _, _, r in merge.ready(now_s=0.0)] == ["new camera record"]  # camera may bring earlier ones than 2600 now


def test_too_many_queued_records_release_the_head_and_a_revoked_partition_holds_nothing():
    merge = order(CAMERA, APP, max_queued=3)
    for n in range(3):
        merge.add(APP, n, 3000 + n, f"action {n}", now_s=0.0)
    assert [r for _, _, r in merge.ready(now_s=0.0)] == ["action 0"]  # at the limit: one goes, the rest wait for the camera
    merge.add(CAMERA, 0, 3100, "camera", now_s=0.0)
    merge.revoke([CAMERA])  # given away: its queued record is the next owner's
    assert merge.queued() == 2
    assert [(p, o) for p, o, _ in merge.ready(now_s=0.0)] == [(APP, 1), (APP, 2)]


@given(st.lists(st.tuples(st.sampled_from([CAMERA, APP, ("raw.hotline", 3)]), st.integers(0, 50)), max_size=60),
       st.lists(st.integers(1, 7), min_size=1, max_size=20))
def test_however_the_fetches_interleave_partitions_the_order_is_the_logs(records, chunks):
    """Whatever chunks the consumer hands over, once every partition is read to its end the sequence is the one
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
            out += [r for _, _, r in merge.ready(now_s=0.0)]
    expected = sorted(((at, p, offset) for p in partitions for offset, at in logs[p]))
    assert out == [(p, offset) for _, p, offset in expected]
