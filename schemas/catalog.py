"""The schema catalog: every Avro schema, its released versions, the topic specs and the categories.

Everything here is a versioned data file under `schemas/`, loaded once at start and checked with
errors that name the file and the field:

- `avro/<Name>.avsc`: the current schemas, one named type per file. A file may refer to a named type
  defined in another file by its full name; the catalog inlines it (the *expanded* definition), so
  each schema stands alone for fingerprinting, for a Schema Registry and for readers.
- `avro/history/<Name>.v<N>.avsc`: every released version of each topic schema, stored expanded,
  so later edits of a shared type never rewrite history. Data written with any of them decodes.
- `topics/<topic>.yaml`: one spec per Kafka topic (value schema, key, producers, consumers,
  examples). Partitions and retention live only in `infra/topics.yaml`.
- `categories.yaml`: the category codes a `category` field may hold.

Per-record facts are read from field annotations, not kept in tables elsewhere (`RecordFacts`):
`x-id` marks a record's id field, `x-event-time` its event time, `x-personal` its personal data.
Every record type a source topic carries (its value schema, or each branch of its envelope) must
mark exactly one id and one event-time field.
"""
from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.domain.coords import COORD_SYSTEMS
from whistle.ground.datafiles import read_json, read_yaml
from whistle.ground.errors import ConfigError

SCHEMAS_DIR = Path(__file__).resolve().parent
NAMESPACE = "org.whistle.v1"
ENVELOPE_FIELD = "event"  # an envelope record has this one field, a union of record types
PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED_TYPES = frozenset({"record", "error", "enum", "fixed"})
_HISTORY_FILE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<release>[1-9][0-9]*)\.avsc$")
_CATEGORY_CODE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One Avro schema as used on the wire: current (`release` None) or a released version."""

    name: str
    full_name: str
    release: int | None
    path: Path
    definition: dict[str, Any]  # expanded, self-contained JSON, including docs and x-* value rules
    parsed: dict[str, Any]  # fastavro's parsed form, parsed once
    canonical_form: str  # Avro Parsing Canonical Form
    fingerprint: bytes  # CRC-64-AVRO of the canonical form, 8 bytes little-endian (as on the wire)


@dataclass(frozen=True, slots=True)
class RecordFacts:
    """What the schema annotations say about one record type, wherever it is nested (see the module doc)."""

    id_field: str  # the field marked `x-id`: unique per record, reused on a retried send
    event_time_field: str  # the field marked `x-event-time`: when it happened (timestamp-millis)
    personal_fields: tuple[str, ...]  # the fields marked `x-personal`, in schema order
    phone_fields: tuple[str, ...] = ()  # the personal fields that are phone numbers (`x-format: phone`)


@dataclass(frozen=True, slots=True)
class Category:
    code: str
    name: str
    name_zh: str
    description: str


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What a topic carries and who writes it; see `schemas/topics/<topic>.yaml`."""

    name: str
    schema: str  # short name of the value schema
    doc: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    key_doc: str
    key_fields: Mapping[str, str]  # record type (value schema or envelope branch) -> field holding the key
    examples: tuple[dict[str, Any], ...]
    path: Path
    source: str | None = None  # camera | hotline | app for the raw input topics

    def key_for(self, record: Mapping[str, Any]) -> str | bytes | None:
        """The Kafka key of a validated record, per the spec's key fields (envelopes: by branch type)."""
        if not self.key_fields:
            raise ConfigError(f"{self.path}: topic {self.name} has no key field; its producer computes the key ({self.key_doc})", field="key.fields")
        if self.schema in self.key_fields:
            return record[self.key_fields[self.schema]]
        type_name, inner = record[ENVELOPE_FIELD]
        branch = type_name.rpartition(".")[2]
        if branch not in self.key_fields:
            raise ConfigError(f"{self.path}: key has no field for record type {branch}", field="key.fields")
        return inner[self.key_fields[branch]]


