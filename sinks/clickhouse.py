"""The two ClickHouse engines Whistle talks to, behind one tiny protocol.

WHY two: production runs a ClickHouse server (18.16 on the reference deployment, reached with
clickhouse-driver over the native protocol); compatibility tests also run every migration and audit
query on a modern ClickHouse embedded in-process (chdb). Both take the same SQL text, so every
statement Whistle ships is proven on the oldest and the newest engine (and `whistle audit replay` can
rank what it re-derived with the audit store's own queries, in a scratch chdb store).

SQL conventions shared by migrations and audit queries:
- Values are bound, never formatted in: `%(name)s` placeholders, substituted by clickhouse-driver's
  own escaping on both engines. When `params` is given a literal `%` must be written `%%`; with
  `params=None` the text is sent as it is.
- Identifiers (database, table) are templated as `{name}` and filled by `render_identifiers`, which
  accepts only plain identifiers (`IDENTIFIER`). Nothing else is ever spliced into SQL.
- Full-line `--` comments are dropped before sending (`strip_comment_lines`), so file headers may use
  any character.
"""
from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import orjson
from clickhouse_driver import Client
from clickhouse_driver import errors as driver_errors
from clickhouse_driver.connection import ServerInfo
from clickhouse_driver.context import Context
from clickhouse_driver.util.escape import escape_param, escape_params

from whistle.ground.errors import StoreError
from whistle.ground.settings import ClickHouseSettings

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_COMMENT_LINE = re.compile(r"^[ \t]*--[^\n]*(?:\n|$)", re.MULTILINE)
_DECIMAL_SCALE = re.compile(r"Decimal(?:\(\s*\d+\s*,\s*(\d+)\s*\)|(?:32|64|128|256)\(\s*(\d+)\s*\))")
_CHDB_INSERT_ROWS = 10_000


class Engine(Protocol):
    """What Whistle needs from ClickHouse: run one statement, insert rows."""

    def execute(self, sql: str, params: Mapping[str, Any] | None = None, *, name: str | None = None) -> list[tuple]:
        """Rows of one statement. `name` (e.g. the query file) goes into the error's context."""

    def execute_with_columns(self, sql: str, params: Mapping[str, Any] | None = None, *,
                             name: str | None = None) -> tuple[list[str], list[tuple]]:
        """Column names and rows of one statement."""

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Insert rows (tuples in `columns` order) into `table` ("db.table"); returns the row count."""

    def close(self) -> None:
        """Release the connection or session."""


def check_identifier(value: str, what: str) -> str:
    """`value` if it is a plain identifier; StoreError otherwise (identifiers are the only thing spliced into SQL)."""
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise StoreError(f"{what} {value!r} is not a plain identifier (letters, digits, underscore; not starting with a digit)",
                         field=what)
    return value


def render_identifiers(sql: str, **identifiers: str) -> str:
    """Fill `{name}` placeholders with validated identifiers; an unfilled placeholder is an error."""
    for key, value in identifiers.items():
        check_identifier(value, key)

    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key not in identifiers:
            raise StoreError(f"SQL placeholder {{{key}}} has no value", field=key)
        return identifiers[key]

    return _PLACEHOLDER.sub(fill, sql)


def strip_comment_lines(sql: str) -> str:
    """The statement without its full-line `--` comments (headers may then hold `%`, `;` or `{`)."""
    return _COMMENT_LINE.sub("", sql)


def _qualified_table(table: str) -> str:
    parts = table.split(".")
    if len(parts) > 2:
        raise StoreError(f"table {table!r} must be 'table' or 'database.table'", field="table")
    for part in parts:
        check_identifier(part, "table")
    return table


def _column_list(columns: Sequence[str]) -> str:
    if not columns:
        raise StoreError("insert needs at least one column", field="columns")
    return ", ".join(check_identifier(column, "column") for column in columns)


def _decimal_scale(type_name: str) -> int | None:
    match = _DECIMAL_SCALE.search(type_name)
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


def _quantizer(type_name: str):
    """Decimals come back with their column's scale on both engines (97.30, not 97.3)."""
    scale = _decimal_scale(type_name)
    if scale is None:
        return None
    exponent = Decimal(1).scaleb(-scale)
    return lambda value: value if value is None else Decimal(value).quantize(exponent)


