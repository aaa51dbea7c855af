"""The anchored digest, pure: what `audit verify` finds when the store no longer matches the anchors (sinks/anchor.py)."""
from __future__ import annotations

import hashlib

from sinks.anchor import GENESIS, Anchor, advance, anchor_findings, anchors_root, latest_anchors
from sinks.audit import BROKEN, NOTED

TOPIC = "whistle.cases.events"


def entries(count: int) -> list[tuple[int, str]]:
    return [(offset, hashlib.sha256(f"event {offset}".encode()).hexdigest()) for offset in range(count)]


def anchors_over(stored: list[tuple[int, str]], every: int, key: bytes | None = None) -> list[Anchor]:
    """Anchors every `every` records, computed as the anchorer does."""
    digest, out = GENESIS, []
    for i, (offset, entry) in enumerate(stored, 1):
        digest = advance(digest, offset, bytes.fromhex(entry), key)
        if i % every == 0 or i == len(stored):
            out.append(Anchor(TOPIC, 0, 0, offset, i, digest.hex(), key is not None, 1_000 + i))
    return out


def check(anchors, stored, committed=10**9, key=None):
    return anchor_findings(anchors, lambda partition: stored, {0: committed}, key)


def test_a_store_that_matches_its_anchors_has_no_findings():
    stored = entries(50)
    assert check(anchors_over(stored, 10), stored) == []


def test_a_consistently_rewritten_event_breaks_the_first_anchor_after_it_and_names_the_offsets_between():
    stored = entries(50)
    anchors = anchors_over(stored, 10)
    rewritten = [(o, hashlib.sha256(b"re-sealed").hexdigest() if o == 23 else e) for o, e in stored]
    (finding,) = check(anchors, rewritten)
    assert finding.status == BROKEN and (finding.first, finding.last) == (20, 29) and "changed" in finding.detail


def test_a_deleted_last_event_is_found():
    stored = entries(50)
    (finding,) = check(anchors_over(stored, 10), stored[:-1])
    assert finding.status == BROKEN and "offset 49 is anchored" in finding.detail and "not in the store" in finding.detail


def test_anchors_past_the_sinks_commit_wait_for_it():
    stored = entries(50)
    findings = check(anchors_over(stored, 10), stored[:35], committed=35)
    assert [(f.status, f.records) for f in findings] == [(NOTED, 2)]  # the anchors through 39 and 49 wait; the first three hold


def test_keyed_anchors_need_the_key_and_verify_with_it():
    stored = entries(20)
    keyed = anchors_over(stored, 10, key=b"outside the store")
    assert [f.status for f in check(keyed, stored)] == [NOTED]
    assert check(keyed, stored, key=b"outside the store") == []
    assert check(keyed, stored, key=b"a guess")[0].status == BROKEN


def test_a_redelivered_copy_of_an_offset_counts_once_and_disagreeing_anchors_are_broken():
    stored = entries(20)
    anchors = anchors_over(stored, 10)
    assert check(anchors, sorted(stored + [stored[5]])) == []
    forged = Anchor(TOPIC, 0, 0, 9, 10, "f" * 64, False, 5)
    assert any(f.status == BROKEN and "disagree" in f.detail for f in check([*anchors, forged], stored))


def test_the_exported_root_covers_the_latest_anchor_of_each_partition():
    stored = entries(30)
    anchors = anchors_over(stored, 10)
    other = Anchor(TOPIC, 1, 0, 4, 5, "a" * 64, False, 2_000)
    latest = latest_anchors([*anchors, other])
    assert [(a.partition, a.last_offset) for a in latest] == [(0, 29), (1, 4)]
    assert [(a.partition, a.last_offset) for a in latest_anchors([*anchors, other], before_ms=1_021)] == [(0, 19)]
    assert anchors_root(latest) != anchors_root(latest_anchors(anchors))
