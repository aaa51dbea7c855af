"""Which partitions a worker keeps in memory across a rebalance (`streams.pipeline.Ownership`)."""
from __future__ import annotations

from streams.pipeline import Ownership


def test_a_worker_keeps_what_it_is_assigned_again_while_the_changelog_ends_where_it_left_it():
    ownership = Ownership()
    for partition in range(6):
        ownership.read_back(partition, 100 + partition)
    ownership.wrote(1, 200)
    ownership.wrote(1, 150)  # reports of one flush in any order: the highest offset counts
    ends = {p: 100 + p for p in range(6)} | {1: 201}
    # a second worker joined and took 3, 4, 5
    assert ownership.released(set(range(6)), {0, 1, 2}, ends) == {3, 4, 5}
    # it left: 3, 4, 5 come back; they are not held any more, so they are read back afresh (not released twice)
    assert ownership.released({0, 1, 2}, set(range(6)), ends) == set()


def test_a_partition_whose_changelog_moved_meanwhile_is_released():
    ownership = Ownership()
    ownership.read_back(2, 40)
    ownership.read_back(3, 40)
    # another member owned 2 in between (this worker's session expired) and wrote a case's new state
    assert ownership.released({2, 3}, {2, 3}, {2: 41, 3: 40}) == {2}
    ownership.read_back(2, 41)
    assert ownership.released({2, 3}, {2, 3}, {2: 41, 3: 40}) == set()  # once read back, kept again


def test_a_partition_held_without_a_known_end_is_released():
    assert Ownership().released({2}, {2}, {2: 0}) == {2}  # neither written nor read back by this worker
    ownership = Ownership()
    ownership.read_back(4, 7)
    assert ownership.released({4}, {4}, {}) == {4}  # its end could not be asked