class ServerEngine:
    """A ClickHouse server over the native protocol (clickhouse-driver). Every wait is bounded by the timeouts."""

    def __init__(self, host: str, port: int, *, user: str = "default", password: str = "", database: str = "default",
                 secure: bool = False, ca_certs: str | None = None, connect_timeout: float = 10.0,
                 send_receive_timeout: float = 300.0) -> None:
        self.where = f"{host}:{port}"
        self._client = Client(host=host, port=port, user=user, password=password, database=check_identifier(database, "database"),
                              secure=secure, ca_certs=ca_certs, connect_timeout=connect_timeout, send_receive_timeout=send_receive_timeout,
                              sync_request_timeout=connect_timeout)

    @classmethod
    def from_settings(cls, clickhouse: ClickHouseSettings, *, database: str | None = None, connect_timeout: float = 10.0,
                      send_receive_timeout: float = 300.0) -> ServerEngine:
        """An engine for `settings.clickhouse`. `database` overrides the session's default database
        (the migrator connects to `default` because it may have to create Whistle's)."""
        return cls(clickhouse.host, clickhouse.port, user=clickhouse.user, password=clickhouse.password.value,
                   database=database or clickhouse.database, secure=clickhouse.secure, ca_certs=clickhouse.ssl_ca_location,
                   connect_timeout=connect_timeout, send_receive_timeout=send_receive_timeout)

    def execute(self, sql: str, params: Mapping[str, Any] | None = None, *, name: str | None = None) -> list[tuple]:
        return self.execute_with_columns(sql, params, name=name)[1]

    def execute_with_columns(self, sql: str, params: Mapping[str, Any] | None = None, *,
                             name: str | None = None) -> tuple[list[str], list[tuple]]:
        try:
            rows, types = self._client.execute(sql, None if params is None else dict(params), with_column_types=True)
        except (TimeoutError, driver_errors.Error, OSError, EOFError, KeyError, ValueError, TypeError) as exc:
            raise self._error(exc, name or _first_words(sql)) from exc
        quantizers = [_quantizer(type_name) for _, type_name in types]
        if any(quantizers):
            rows = [tuple(q(v) if q else v for q, v in zip(quantizers, row)) for row in rows]
        return [column for column, _ in types], rows

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        statement = f"INSERT INTO {_qualified_table(table)} ({_column_list(columns)}) VALUES"
        rows = rows if isinstance(rows, list) else list(rows)
        try:
            return self._client.execute(statement, rows) or 0
        except (TimeoutError, driver_errors.Error, OSError, EOFError, KeyError, ValueError, TypeError) as exc:
            raise self._error(exc, f"insert into {table}") from exc

    def close(self) -> None:
        self._client.disconnect()

    def _error(self, exc: Exception, name: str) -> StoreError:
        code = getattr(exc, "code", None)
        message = getattr(exc, "message", None) or str(exc)
        return StoreError(f"ClickHouse at {self.where} failed {name}: {message.strip().splitlines()[0] if message else type(exc).__name__}",
                          query=name, code=code, server=self.where, transient=_is_transient(exc, code))


# Server error codes that mean "not now" rather than "not this data": timeouts, network, overload, shutdown.
_TRANSIENT_CODES = frozenset({159, 202, 209, 210, 241, 242, 252, 319, 394, 425})


def _is_transient(exc: Exception, code: int | None) -> bool:
    """Whether retrying the same statement later may succeed (the server was away), as opposed to a refusal of the data."""
    if isinstance(exc, (OSError, EOFError, socket.timeout, driver_errors.NetworkError, driver_errors.SocketTimeoutError)):
        return True
    return code in _TRANSIENT_CODES


