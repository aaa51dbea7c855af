"""Where a record was read, and the dead-letter envelope that carries a record no stage could process.

The envelope is the same for every stage (worker, sink, alert relay): the original key and value bytes
exactly as read, the topic/partition/offset they were read at, the failing stage and the error, as the
record's fields and again as Kafka-Connect-style headers. Encoding it is the serializer's job.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from whistle.ground.errors import WhistleError


@dataclass(frozen=True, slots=True)
class Position:
    """A record's place in Kafka."""

    topic: str
    partition: int
    offset: int


def as_whistle_error(error: BaseException) -> WhistleError:
    """Errors Whistle did not raise on purpose are wrapped, naming their class, so every dead letter has a stage."""
    if isinstance(error, WhistleError):
        return error
    return WhistleError(f"unexpected {type(error).__name__}: {error}")


def with_position(error: BaseException, where: Position) -> BaseException:
    """The error with the record's position attached (a WhistleError gains topic/partition/offset context)."""
    if isinstance(error, WhistleError):
        error.with_context(topic=where.topic, partition=where.partition, offset=where.offset)
    return error


def envelope(where: Position, key: bytes | None, value: bytes | None, error: BaseException,
             failed_at: datetime) -> tuple[dict[str, Any], tuple[tuple[str, bytes], ...]]:
    """The DeadLetter record's fields and its headers, for the record at `where` that failed with `error`."""
    failure = as_whistle_error(error)
    record = {
        "original_topic": where.topic, "original_partition": where.partition, "original_offset": where.offset,
        "original_key": key, "original_value": value, "stage": failure.stage, "error_class": type(failure).__name__,
        "error_message": str(failure), "field": failure.context.get("field"), "failed_at": failed_at,
    }
    headers = {"whistle.original.topic": where.topic, "whistle.original.partition": str(where.partition),
               "whistle.original.offset": str(where.offset), **failure.as_headers()}
    return record, tuple((k, v.encode("utf-8", "replace")) for k, v in headers.items())
