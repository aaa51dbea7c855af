"""Record validation: Avro types plus the value rules the schema files declare, in one place.

The rules live next to the fields they constrain, as `x-*` attributes in `schemas/avro/*.avsc`
(Avro ignores unknown attributes and they are not part of the fingerprint):

- `x-nonempty: true`         a string with non-blank text / an array with at least one item
- `x-range: [lo, hi]`        a number within lo..hi inclusive
- `x-max-length: n`          a string of at most n characters
- `x-vocabulary: categories` a code from `schemas/categories.yaml`
- `x-pattern: regex`         a string matching the regex
- `x-format: phone`          a phone number `streams.domain.pii.normalize_phone` accepts
- `x-required-if: {f: [v]}`  a nullable field that must be set when field f holds one of the values
- `x-paired-with: f`         a nullable field that must be set when field f is, and the other way
                             round when f names it back (lat/lon: both or neither)
- `x-personal: true`         marks personal data (checked by the schema tests, not here)
- `x-id: true`               marks the record's id field (unique, reused on a retried send); an id is
                             1 to 128 characters of A-Z a-z 0-9 . _ : - (`ID_PATTERN`), checked here
- `x-event-time: true`       marks the record's event-time field (a timestamp-millis)
The last three are facts about the record rather than value rules: `schemas.catalog` reads them once
at load (`Catalog.record_facts`, which also checks them) for the code that needs them.
Date-times must be timezone-aware in every mode: a naive datetime is refused, never guessed, and lie
in `EARLIEST` .. `LATEST` (1970-01-01 to 2099-12-31 UTC: what ClickHouse's DateTime partitions hold).
Strings must be valid Unicode (no lone surrogates: they cannot be written as UTF-8).

Two modes, both compiled once per schema into closures:
- `validate` (input from outside: JSON lines, HTTP bodies, hand-built dicts) checks every type and
  rule, accepts the JSON form (ISO 8601 date-times with a zone; a union of records as
  {"TypeName": {...}}) and the Python form, and returns the Python form fastavro writes and reads
  back: UTC datetimes cut to milliseconds, defaults filled in, enums as plain strings, unions as
  (full name, dict) tuples.
- `check` (records already typed: decoded by fastavro, or built from domain objects) visits only
  the fields that carry rules or date-times, in place; fastavro enforces the types.
Both report every problem at once, each as (field path, reason).

`json_schema` describes the JSON form `validate` accepts as an OpenAPI 3.0 schema object, from the same
annotations (the gateway's /openapi.json), so the description cannot drift from the rules.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from schemas.catalog import PRIMITIVES, full_name
from streams.domain.pii import normalize_phone
from whistle.ground.errors import ConfigError, ValidationError

Problems = list[tuple[str, str]]
Check = Callable[[Any, Problems], Any]

_INT_LIMITS = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_PYTHON_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer", float: "a number", type(None): "null"}
_FIELD_RULES = frozenset({"x-nonempty", "x-range", "x-max-length", "x-vocabulary", "x-pattern", "x-format", "x-required-if", "x-paired-with",
                          "x-personal", "x-id", "x-event-time"})
_UTC = UTC
ID_MAX_LENGTH = 128
ID_PATTERN = re.compile(rf"[A-Za-z0-9._:-]{{1,{ID_MAX_LENGTH}}}")  # an x-id field's value, in full
ID_RULE = f"an id is 1 to {ID_MAX_LENGTH} characters of A-Z a-z 0-9 . _ : -"
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)  # inclusive
LATEST = datetime(2100, 1, 1, tzinfo=UTC) - timedelta(milliseconds=1)  # inclusive
TIME_RULE = "must lie between 1970-01-01T00:00:00Z and 2099-12-31T23:59:59.999Z"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def id_problem(value: str) -> str | None:
    """Why `value` is not a valid record id (see ID_PATTERN), without quoting it; None if it is one."""
    if ID_PATTERN.fullmatch(value):
        return None
    if not value or len(value) > ID_MAX_LENGTH:
        return f"is {len(value)} characters long; {ID_RULE}"
    bad = next(c for c in value if not ID_PATTERN.fullmatch(c))
    return f"holds U+{ord(bad):04X} at position {value.index(bad)}; {ID_RULE}"


def instant_problem(value: datetime) -> str | None:
    """Why an aware datetime is outside EARLIEST..LATEST, or None."""
    try:
        inside = EARLIEST <= value <= LATEST
    except OverflowError:  # an offset taking it past year 1 or 9999
        inside = False
    return None if inside else f"{value.isoformat()} is out of range: {TIME_RULE}"


class RecordValidator:
    """Validates records of one schema (see the module doc for the two modes)."""

    __slots__ = ("schema_name", "_validate", "_check")

    def __init__(self, definition: Mapping[str, Any], vocabularies: Mapping[str, frozenset[str]]) -> None:
        self.schema_name = definition["name"]
        namespace = definition.get("namespace", "")
        validate = _Compiler(vocabularies, self.schema_name, full=True).type_check(definition, "", namespace)
        assert validate is not None  # full mode compiles a check for every type
        self._validate: Check = validate
        self._check = _Compiler(vocabularies, self.schema_name, full=False).type_check(definition, "", namespace)

    def validate(self, record: Any) -> dict[str, Any]:
        """The record (JSON or Python form) in Python form, or ValidationError listing every (field, reason)."""
        problems: Problems = []
        value = self._validate(record, problems)
        if problems:
            raise invalid(problems, schema=self.schema_name)
        return value

    def check(self, record: Mapping[str, Any]) -> None:
        """ValidationError if a typed record breaks a value rule or holds a naive date-time."""
        if self._check is not None:
            problems: Problems = []
            self._check(record, problems)
            if problems:
                raise invalid(problems, schema=self.schema_name)


def invalid(problems: Problems, **context: Any) -> ValidationError:
    """One ValidationError for a list of problems, its message naming each field and why."""
    message = "; ".join(f"{field}: {reason}" if field else reason for field, reason in problems)
    return ValidationError(message, field=problems[0][0] or None, problems=list(problems), **context)


def _describe(value: Any) -> str:
    return _PYTHON_TYPE_NAMES.get(type(value), type(value).__name__)


class _Compiler:
    """Compiles checks; with full=False a type with nothing to check compiles to None."""

    def __init__(self, vocabularies: Mapping[str, frozenset[str]], schema_name: str, *, full: bool) -> None:
        self.vocabularies = vocabularies
        self.schema_name = schema_name
        self.full = full
        self.named: dict[str, Mapping[str, Any]] = {}  # full name -> definition, for later references

    def fail(self, where: str, why: str) -> ConfigError:
        return ConfigError(f"schema {self.schema_name}: {where}: {why}", field=where or self.schema_name)

    def type_check(self, node: Any, path: str, namespace: str) -> Check | None:
        """The check for an Avro type; `path` is the field path reported in problems."""
        if isinstance(node, list):
            return self.union(node, path, namespace)
        if isinstance(node, str):
            if node in PRIMITIVES:
                return self.primitive(node, path)
            full = node if "." in node else f"{namespace}.{node}"
            if full not in self.named:
                raise self.fail(path, f"unknown type {node!r}")
            return self.type_check(self.named[full], path, full.rpartition(".")[0])  # compiled per use: paths differ
        kind = node["type"]
        if kind == "record":
            return self.record(node, path, namespace)
        if kind == "enum":
            return self.enum(node, path, namespace)
        if kind == "array":
            return self.array(node, path, namespace)
        if node.get("logicalType") == "timestamp-millis" and kind == "long":
            return self.timestamp(path)
        if kind in PRIMITIVES:
            return self.primitive(kind, path)
        raise self.fail(path, f"type {kind!r} is not supported by the validator")

    def primitive(self, kind: str, path: str) -> Check | None:
        if not self.full:
            return None
        if kind == "string":
            def check(value, problems):
                if type(value) is str:
                    if value.isascii() or not _LONE_SURROGATE.search(value):
                        return value
                    problems.append((path, "is not valid Unicode text (a lone surrogate)"))
                    return None
                problems.append((path, f"expected a string, got {_describe(value)}"))
        elif kind in _INT_LIMITS:
            lo, hi = _INT_LIMITS[kind]

            def check(value, problems):
                if type(value) is int and lo <= value <= hi:
                    return value
                if type(value) is int:
                    problems.append((path, f"{value} does not fit an Avro {kind}"))
                else:
                    problems.append((path, f"expected an integer, got {_describe(value)}"))
        elif kind in ("double", "float"):
            def check(value, problems):
                if type(value) is float or type(value) is int:
                    if math.isfinite(value):
                        return float(value)
                    problems.append((path, f"{value} is not a finite number"))
                    return None
                problems.append((path, f"expected a number, got {_describe(value)}"))
        elif kind == "boolean":
            def check(value, problems):
                if type(value) is bool:
                    return value
                problems.append((path, f"expected true or false, got {_describe(value)}"))
        elif kind == "bytes":
            def check(value, problems):
                if isinstance(value, (bytes, bytearray)):
                    return bytes(value)
                if type(value) is str:  # Avro's JSON encoding: one character per byte
                    try:
                        return value.encode("latin-1")
                    except UnicodeEncodeError:
                        problems.append((path, "bytes in JSON must use characters U+0000..U+00FF only"))
                        return None
                problems.append((path, f"expected bytes, got {_describe(value)}"))
        else:  # null
            def check(value, problems):
                if value is not None:
                    problems.append((path, f"expected null, got {_describe(value)}"))
        return check

    def timestamp(self, path: str) -> Check:
        def naive(value: datetime) -> tuple[str, str]:
            return path, f"{value.isoformat()} has no time zone; give UTC ('Z') or an explicit offset"

        if not self.full:
            def check_aware(value, problems):
                if isinstance(value, datetime):
                    if value.utcoffset() is None:
                        problems.append(naive(value))
                    elif (reason := instant_problem(value)) is not None:
                        problems.append((path, reason))

            return check_aware

        def check(value, problems):
            if type(value) is str:
                try:
                    value = datetime.fromisoformat(value)
                except ValueError:
                    problems.append((path, f"{value!r} is not an ISO 8601 date-time"))
                    return None
            elif not isinstance(value, datetime):
                problems.append((path, f"expected an ISO 8601 date-time with a time zone, got {_describe(value)}"))
                return None
            if value.utcoffset() is None:
                problems.append(naive(value))
                return None
            reason = instant_problem(value)
            if reason is not None:
                problems.append((path, reason))
                return None
            if value.tzinfo is not _UTC:
                value = value.astimezone(_UTC)
            if value.microsecond % 1000:
                value = value.replace(microsecond=value.microsecond - value.microsecond % 1000)
            return value

        return check

    def enum(self, node: Mapping[str, Any], path: str, namespace: str) -> Check | None:
        self.named[full_name(node, namespace)] = node
        if not self.full:
            return None
        symbols = frozenset(node["symbols"])
        listing = ", ".join(node["symbols"])

        def check(value, problems):
            if isinstance(value, Enum):
                value = value.value
            if type(value) is str and value in symbols:
                return value
            problems.append((path, f"{value!r} is not one of {listing}"))

        return check

    def array(self, node: Mapping[str, Any], path: str, namespace: str) -> Check | None:
        marker = f"{path}[]"
        item_check = self.type_check(node["items"], marker, namespace)
        if item_check is None:
            return None
        full = self.full

        def check(value, problems):
            if not isinstance(value, (list, tuple)):
                if full:
                    problems.append((path, f"expected an array, got {_describe(value)}"))
                return None
            out = []
            for index, item in enumerate(value):
                before = len(problems)
                out.append(item_check(item, problems))
                for at in range(before, len(problems)):  # name the item: photo_refs[2]
                    where, why = problems[at]
                    problems[at] = (where.replace(marker, f"{path}[{index}]", 1), why)
            return out

        return check

    def union(self, branches: list[Any], path: str, namespace: str) -> Check | None:
        nullable = "null" in branches
        others = [b for b in branches if b != "null"]
        if len(others) == 1:
            inner = self.type_check(others[0], path, namespace)
            if inner is None:
                return None

            def check_optional(value, problems):
                return None if value is None else inner(value, problems)

            return check_optional
        if any(b in PRIMITIVES if isinstance(b, str) else not isinstance(b, dict) or b.get("type") != "record" for b in others):
            raise self.fail(path, "a union of several types must be records (plus null)")
        checks: dict[str, tuple[str, Check | None]] = {}
        for branch in others:
            full = full_name(branch, namespace) if isinstance(branch, dict) else (branch if "." in branch else f"{namespace}.{branch}")
            checks[full] = checks[full.rpartition(".")[2]] = (full, self.type_check(branch, path, namespace))
        names = ", ".join(sorted({full.rpartition(".")[2] for full, _ in checks.values()}))
        full_mode = self.full

        def check(value, problems):
            if value is None and nullable:
                return None
            if isinstance(value, tuple) and len(value) == 2:
                name, inner_value = value
            elif full_mode and isinstance(value, dict) and len(value) == 1:
                ((name, inner_value),) = value.items()
            else:
                if full_mode:
                    problems.append((path, f'must name its record type: {{"<type>": {{...}}}} with <type> one of {names}'))
                return None
            if name not in checks:
                problems.append((path, f"{name!r} is not a record type here; expected one of {names}"))
                return None
            full, branch_check = checks[name]
            return (full, branch_check(inner_value, problems) if branch_check else inner_value)

        return check

    def record(self, node: Mapping[str, Any], path: str, namespace: str) -> Check | None:
        full = full_name(node, namespace)
        self.named[full] = node
        inner_namespace = full.rpartition(".")[0]
        prefix = f"{path}." if path else ""
        fields = []
        conditions = []
        pairs = []  # (field, its partner's path, partner): the partner must be set when the field is
        names = {f["name"] for f in node["fields"]}
        for f in node["fields"]:
            field_path = prefix + f["name"]
            unknown_rules = {k for k in f if k.startswith("x-")} - _FIELD_RULES
            if unknown_rules:
                raise self.fail(field_path, f"unknown value rules {sorted(unknown_rules)}")
            field_check = self.with_rules(f, self.type_check(f["type"], field_path, inner_namespace), field_path)
            fields.append((f["name"], field_check, "default" in f, f.get("default")))
            for other, values in f.get("x-required-if", {}).items():
                conditions.append((f["name"], field_path, other, frozenset(values)))
            if "x-paired-with" in f:
                partner = f["x-paired-with"]
                if partner not in names or partner == f["name"]:
                    raise self.fail(field_path, f"x-paired-with names {partner!r}, not another field of {node['name']}")
                pairs.append((f["name"], prefix + partner, partner))
        if self.full:
            return self._full_record(fields, conditions, pairs, path, prefix)
        checked = tuple((name, field_check) for name, field_check, _, _ in fields if field_check is not None)
        if not checked and not conditions and not pairs:
            return None

        def check(value, problems):
            for name, field_check in checked:
                if name in value:
                    field_check(value[name], problems)
            for name, field_path, other, values in conditions:
                if value.get(name) is None and value.get(other) in values:
                    problems.append((field_path, f"is required when {other} is {value[other]}"))
            for name, partner_path, partner in pairs:
                if value.get(name) is not None and value.get(partner) is None and all(where != partner_path for where, _ in problems):
                    problems.append((partner_path, f"is required when {name} is given (both or neither)"))
            return value

        return check

    @staticmethod
    def _full_record(fields: list, conditions: list, pairs: list, path: str, prefix: str) -> Check:
        names = frozenset(name for name, *_ in fields)

        def check(value, problems):
            if not isinstance(value, Mapping):
                problems.append((path, f"expected an object, got {_describe(value)}"))
                return None
            if not names.issuperset(value.keys()):
                for extra in sorted(set(value.keys()) - names, key=str):
                    problems.append((prefix + str(extra), "unknown field"))
            out = {}
            for name, field_check, has_default, default in fields:
                if name in value:
                    out[name] = field_check(value[name], problems)
                elif has_default:
                    out[name] = list(default) if type(default) is list else default
                else:
                    problems.append((prefix + name, "is required"))
            for name, field_path, other, values in conditions:
                if out.get(name) is None and out.get(other) in values:
                    problems.append((field_path, f"is required when {other} is {out[other]}"))
            for name, partner_path, partner in pairs:
                if out.get(name) is not None and value.get(partner) is None and all(where != partner_path for where, _ in problems):
                    problems.append((partner_path, f"is required when {name} is given (both or neither)"))
            return out

        return check

    def with_rules(self, f: Mapping[str, Any], check: Check | None, path: str) -> Check | None:
        """Wrap a field's type check with its x-* value rules (applied to non-null values)."""
        rules = self.rules(f, path)
        if not rules:
            return check
        full = self.full

        def checked(value, problems):
            if check is not None:
                before = len(problems)
                result = check(value, problems)
                if len(problems) > before:
                    return result
                if full:
                    value = result
            if value is not None:
                for rule in rules:
                    try:
                        reason = rule(value)
                    except TypeError:  # typed mode: a producer bug fastavro would refuse anyway
                        reason = f"unexpected {_describe(value)}"
                    if reason:
                        problems.append((path, reason))
                        break
            return value

        return checked

    def rules(self, f: Mapping[str, Any], path: str) -> list[Callable[[Any], str | None]]:
        rules: list[Callable[[Any], str | None]] = []
        if f.get("x-nonempty"):
            rules.append(lambda v: "must not be empty" if (not v.strip() if type(v) is str else not v) else None)
        if f.get("x-id"):
            rules.append(id_problem)
        if "x-range" in f:
            lo, hi = f["x-range"]
            rules.append(lambda v: f"{v} is below {lo}" if v < lo else f"{v} is above {hi}" if v > hi else None)
        if "x-max-length" in f:
            limit = f["x-max-length"]
            rules.append(lambda v: f"is {len(v)} characters long, the limit is {limit}" if len(v) > limit else None)
        if "x-vocabulary" in f:
            vocabulary_name = f["x-vocabulary"]
            if vocabulary_name not in self.vocabularies:
                raise self.fail(path, f"unknown vocabulary {vocabulary_name!r}")
            vocabulary = self.vocabularies[vocabulary_name]
            rules.append(lambda v: None if v in vocabulary else f"{v!r} is not a known code (schemas/{vocabulary_name}.yaml)")
        if "x-pattern" in f:
            pattern = re.compile(f["x-pattern"])
            rules.append(lambda v: None if pattern.fullmatch(v) else f"{v!r} does not match {pattern.pattern}")
        if "x-format" in f:
            if f["x-format"] != "phone":
                raise self.fail(path, f"unknown format {f['x-format']!r}")
            rules.append(_phone_problem)
        return rules


