"""Avro bodies of one schema: written and read by cavro (compiled), with fastavro's output as the reference.

WHY: the Avro codec was about half of the pure pipeline's time with fastavro; cavro writes the same bytes and reads
the same records (checked on every record of the bench, `whistle.devtools.core_bench`) in about half the time.
fastavro stays the authority on what fits: a record cavro refuses (it is stricter, e.g. a bool for a long) is
written by fastavro, which writes it or raises as it always did. Reading with schema resolution (a writer schema
other than the reader's) stays with fastavro (`schemas.serde`, `streams.changelog`).
"""
from __future__ import annotations

from io import BytesIO
from typing import Any

import cavro
from fastavro import schemaless_writer

OPTIONS = cavro.DEFAULT_OPTIONS.replace(
    record_decodes_to_dict=True,
    allow_tuple_notation=True,  # a union's value may be written as (type name, value), as fastavro takes it
    # a union of several record types reads as (full name, record), as fastavro's return_record_name(_override)
    union_decodes_to=cavro.UnionDecodeOption.TYPE_TUPLE_IF_RECORD_AMBIGUOUS,
    naive_dt_assume_utc=True,  # as fastavro writes a naive datetime (value rules refuse one before it gets here)
)


class Codec:
    """One schema's body writer and reader."""

    __slots__ = ("parsed", "compiled")

    def __init__(self, definition: dict[str, Any], parsed: Any) -> None:
        self.parsed = parsed  # fastavro's parsed form of the same schema
        self.compiled = cavro.Schema(definition, options=OPTIONS)

    def write(self, record: Any) -> bytes:
        """The record's Avro body (fastavro's exceptions for a record that does not fit)."""
        try:
            return self.compiled.binary_encode(record)
        except Exception:  # cavro refuses it: fastavro decides, as before cavro
            buffer = BytesIO()
            schemaless_writer(buffer, self.parsed, record)
            return buffer.getvalue()

    def read(self, buffer: BytesIO) -> Any:
        """The record whose body starts at the buffer's position; the buffer is left just after it, so that the
        caller can refuse bytes left over."""
        return self.compiled.binary_read(cavro.FileReader(buffer))