@dataclass(frozen=True, slots=True)
class Catalog:
    schemas: Mapping[str, SchemaVersion]  # current, by short name
    releases: Mapping[str, tuple[SchemaVersion, ...]]  # released versions by short name, oldest first
    topics: Mapping[str, TopicSpec]  # by topic name
    categories: Mapping[str, Category]  # by code, in file order
    by_fingerprint: Mapping[bytes, SchemaVersion]  # every known writer: current and released
    facts: Mapping[str, RecordFacts]  # by record type (short name): every annotated record type

    def schema(self, name: str) -> SchemaVersion:
        try:
            return self.schemas[name]
        except KeyError:
            raise ConfigError(f"unknown schema {name!r}; known: {', '.join(sorted(self.schemas))}", field="schema") from None

    def record_facts(self, record_type: str) -> RecordFacts:
        """Id, event-time and personal fields of a record type (short name, e.g. "ResidentReport")."""
        try:
            return self.facts[record_type]
        except KeyError:
            raise ConfigError(f"record type {record_type!r} marks no x-id / x-event-time fields; annotated: {', '.join(sorted(self.facts))}",
                              field="record_type") from None

    def release(self, name: str, release: int) -> SchemaVersion:
        releases = self.releases.get(name, ())
        if not 1 <= release <= len(releases):
            raise ConfigError(f"schema {name} has no release v{release} in schemas/avro/history", field="release")
        return releases[release - 1]

    def topic(self, name: str) -> TopicSpec:
        try:
            return self.topics[name]
        except KeyError:
            raise ConfigError(f"no spec for topic {name!r} in {SCHEMAS_DIR / 'topics'}", field="topic") from None

    def topic_for_source(self, source: str) -> TopicSpec:
        for spec in self.topics.values():
            if spec.source == source:
                return spec
        sources = sorted(s.source for s in self.topics.values() if s.source)
        raise ConfigError(f"unknown source {source!r}; expected one of {', '.join(sources)}", field="source")

    def vocabularies(self) -> dict[str, frozenset[str]]:
        """Value lists that `x-vocabulary` field rules refer to."""
        return {"categories": frozenset(self.categories), "coord_systems": frozenset(COORD_SYSTEMS)}


@functools.cache
def default_catalog() -> Catalog:
    """The catalog of this checkout's `schemas/` files, loaded once per process."""
    return load_catalog(SCHEMAS_DIR)


def load_catalog(root: Path) -> Catalog:
    """Load and check every schema, release, topic spec and category under `root`."""
    categories = _load_categories(root / "categories.yaml")
    sources = _load_avro_sources(root / "avro")
    schemas = {}
    known = {name: definition for name, (_, definition) in sources.items()}
    for path, definition in sources.values():
        expanded = expand(definition, known, path)
        _check_docs(expanded, path)
        schemas[definition["name"]] = schema_version(expanded, path)
    topics = _load_topics(root / "topics", schemas)
    facts = _load_facts(sources.values(), _source_record_types(topics, schemas))
    topic_schemas = {spec.schema for spec in topics.values()}
    releases = _load_releases(root / "avro" / "history", topic_schemas)
    by_fingerprint: dict[bytes, SchemaVersion] = {}
    for version in [v for versions in releases.values() for v in versions] + list(schemas.values()):
        by_fingerprint[version.fingerprint] = version  # current last: it wins over an identical release
    return Catalog(schemas=schemas, releases=releases, topics=topics, categories=categories, by_fingerprint=by_fingerprint, facts=facts)


