"""The serializer: records <-> bytes on Whistle topics, and domain objects <-> records.

Wire format (the first bytes say which; `decode` reads both):
- Avro single-object encoding, the default: 0xC3 0x01, the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's Parsing Canonical Form, the Avro body. Any consumer finds the
  writer schema among the current and released schema files by fingerprint, without a registry server,
  and reads it into the current schema by Avro schema resolution, so old data keeps decoding.
- Confluent framing when a Schema Registry is configured: 0x00, the 4-byte big-endian schema id, the body.

Records are dicts in *Python form* (see `schemas.validation`): aware UTC datetimes, enums as strings,
a union of records as a (full name, dict) tuple. Input from outside goes through `validate` (every
type and rule, JSON form accepted); `encode` and `decode` check the value rules (ranges, non-empty
ids, categories, aware times) while the Avro codec (`schemas.codec`) enforces the types. Domain objects (frozen dataclasses) become records only here:
`to_record` / `from_record` convert generically (enums, datetimes, tuples, nested dataclasses);
`EnrichedReport` is flattened (report fields as they are, location fields prefixed `location_`).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from io import BytesIO
from pathlib import Path
from typing import Any, NamedTuple

from fastavro import schemaless_reader

from schemas.catalog import NAMESPACE, Catalog, SchemaVersion, default_catalog, schema_version
from schemas.codec import Codec
from schemas.registry import SchemaRegistry, registry_from_settings
from schemas.validation import RecordValidator
from streams.domain.model import EnrichedReport
from whistle.ground.errors import ConfigError, ContractError, DecodeError, ValidationError
from whistle.ground.settings import Settings

SINGLE_OBJECT_MARKER = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_SINGLE_OBJECT_HEADER_LEN = 10
_CONFLUENT_HEADER_LEN = 5


class Decoded(NamedTuple):
    schema: str  # short name of the current schema the record was read into
    record: dict[str, Any]
    writer: SchemaVersion  # the schema the producer wrote with (current or a released version)


class Serde:
    """Encodes and decodes the records of every schema in the catalog; build once, share freely."""

    def __init__(self, catalog: Catalog | None = None, registry: SchemaRegistry | None = None) -> None:
        self.catalog = catalog or default_catalog()
        self.registry = registry
        vocabularies = self.catalog.vocabularies()
        self._validators = {name: RecordValidator(v.definition, vocabularies) for name, v in self.catalog.schemas.items()}
        self._current = {v.full_name: v for v in self.catalog.schemas.values()}
        self._headers: dict[bytes, bytes] = {}  # writer fingerprint -> wire header
        self._writers_by_id: dict[int, SchemaVersion] = {}
        self._codecs: dict[bytes, Codec] = {}  # writer fingerprint -> its codec, compiled when first used

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Catalog | None = None) -> Serde:
        catalog = catalog or default_catalog()
        return cls(catalog, registry_from_settings(settings, catalog))

    def validate(self, schema: str, record: Any) -> dict[str, Any]:
        """Input from outside (JSON or Python form) checked in full and returned in Python form,
        or ValidationError naming every bad field and why."""
        return self._validator(schema).validate(record)

    def _validator(self, schema: str) -> RecordValidator:
        return self._validators.get(schema) or self._validators[self.catalog.schema(schema).name]  # ConfigError if unknown

    def encode(self, schema: str, record: Mapping[str, Any], *, validate: bool = True, release: int | None = None) -> bytes:
        """Bytes for Kafka from a record in Python form (from `validate`, `to_record` or `decode`).

        Value rules are checked unless `validate=False` (for a record `validate` has just returned);
        the codec enforces the types. `release` writes with an older released version of the schema:
        during a rolling upgrade, producers keep writing what the not-yet-upgraded readers know.
        """
        if validate:
            self._validator(schema).check(record)
        writer = self.catalog.schema(schema) if release is None else self.catalog.release(schema, release)
        header = self._headers.get(writer.fingerprint) or self._header(writer)
        try:
            body = self._codec(writer).write(record)
        except Exception as exc:  # fastavro raises assorted types for a record that does not fit
            raise ValidationError(f"{schema} record does not fit its schema: {exc}", schema=schema) from exc
        return header + body

    def decode(self, data: bytes | None, *, expect: str | None = None, validate: bool = True) -> Decoded:
        """Read bytes in either framing into the current schema, checking value rules unless `validate=False`.

        DecodeError: not a readable record (framing, unknown schema, corrupt body, wrong record type);
        ValidationError: a readable record whose values break the rules (e.g. confidence 1.7).
        """
        writer, offset = self._writer_of(data)
        assert data is not None  # _writer_of refuses an empty value
        reader = self._current.get(writer.full_name)
        if reader is None:
            raise DecodeError(f"record type {writer.full_name} has no current schema in schemas/avro", schema=writer.full_name)
        if expect is not None and reader.name != expect:
            raise DecodeError(f"expected a {expect} record, got {reader.name}", schema=reader.name)
        buffer = BytesIO(data)
        buffer.seek(offset)
        try:
            if writer is reader:
                record = typing.cast(dict[str, Any], self._codec(writer).read(buffer))  # a record schema reads into a dict
            else:  # schema resolution (a released or foreign writer): fastavro's
                record = typing.cast(dict[str, Any], schemaless_reader(buffer, writer.parsed, reader.parsed, True, True))
        except Exception as exc:  # truncated or corrupt bodies surface as assorted fastavro/EOF errors
            reason = _MEMORY_ADDRESS.sub("", str(exc))  # "… from <_io.BytesIO object at 0x7f…>": the same bytes, the same dead letter
            raise DecodeError(f"{writer.name} body does not decode: {type(exc).__name__}: {reason}", schema=writer.name) from exc
        if buffer.tell() != len(data):
            raise DecodeError(f"{len(data) - buffer.tell()} bytes left after the {writer.name} body", schema=writer.name)
        if validate:
            self._validators[reader.name].check(record)
        return Decoded(reader.name, record, writer)

    def _writer_of(self, data: bytes | None) -> tuple[SchemaVersion, int]:
        if not data:
            raise DecodeError("empty value: not a Whistle record")
        if data[:2] == SINGLE_OBJECT_MARKER:
            if len(data) < _SINGLE_OBJECT_HEADER_LEN:
                raise DecodeError(f"single-object header cut short ({len(data)} bytes)")
            fingerprint = bytes(data[2:_SINGLE_OBJECT_HEADER_LEN])
            writer = self.catalog.by_fingerprint.get(fingerprint)
            if writer is None:
                raise DecodeError(f"unknown schema fingerprint {fingerprint.hex()}: written with a schema not in schemas/avro", fingerprint=fingerprint.hex())
            return writer, _SINGLE_OBJECT_HEADER_LEN
        if data[0] == CONFLUENT_MAGIC and len(data) >= _CONFLUENT_HEADER_LEN:
            if self.registry is None:
                raise DecodeError("Confluent-framed record, but no schema registry is configured (WHISTLE_KAFKA_SCHEMA_REGISTRY_URL)")
            schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_LEN], "big")
            return self._writer_for_id(schema_id), _CONFLUENT_HEADER_LEN
        raise DecodeError(f"unknown framing: first bytes {bytes(data[:2]).hex()} (expected c301 single-object or 00 Confluent)")

    def _writer_for_id(self, schema_id: int) -> SchemaVersion:
        writer = self._writers_by_id.get(schema_id)
        if writer is None:
            assert self.registry is not None  # only Confluent framing, read with a registry, has schema ids
            definition = self.registry.lookup(schema_id)
            try:
                foreign = schema_version(definition, Path(f"registry-id-{schema_id}"))
            except ConfigError as exc:
                raise DecodeError(f"schema id {schema_id} from the registry is not a usable Avro schema: {exc.message}", schema_id=schema_id) from exc
            writer = self.catalog.by_fingerprint.get(foreign.fingerprint, foreign)
            self._writers_by_id[schema_id] = writer
        return writer

    def _codec(self, version: SchemaVersion) -> Codec:
        codec = self._codecs.get(version.fingerprint)
        if codec is None:
            codec = self._codecs[version.fingerprint] = Codec(version.definition, version.parsed)
        return codec

    def _header(self, writer: SchemaVersion) -> bytes:
        if self.registry is None:
            header = SINGLE_OBJECT_MARKER + writer.fingerprint
        else:
            header = bytes([CONFLUENT_MAGIC]) + self.registry.register(writer.full_name, writer.definition).to_bytes(4, "big")
        self._headers[writer.fingerprint] = header
        return header


# ---------------------------------------------------------------------------------------------
# Domain objects <-> records

_FLAT_LAYOUTS: dict[type, dict[str, str]] = {
    # EnrichedReport travels flat: one row per report for every consumer, no nested records.
    EnrichedReport: {"report": "", "location": "location_"},
}


class _FieldPlan(NamedTuple):
    name: str
    flat_prefix: str | None  # set: the nested dataclass's fields are inlined with this prefix
    nested: type | None
    to_value: Callable[[Any], Any]
    from_value: Callable[[Any], Any]


_MEMORY_ADDRESS = re.compile(r" (?:from |of )?<[^<>]* at 0x[0-9a-f]+>")


def record_name(cls: type) -> str:
    """Full Avro name of a domain class's record type (class name == record name)."""
    return f"{NAMESPACE}.{cls.__name__}"