class ChdbEngine:
    """ClickHouse embedded in-process (chdb): compatibility tests against a modern engine, and `audit replay`'s scratch store.

    chdb allows one data path per process at a time: close an engine before opening one on another path.
    Results are read as JSONCompact and converted by column type, so rows look like clickhouse-driver's
    (ints, Decimals, None, tuples, lists). Inserts keep every row as 18.16 does (optimize_on_insert = 0).
    """

    def __init__(self, path: str | Path) -> None:
        from chdb import session  # a test and `audit` extra dependency, not a worker's: imported where used

        try:
            self._session = session.Session(str(path))
        except RuntimeError as exc:
            raise StoreError(f"cannot open chdb at {path}: {exc}", path=str(path)) from exc
        self.where = f"chdb:{path}"
        self._context = Context()
        self._context.server_info = ServerInfo("chdb", 0, 0, 0, 0, "UTC", "chdb", 0)
        self._run("SET output_format_json_quote_decimals = 1", "session settings")  # exact decimals, not floats
        # Modern ClickHouse collapses rows with equal sorting keys inside one insert block (18.16 never does);
        # that would drop one copy of a retried record and hide its offset from `verify`. Behave like 18.16.
        self._run("SET optimize_on_insert = 0", "session settings")

    def execute(self, sql: str, params: Mapping[str, Any] | None = None, *, name: str | None = None) -> list[tuple]:
        return self.execute_with_columns(sql, params, name=name)[1]

    def execute_with_columns(self, sql: str, params: Mapping[str, Any] | None = None, *,
                             name: str | None = None) -> tuple[list[str], list[tuple]]:
        name = name or _first_words(sql)
        try:
            statement = sql if params is None else sql % escape_params(dict(params), self._context)
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"cannot bind parameters of {name}: {exc!r}", query=name) from exc
        text = self._run(statement, name)
        if not text.strip():
            return [], []
        document = orjson.loads(text)
        meta = document["meta"]
        converters = [_converter(column["type"]) for column in meta]
        rows = [tuple(convert(value) for convert, value in zip(converters, row)) for row in document["data"]]
        return [column["name"] for column in meta], rows

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        head = f"INSERT INTO {_qualified_table(table)} ({_column_list(columns)}) VALUES "
        width = len(columns)
        batch: list[str] = []
        count = 0
        for row in rows:
            if len(row) != width:
                raise StoreError(f"row {count} has {len(row)} values for {width} columns", table=table, query=f"insert into {table}")
            batch.append("(" + ", ".join(str(escape_param(value, self._context)) for value in row) + ")")
            count += 1
            if len(batch) == _CHDB_INSERT_ROWS:
                self._run(head + ", ".join(batch), f"insert into {table}")
                batch.clear()
        if batch:
            self._run(head + ", ".join(batch), f"insert into {table}")
        return count

    def close(self) -> None:
        self._session.close()

    def _run(self, statement: str, name: str) -> str:
        try:
            result = self._session.query(statement, "JSONCompact")
        except RuntimeError as exc:  # chdb raises RuntimeError subclasses for server exceptions
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"ClickHouse at {self.where} failed {name}: {first}", query=name, server=self.where) from exc
        return result.data()


def _first_words(sql: str) -> str:
    return " ".join(strip_comment_lines(sql).split()[:4])


def _converter(type_name: str):
    """A function turning one JSONCompact value of `type_name` into what clickhouse-driver would return."""
    if type_name.startswith("Nullable(") and type_name.endswith(")"):
        inner = _converter(type_name[len("Nullable("):-1])
        return lambda value: None if value is None else inner(value)
    if type_name.startswith("Array(") and type_name.endswith(")"):
        inner = _converter(type_name[len("Array("):-1])
        return lambda value: [inner(item) for item in value]
    if type_name.startswith("Tuple(") and type_name.endswith(")"):
        inners = [_converter(part) for part in _split_top_level(type_name[len("Tuple("):-1])]
        return lambda value: tuple(convert(item) for convert, item in zip(inners, value))
    if re.fullmatch(r"U?Int\d+", type_name):
        return int
    if type_name.startswith("Float"):
        return float
    quantize = _quantizer(type_name)
    if quantize is not None:
        return quantize
    return lambda value: value


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    parts.append(text[start:].strip())
    return parts
