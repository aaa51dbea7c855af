"""Schema evolution guard: every current topic schema and every released version read each other's data.

Rules are Avro's schema resolution (reader/writer), checked statically over whole schemas so that a
break hiding in a rarely used union branch or enum symbol is found too:
- the current schema must read data written by every release (new readers, old data), and
- every release must read data written by the current schema (old readers, new data);
- the current schema must equal its newest release apart from docs and value rules, so a change
  cannot reach a topic without being released (and so checked) first.

`python -m schemas.compat` reports problems (exit 1 if any); `--release` snapshots each changed
schema as `avro/history/<Name>.v<N+1>.avsc` when it is compatible with every earlier release.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.catalog import NAMED_TYPES, PRIMITIVES, SCHEMAS_DIR, Catalog, SchemaVersion, full_name, load_catalog

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}


@dataclass(frozen=True, slots=True)
class Incompatibility:
    schema: str
    reason: str
    field: str = ""
    writer: str | None = None  # e.g. "v1" or "current", for a reader/writer break
    reader: str | None = None

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        if self.writer is None:
            return f"{self.schema}: {where}{self.reason}"
        return f"{self.schema}: data written by {self.writer} cannot be read by {self.reader}: {where}{self.reason}"


def resolution_problems(writer: Mapping[str, Any], reader: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Why data written with `writer` cannot be read with `reader` as (field path, reason); [] if it can."""
    writer_named, reader_named = _named_types(writer), _named_types(reader)
    problems: list[tuple[str, str]] = []
    compared: set[tuple[str, str]] = set()

    def deref(node: Any, namespace: str, named: Mapping[str, tuple[Any, str]]) -> tuple[Any, str]:
        if isinstance(node, str) and node not in PRIMITIVES:
            return named[node if "." in node else f"{namespace}.{node}"]
        return node, namespace

    def resolve(w: Any, w_ns: str, r: Any, r_ns: str, path: str) -> None:
        w, w_ns = deref(w, w_ns, writer_named)
        r, r_ns = deref(r, r_ns, reader_named)
        if isinstance(w, list):
            for branch in w:
                resolve(branch, w_ns, r, r_ns, path)
            return
        if isinstance(r, list):
            for branch in r:
                candidate, candidate_ns = deref(branch, r_ns, reader_named)
                if _matches(w, w_ns, candidate, candidate_ns):
                    resolve(w, w_ns, candidate, candidate_ns, path)
                    return
            problems.append((path, f"writer type {_label(w)} matches no branch of the reader's union"))
            return
        if not _matches(w, w_ns, r, r_ns):
            problems.append((path, f"writer type {_label(w)} cannot be read as {_label(r)}"))
            return
        kind = _kind(w)
        if kind == "record":
            key = (full_name(w, w_ns), full_name(r, r_ns))
            if key in compared:
                return
            compared.add(key)
            inner_w, inner_r = full_name(w, w_ns).rpartition(".")[0], full_name(r, r_ns).rpartition(".")[0]
            written = {f["name"]: f for f in w["fields"]}
            for field in r["fields"]:
                field_path = f"{path}.{field['name']}" if path else field["name"]
                source = next((written[n] for n in [field["name"], *field.get("aliases", ())] if n in written), None)
                if source is not None:
                    resolve(source["type"], inner_w, field["type"], inner_r, field_path)
                elif "default" not in field:
                    problems.append((field_path, "the reader needs this field, the writer does not write it and it has no default"))
        elif kind == "enum":
            missing = [s for s in w["symbols"] if s not in r["symbols"]]
            if missing and "default" not in r:
                problems.append((path, f"symbols {missing} are unknown to the reader's enum (and it has no default)"))
        elif kind == "array":
            resolve(w["items"], w_ns, r["items"], r_ns, f"{path}[]")
        elif kind == "map":
            resolve(w["values"], w_ns, r["values"], r_ns, f"{path}{{}}")

    resolve(writer, writer.get("namespace", ""), reader, reader.get("namespace", ""), "")
    return problems


def check_catalog(catalog: Catalog) -> list[Incompatibility]:
    """Every evolution problem of the catalog's topic schemas (empty: safe to ship)."""
    found: list[Incompatibility] = []
    for name, releases in catalog.releases.items():
        current = catalog.schemas[name]
        if not releases:
            found.append(Incompatibility(name, "never released: run python -m schemas.compat --release"))
            continue
        newest = releases[-1]
        if _wire_form(newest.definition) != _wire_form(current.definition):
            found.append(Incompatibility(name, f"changed since v{newest.release} but not released: run python -m schemas.compat --release"))
        found.extend(_between(name, current, releases))
    return found