def to_record(obj: Any) -> dict[str, Any]:
    """A frozen dataclass as a record in Python form."""
    out: dict[str, Any] = {}
    _write(obj, out, "")
    return out


def to_branch(obj: Any) -> tuple[str, dict[str, Any]]:
    """A domain object as the value of a union-of-records field (e.g. an envelope's `event`)."""
    return record_name(type(obj)), to_record(obj)


def from_record(cls: type, record: Mapping[str, Any]) -> Any:
    """A decoded record as an instance of the frozen dataclass `cls`."""
    return _read(cls, record, "")


def _write(obj: Any, out: dict[str, Any], prefix: str) -> None:
    cls: type = type(obj)
    for plan in _plan(cls):
        value = getattr(obj, plan.name)
        if plan.flat_prefix is not None:
            _write(value, out, prefix + plan.flat_prefix)
        else:
            out[prefix + plan.name] = plan.to_value(value)


def _read(cls: type, record: Mapping[str, Any], prefix: str) -> Any:
    values = {}
    for plan in _plan(cls):
        if plan.flat_prefix is not None:
            assert plan.nested is not None  # a flattened field always names its nested dataclass
            values[plan.name] = _read(plan.nested, record, prefix + plan.flat_prefix)
        elif prefix + plan.name in record:
            values[plan.name] = plan.from_value(record[prefix + plan.name])
        elif not _has_default(cls, plan.name):
            raise ContractError(f"record has no field {prefix + plan.name} for {cls.__name__}.{plan.name}", field=prefix + plan.name)
    return cls(**values)


