"""Readers of Whistle's data files (reference data, policies, calendars, schemas, topic and key files).

Every problem is a ConfigError of one shape, naming the file and the place inside it
("<file>: <field>: <what is wrong>"), so an operator editing a city's files is told where to look.
"""
from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from whistle.ground.errors import ConfigError


def config_error(path: Path | str, field: str, message: str) -> ConfigError:
    """The one shape of a data-file error: file, place inside it, what is wrong."""
    return ConfigError(f"{path}: {field}: {message}", file=str(path), field=field)


def file_sha256(path: Path) -> str:
    """The file's content hash, as `sha256sum FILE` prints it."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise config_error(path, "-", f"unreadable: {exc}") from exc


def files_sha256(paths: Iterable[Path]) -> str:
    """The content hash of a set of files, as `cd DIR && sha256sum FILE... | sha256sum` prints it (names without
    their directory, in the order given): an auditor can recompute it from the files with standard tools."""
    listing = "".join(f"{file_sha256(path)}  {path.name}\n" for path in paths)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def read_yaml(path: Path) -> Any:
    """Parse one YAML file (safe loader: plain data only)."""
    return _parsed(path, yaml.safe_load, "YAML", yaml.YAMLError)


def read_json(path: Path) -> Any:
    """Parse one JSON file."""
    return _parsed(path, json.loads, "JSON", json.JSONDecodeError)


def read_entries(path: Path, key: str) -> list[Any]:
    """The non-empty list under `key` of a YAML file that is a mapping (users, keys, ...)."""
    document = read_yaml(path)
    if not isinstance(document, dict) or not isinstance(document.get(key), list) or not document[key]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty `{key}` list", file=str(path), field=key)
    return document[key]


def _parsed(path: Path, parse: Callable[[str], Any], kind: str, parse_error: type[Exception]) -> Any:
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise config_error(path, "-", "file is missing") from exc
    except (OSError, UnicodeDecodeError, parse_error) as exc:
        raise config_error(path, "-", f"unreadable {kind}: {exc}") from exc


def read_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV file with exactly `columns` as its header, each with its line number."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != columns:
                raise config_error(path, "header", f"columns must be {','.join(columns)}, got {reader.fieldnames}")
            return [(reader.line_num, row) for row in reader]
    except FileNotFoundError as exc:
        raise config_error(path, "-", "file is missing") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise config_error(path, "-", f"unreadable CSV: {exc}") from exc
