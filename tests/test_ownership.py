"""Which partitions a worker keeps in memory across a rebalance (`streams.pipeline.Ownership`)."""
from __future__ import annotations

from streams.pipeline import Ownership


def test_a_worker_keeps_what_it_owned_without_a_break_and_releases_what_moved():
    ownership = Ownership()
    assert ownership.rebalanced(set(), set(range(6)), 1) == set()
    assert ownership.rebalanced(set(range(6)), {0, 1, 2}, 2) == {3, 4, 5}  # a second worker joined: it took 3, 4, 5
    assert ownership.rebalanced({0, 1, 2}, set(range(6)), 3) == set()  # it left: 3, 4, 5 come back, not held, read afresh


def test_a_generation_passed_without_the_worker_releases_everything():
    ownership = Ownership()
    ownership.rebalanced(set(), set(range(6)), 4)
    # generation 5 went on without this worker (its session expired): another member may have advanced any partition
    assert ownership.rebalanced(set(range(6)), set(range(6)), 6) == set(range(6))
    assert ownership.rebalanced(set(range(6)), set(range(6)), 7) == set()  # from here on continuous again


def test_the_first_assignment_of_a_process_and_an_unknown_generation_keep_nothing():
    assert Ownership().rebalanced({2}, {2}, 9) == {2}  # held before any assignment this process saw
    ownership = Ownership()
    ownership.rebalanced(set(), {2}, 3)
    assert ownership.rebalanced({2}, {2}, -1) == {2}  # aiokafka's "no generation"
    assert ownership.rebalanced({2}, {2}, 0) == {2}