def expand(definition: dict[str, Any], known: Mapping[str, dict[str, Any]], path: Path) -> dict[str, Any]:
    """Inline every named type `definition` refers to (first use inlined, later uses by name)."""
    defined: set[str] = set()

    def walk(node: Any, namespace: str) -> Any:
        if isinstance(node, str):
            if node in PRIMITIVES:
                return node
            full = node if "." in node else f"{namespace}.{node}"
            if full in defined:
                return full
            if full not in known:
                raise ConfigError(f"{path}: unknown type {node!r}", field=node)
            return walk(known[full], namespace)
        if isinstance(node, list):
            return [walk(branch, namespace) for branch in node]
        if not isinstance(node, dict) or "type" not in node:
            raise ConfigError(f"{path}: not an Avro type: {node!r}", field="type")
        kind = node["type"]
        out = dict(node)
        if kind in NAMED_TYPES:
            full = full_name(node, namespace)
            defined.add(full)
            inner_namespace = full.rpartition(".")[0]
            if kind in ("record", "error"):
                out["fields"] = [{**f, "type": walk(f["type"], inner_namespace)} for f in node["fields"]]
        elif kind == "array":
            out["items"] = walk(node["items"], namespace)
        elif kind == "map":
            out["values"] = walk(node["values"], namespace)
        elif kind not in PRIMITIVES:
            raise ConfigError(f"{path}: unsupported type {kind!r}", field=str(kind))
        return out

    return walk(definition, definition.get("namespace", NAMESPACE))


def schema_fingerprint(definition: Any) -> tuple[str, bytes]:
    """(Parsing Canonical Form, CRC-64-AVRO fingerprint as the 8 little-endian wire bytes)."""
    canonical = to_parsing_canonical_form(copy.deepcopy(definition))
    return canonical, bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def schema_version(definition: dict[str, Any], path: Path, release: int | None = None) -> SchemaVersion:
    """Parse and fingerprint one self-contained schema definition (e.g. fetched from a registry)."""
    try:
        parsed = fastavro.parse_schema(copy.deepcopy(definition), named_schemas={})
        canonical, fp = schema_fingerprint(definition)
    except Exception as exc:  # fastavro raises assorted types for invalid schemas
        raise ConfigError(f"{path}: invalid Avro schema: {exc}", field=definition.get("name")) from exc
    assert isinstance(parsed, dict)  # fastavro parses a named type's definition (a dict) into a dict
    return SchemaVersion(
        name=definition["name"],
        full_name=full_name(definition, NAMESPACE),
        release=release,
        path=path,
        definition=definition,
        parsed=parsed,
        canonical_form=canonical,
        fingerprint=fp,
    )


def _check_docs(node: Any, path: Path, where: str = "") -> None:
    """Every named type and every field must say what it is: the schema is the integrators' manual."""
    if isinstance(node, list):
        for branch in node:
            _check_docs(branch, path, where)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") in NAMED_TYPES and not str(node.get("doc", "")).strip():
        raise ConfigError(f"{path}: type {node['name']} has no doc", field=node["name"])
    for f in node.get("fields", ()):
        if not str(f.get("doc", "")).strip():
            raise ConfigError(f"{path}: field {where}{f['name']} has no doc", field=f["name"])
        _check_docs(f["type"], path, f"{where}{f['name']}.")
    for key in ("items", "values"):
        if key in node:
            _check_docs(node[key], path, where)


def full_name(node: Mapping[str, Any], namespace: str) -> str:
    """Full name of a named type defined at `node`, inside `namespace` unless it names its own."""
    name = node["name"]
    return name if "." in name else f"{node.get('namespace', namespace)}.{name}"


