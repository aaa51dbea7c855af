"""The case id, built and read here only: `{partition key}-{yyyymmdd UTC}-{sha256(report id)[:10]}`.

Deterministic, so replaying the log re-derives the same id, and producers of handling actions (the
simulator, the app) can name the case from its first report alone. It starts with the case's
partition key (street, or district desk) so that an action naming the case is routed to its partition.
"""
from __future__ import annotations

import hashlib

from streams.domain.enrich import case_partition_key
from streams.domain.model import EnrichedReport
from whistle.ground.errors import ContractError
from whistle.ground.times import UTC


def case_id_for(enriched: EnrichedReport) -> str:
    """The id of the case `enriched` opens when it is the first report of its incident."""
    report = enriched.report
    digest = hashlib.sha256(report.report_id.encode("utf-8")).hexdigest()[:10]
    return f"{case_partition_key(enriched)}-{report.occurred_at.astimezone(UTC):%Y%m%d}-{digest}"


def partition_key_of_case(case_id: str) -> str:
    """The case-stream key of a case, read from its id."""
    head, _, _ = case_id.rpartition("-")
    key, _, day = head.rpartition("-")
    if not key or len(day) != 8 or not day.isdigit():
        raise ContractError(f"case id {case_id!r} is not of the form <street>-<yyyymmdd>-<digest>", field="case_id")
    return key