def _phone_problem(value: str) -> str | None:
    try:
        normalize_phone(value)
    except ValidationError as exc:
        return exc.message
    return None


# ---------------------------------------------------------------------------------------------
# The JSON form as an OpenAPI 3.0 schema object

_JSON_INT_LIMITS = {"int": _INT_LIMITS["int"], "long": (-(2**53) + 1, 2**53 - 1)}  # JSON numbers: exact up to 2**53


def json_schema(definition: Mapping[str, Any], vocabularies: Mapping[str, frozenset[str]]) -> dict[str, Any]:
    """The JSON form `validate` accepts for a schema, as an OpenAPI 3.0 schema object (types, required
    fields, x-* rules as minLength/maxLength/minimum/maximum/pattern/enum). Rules JSON Schema cannot state
    (x-required-if, x-paired-with, x-format, non-blank text, the time range) are stated in descriptions."""
    named: dict[str, Mapping[str, Any]] = {}

    def describe(node: Any, namespace: str) -> dict[str, Any]:
        if isinstance(node, list):
            others = [b for b in node if b != "null"]
            if len(others) == 1:
                inner = describe(others[0], namespace)
                return {**inner, "nullable": True} if "null" in node else inner
            branches = []
            for branch in others:
                target = branch if isinstance(branch, dict) else named[branch if "." in branch else f"{namespace}.{branch}"]
                short = str(target["name"]).rpartition(".")[2]
                branches.append({"type": "object", "properties": {short: describe(branch, namespace)}, "required": [short],
                                 "additionalProperties": False})
            return {"oneOf": branches, **({"nullable": True} if "null" in node else {})}
        if isinstance(node, str):
            if node in PRIMITIVES:
                return primitive(node)
            full = node if "." in node else f"{namespace}.{node}"
            return describe(named[full], full.rpartition(".")[0])
        kind = node["type"]
        if kind == "record":
            full = full_name(node, namespace)
            named[full] = node
            inner_namespace = full.rpartition(".")[0]
            properties = {f["name"]: field(f, inner_namespace) for f in node["fields"]}
            out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
            required = [f["name"] for f in node["fields"] if "default" not in f]
            if required:
                out["required"] = required
            if node.get("doc"):
                out["description"] = node["doc"]
            return out
        if kind == "enum":
            named[full_name(node, namespace)] = node
            return {"type": "string", "enum": list(node["symbols"])}
        if kind == "array":
            return {"type": "array", "items": describe(node["items"], namespace)}
        if node.get("logicalType") == "timestamp-millis":
            return {"type": "string", "format": "date-time",
                    "description": f"ISO 8601 date-time with a time zone (Z or an offset); {TIME_RULE}"}
        return primitive(kind)

    def primitive(kind: str) -> dict[str, Any]:
        if kind in _JSON_INT_LIMITS:
            lo, hi = _JSON_INT_LIMITS[kind]
            return {"type": "integer", "minimum": lo, "maximum": hi}
        return {"string": {"type": "string"}, "bytes": {"type": "string"}, "boolean": {"type": "boolean"},
                "double": {"type": "number"}, "float": {"type": "number"}}.get(kind, {"nullable": True, "enum": [None]})

    def field(f: Mapping[str, Any], namespace: str) -> dict[str, Any]:
        out = describe(f["type"], namespace)
        target = out if "type" in out else None  # a union of records: rules do not apply
        notes = [str(f.get("doc", "")).strip(), out.pop("description", "")]
        if target is not None:
            if f.get("x-nonempty"):
                if target["type"] == "array":
                    target["minItems"] = 1
                else:
                    target["minLength"] = 1
                    notes.append("Must not be blank.")
            if "x-max-length" in f:
                target["maxLength"] = f["x-max-length"]
            if "x-range" in f:
                target["minimum"], target["maximum"] = f["x-range"]
            if "x-vocabulary" in f:
                target["enum"] = sorted(vocabularies[f["x-vocabulary"]]) + ([None] if target.get("nullable") else [])
            if "x-pattern" in f:
                target["pattern"] = f"^(?:{f['x-pattern']})$"
            if f.get("x-id"):
                target.update(minLength=1, maxLength=ID_MAX_LENGTH, pattern=f"^{ID_PATTERN.pattern}$")
                notes.append(f"The record's id: {ID_RULE}.")
            if f.get("x-format") == "phone":
                notes.append("A phone number (digits, spaces, dashes, +86).")
        for other, values in f.get("x-required-if", {}).items():
            notes.append(f"Required when {other} is {' or '.join(map(str, values))}.")
        if "x-paired-with" in f:
            notes.append(f"Give it together with {f['x-paired-with']}, or neither.")
        if "default" in f and target is not None:
            target["default"] = f["default"]
        text = " ".join(n.rstrip(".") + "." for n in notes if n)
        if text:
            out["description"] = text
        return out

    return describe(definition, definition.get("namespace", ""))