def _between(name: str, current: SchemaVersion, releases: tuple[SchemaVersion, ...]) -> list[Incompatibility]:
    """Both directions against every release, except old readers that the schema's `x-readers-from: N` retires.

    WHY the exception: an enum symbol can only be added if old readers have an enum default, and the first
    releases have none. A schema that must add one says from which release on readers read its data; the
    readers of older releases (sinks, alert consumers) are upgraded before any writer writes it (README,
    "Upgrading"). New readers must still read every release's data.
    """
    found = []
    readers_from = current.definition.get("x-readers-from", 1)
    for release in releases:
        label = f"v{release.release}"
        for field, reason in resolution_problems(release.definition, current.definition):
            found.append(Incompatibility(name, reason, field, writer=label, reader="current"))
        if release.release < readers_from:
            continue
        for field, reason in resolution_problems(current.definition, release.definition):
            found.append(Incompatibility(name, reason, field, writer="current", reader=label))
    return found


def release_changed(catalog: Catalog, history_dir: Path) -> list[Path]:
    """Write a new release for each topic schema that changed and is compatible with all earlier ones."""
    written = []
    for name, releases in catalog.releases.items():
        current = catalog.schemas[name]
        if releases and _wire_form(releases[-1].definition) == _wire_form(current.definition):
            continue
        problems = _between(name, current, releases)
        if problems:
            raise SystemExit("not released, incompatible:\n" + "\n".join(map(str, problems)))
        path = history_dir / f"{name}.v{len(releases) + 1}.avsc"
        path.write_text(json.dumps(current.definition, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


def _wire_form(node: Any) -> Any:
    """The parts of a schema that matter to readers: without docs and x-* value rules."""
    if isinstance(node, dict):
        return {k: _wire_form(v) for k, v in node.items() if k != "doc" and not k.startswith("x-")}
    if isinstance(node, list):
        return [_wire_form(v) for v in node]
    return node


def _named_types(schema: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """Full name -> (definition, namespace it was defined in), for every named type in a schema."""
    named: dict[str, tuple[Any, str]] = {}

    def walk(node: Any, namespace: str) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch, namespace)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in NAMED_TYPES:
                full = full_name(node, namespace)
                named[full] = (node, namespace)
                namespace = full.rpartition(".")[0]
                for field in node.get("fields", ()):
                    walk(field["type"], namespace)
            else:
                for key in ("items", "values"):
                    if key in node:
                        walk(node[key], namespace)

    walk(schema, schema.get("namespace", ""))
    return named


def _kind(node: Any) -> str:
    if isinstance(node, str):
        return node
    kind = node["type"]
    return kind if isinstance(kind, str) else _kind(kind)


def _label(node: Any) -> str:
    kind = _kind(node)
    return f"{kind} {node['name']}" if kind in NAMED_TYPES else kind


def _matches(w: Any, w_ns: str, r: Any, r_ns: str) -> bool:
    """Avro's first resolution step: may a value of writer type `w` be read as reader type `r`?"""
    w_kind, r_kind = _kind(w), _kind(r)
    if w_kind in PRIMITIVES:
        return r_kind in _PROMOTIONS.get(w_kind, {w_kind})
    if w_kind != r_kind:
        return False
    if w_kind in NAMED_TYPES:
        w_name = full_name(w, w_ns).rpartition(".")[2]
        r_names = {full_name(r, r_ns).rpartition(".")[2], *(a.rpartition(".")[2] for a in r.get("aliases", ()))}
        if w_name not in r_names:
            return False
        return w_kind != "fixed" or w["size"] == r["size"]
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.compat", description=__doc__.split("\n")[0])
    parser.add_argument("--release", action="store_true", help="snapshot changed, compatible schemas as new releases")
    args = parser.parse_args(argv)
    catalog = load_catalog(SCHEMAS_DIR)
    if args.release:
        for path in release_changed(catalog, SCHEMAS_DIR / "avro" / "history"):
            print(f"released {path.relative_to(SCHEMAS_DIR.parent)}")
        catalog = load_catalog(SCHEMAS_DIR)
    problems = check_catalog(catalog)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{len(catalog.releases)} topic schemas compatible with {sum(map(len, catalog.releases.values()))} releases")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