@functools.cache
def _has_default(cls: type, name: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


@functools.cache
def _plan(cls: type) -> tuple[_FieldPlan, ...]:
    if not dataclasses.is_dataclass(cls):
        raise ContractError(f"{cls.__name__} is not a dataclass; only domain dataclasses convert to records", field=cls.__name__)
    hints = typing.get_type_hints(cls)
    layout = _FLAT_LAYOUTS.get(cls, {})
    plans = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if f.name in layout:
            plans.append(_FieldPlan(f.name, layout[f.name], hint, _identity, _identity))
        else:
            plans.append(_FieldPlan(f.name, None, None, _to_converter(hint), _from_converter(hint)))
    return tuple(plans)


def _identity(value: Any) -> Any:
    return value


def _optional_inner(hint: Any) -> Any | None:
    """X for `X | None`, else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def _to_converter(hint: Any) -> Callable[[Any], Any]:
    inner = _optional_inner(hint)
    if inner is not None:
        convert = _to_converter(inner)
        return _identity if convert is _identity else (lambda v: None if v is None else convert(v))
    if isinstance(hint, type) and issubclass(hint, Enum):
        return lambda v: v.value if isinstance(v, Enum) else v  # a plain string of the vocabulary is as good
    if dataclasses.is_dataclass(hint):
        return to_record
    if typing.get_origin(hint) is tuple:
        convert = _to_converter(typing.get_args(hint)[0])
        return list if convert is _identity else (lambda v: [convert(i) for i in v])
    return _identity


def _from_converter(hint: Any) -> Callable[[Any], Any]:
    inner = _optional_inner(hint)
    if inner is not None:
        convert = _from_converter(inner)
        return _identity if convert is _identity else (lambda v: None if v is None else convert(v))
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a type hint is a class, never a dataclass instance
        return functools.partial(from_record, hint)
    if typing.get_origin(hint) is tuple:
        convert = _from_converter(typing.get_args(hint)[0])
        return tuple if convert is _identity else (lambda v: tuple(convert(i) for i in v))
    return _identity