def _load_avro_sources(directory: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    sources: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.avsc")):
        definition = read_json(path)
        if not isinstance(definition, dict) or definition.get("type") not in NAMED_TYPES:
            raise ConfigError(f"{path}: a schema file must hold one named type (record, enum or fixed)", field="type")
        if definition.get("namespace") != NAMESPACE or definition.get("name") != path.stem:
            raise ConfigError(f"{path}: expected name {path.stem!r} in namespace {NAMESPACE!r}", field="name")
        sources[full_name(definition, NAMESPACE)] = (path, definition)
    if not sources:
        raise ConfigError(f"{directory}: no .avsc files", field="avro")
    return sources


def _load_releases(directory: Path, topic_schemas: set[str]) -> dict[str, tuple[SchemaVersion, ...]]:
    found: dict[str, list[SchemaVersion]] = {}
    for path in sorted(directory.glob("*.avsc")):
        match = _HISTORY_FILE.match(path.name)
        if not match:
            raise ConfigError(f"{path}: released schemas are named <Name>.v<N>.avsc", field=path.name)
        definition = read_json(path)
        if not isinstance(definition, dict) or definition.get("name") != match["name"]:
            raise ConfigError(f"{path}: holds {definition.get('name')!r}, not {match['name']!r}", field="name")
        _check_docs(definition, path)
        found.setdefault(match["name"], []).append(schema_version(definition, path, int(match["release"])))
    releases = {}
    for name in sorted(topic_schemas):
        versions = sorted(found.pop(name, []), key=lambda v: v.release or 0)  # every release here is an int (from the file name)
        if [v.release for v in versions] != list(range(1, len(versions) + 1)):
            raise ConfigError(f"{directory}: releases of {name} must be v1..vN without gaps, found {[v.release for v in versions]}", field=name)
        releases[name] = tuple(versions)
    if found:
        raise ConfigError(f"{directory}: releases of schemas no topic uses: {sorted(found)}", field="history")
    return releases


def _load_categories(path: Path) -> dict[str, Category]:
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise ConfigError(f"{path}: expected a mapping with a `categories` list", field="categories")
    categories: dict[str, Category] = {}
    for index, item in enumerate(data["categories"]):
        where = f"categories[{index}]"
        if not isinstance(item, dict) or set(item) != {"code", "name", "name_zh", "description"}:
            raise ConfigError(f"{path}: {where} needs exactly code, name, name_zh, description", field=where)
        code = item["code"]
        if not isinstance(code, str) or not _CATEGORY_CODE.match(code) or code in categories:
            raise ConfigError(f"{path}: {where}.code {code!r} is not a new snake_case code", field=f"{where}.code")
        categories[code] = Category(**{k: str(v) for k, v in item.items()})
    return categories


_TOPIC_KEYS = {"topic", "schema", "doc", "producers", "consumers", "key", "examples", "source"}


def _load_topics(directory: Path, schemas: Mapping[str, SchemaVersion]) -> dict[str, TopicSpec]:
    topics: dict[str, TopicSpec] = {}
    for path in sorted(directory.glob("*.yaml")):
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping", field="topic")
        missing = _TOPIC_KEYS - {"source"} - set(data)
        unknown = set(data) - _TOPIC_KEYS
        if missing or unknown:
            raise ConfigError(f"{path}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}", field=", ".join(sorted(missing | unknown)))
        if data["topic"] != path.stem:
            raise ConfigError(f"{path}: topic {data['topic']!r} does not match the file name", field="topic")
        if data["schema"] not in schemas:
            raise ConfigError(f"{path}: schema {data['schema']!r} has no file in schemas/avro", field="schema")
        key = data["key"]
        if not isinstance(key, dict) or not isinstance(key.get("doc"), str) or not isinstance(key.get("fields", {}), dict):
            raise ConfigError(f"{path}: key needs `doc` (text) and optional `fields` (record type -> field)", field="key")
        key_fields = {str(k): str(v) for k, v in key.get("fields", {}).items()}
        _check_key_fields(path, schemas[data["schema"]], key_fields)
        examples = data["examples"]
        if not isinstance(examples, list) or not examples or not all(isinstance(e, dict) for e in examples):
            raise ConfigError(f"{path}: examples must be a non-empty list of messages", field="examples")
        topics[data["topic"]] = TopicSpec(
            name=data["topic"],
            schema=data["schema"],
            doc=str(data["doc"]).strip(),
            producers=tuple(map(str, data["producers"])),
            consumers=tuple(map(str, data["consumers"])),
            key_doc=key["doc"],
            key_fields=key_fields,
            examples=tuple(examples),
            path=path,
            source=data.get("source"),
        )
    sources = [spec.source for spec in topics.values() if spec.source]
    if len(sources) != len(set(sources)):
        raise ConfigError(f"{directory}: a source may feed only one topic, got {sources}", field="source")
    return topics


def _envelope_branches(schema: SchemaVersion) -> dict[str, dict[str, Any]]:
    """The record types of an envelope's `event` union by short name ({} if `schema` is no envelope)."""
    envelope = [f for f in schema.definition.get("fields", ()) if f["name"] == ENVELOPE_FIELD]
    if envelope and isinstance(envelope[0]["type"], list):
        return {b["name"]: b for b in envelope[0]["type"] if isinstance(b, dict)}
    return {}


def _source_record_types(topics: Mapping[str, TopicSpec], schemas: Mapping[str, SchemaVersion]) -> set[str]:
    """Record types the source topics carry: each one's value schema, or the branches of its envelope."""
    carried: set[str] = set()
    for spec in topics.values():
        if spec.source:
            schema = schemas[spec.schema]
            carried.update(_envelope_branches(schema) or {schema.name: schema.definition})
    return carried


def _load_facts(sources: Iterable[tuple[Path, dict[str, Any]]], required: set[str]) -> dict[str, RecordFacts]:
    """RecordFacts of every record type that is annotated or that a source topic carries, from the file defining it."""
    facts: dict[str, RecordFacts] = {}
    for path, definition in sources:
        for record in _records_defined(definition):
            name = record["name"].rpartition(".")[2]
            fields = record["fields"]
            ids = [f["name"] for f in fields if f.get("x-id")]
            times = [f["name"] for f in fields if f.get("x-event-time")]
            if name not in required and not ids and not times:
                continue
            for rule, marked in (("x-id", ids), ("x-event-time", times)):
                if len(marked) != 1:
                    raise ConfigError(f"{path}: record {name} must mark exactly one field {rule}: true, found {marked or 'none'}", field=rule)
            by_name = {f["name"]: f for f in fields}
            if by_name[ids[0]]["type"] != "string":
                raise ConfigError(f"{path}: x-id field {name}.{ids[0]} must be a string", field=ids[0])
            time_type = by_name[times[0]]["type"]
            if not isinstance(time_type, dict) or time_type.get("logicalType") != "timestamp-millis":
                raise ConfigError(f"{path}: x-event-time field {name}.{times[0]} must be a timestamp-millis", field=times[0])
            personal = tuple(f["name"] for f in fields if f.get("x-personal"))
            phones = tuple(n for n in personal if by_name[n].get("x-format") == "phone")
            facts[name] = RecordFacts(ids[0], times[0], personal, phones)
    missing = required - set(facts)
    if missing:
        raise ConfigError(f"source record types {sorted(missing)} have no schema file defining them", field="x-id")
    return facts


def _records_defined(node: Any) -> Iterator[dict[str, Any]]:
    """Every record defined inline in a schema file's JSON (references by name are not followed)."""
    if isinstance(node, list):
        for branch in node:
            yield from _records_defined(branch)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "error"):
            yield node
            for f in node.get("fields", ()):
                yield from _records_defined(f["type"])
        for key in ("items", "values"):
            if key in node:
                yield from _records_defined(node[key])


def _check_key_fields(path: Path, schema: SchemaVersion, key_fields: Mapping[str, str]) -> None:
    """Each key field must exist in the named record: the value schema or a branch of its envelope."""
    records = {schema.name: schema.definition, **_envelope_branches(schema)}
    for record_type, field_name in key_fields.items():
        record = records.get(record_type)
        if record is None or field_name not in {f["name"] for f in record["fields"]}:
            raise ConfigError(f"{path}: key field {record_type}.{field_name} is not in schema {schema.name}", field="key.fields")
