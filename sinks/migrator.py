"""The one schema migrator for Whistle's ClickHouse audit store.

Migration files live in sinks/migrations/ as `NNN_name.sql` (three-digit version, applied in version
order). Rules for a file:
- statements end with `;` at the end of a line; full-line `--` comments are dropped;
- the database is written `{db}` (the only placeholder; the migrator fills it with a validated
  identifier), never a literal name, so tests and deployments can use any database;
- every statement is idempotent (`CREATE TABLE IF NOT EXISTS ...`): ClickHouse has no transactional
  DDL, so a migration interrupted half-way is completed by simply running it again. 18.16 has no
  `ADD COLUMN IF NOT EXISTS`, so `ALTER TABLE {db}.t ADD COLUMN c ...` (one column per statement) is
  written plain, and the migrator skips it when system.columns already has that column;
- the SQL must run on ClickHouse 18.16 and modern ClickHouse (see 001_audit_tables.sql).
- once applied a file is frozen: its SHA-256 is recorded in `{db}.schema_migrations` and the migrator
  refuses to continue if it changed. Change the schema with a new file.

Two layouts, one set of files (`render_statement`): a single server runs the files as written; a cluster
(`WHISTLE_CLICKHOUSE_CLUSTER` names it in the servers' `remote_servers`) runs each statement `ON CLUSTER`
and every MergeTree-family engine as its Replicated* twin, at ZooKeeper path
`/clickhouse/tables/{shard}/<database>/<table>` with replica `{replica}` (both macros from each server's
config; a ReplacingMergeTree keeps its version column). WHY no Distributed tables: the cluster has one
shard, so every replica holds every row and a query reads the replicated tables themselves, under the
names the audit queries already use; a Distributed table only earns its keep once rows are split over
several shards.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from sinks.clickhouse import Engine, check_identifier, render_identifiers, strip_comment_lines
from whistle.ground.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_NAME = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|$)")
# The object a DDL statement is about, after which `ON CLUSTER <name>` goes (CREATE/DROP/ALTER as the files write them).
_DDL_HEAD = re.compile(r"(?P<head>(?:CREATE|DROP)\s+(?:TABLE|(?:MATERIALIZED\s+)?VIEW|DATABASE)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?"
                       r"|ALTER\s+TABLE\s+)"
                       r"(?P<name>\w+(?:\.\w+)?)(?=\s|$)", re.IGNORECASE)
_MERGE_TREE_ENGINE = re.compile(r"ENGINE\s*=\s*(?P<family>Replacing|Summing|Aggregating|Collapsing)?"
                                r"MergeTree\s*\((?P<args>[^)]*)\)", re.IGNORECASE)
_BACKFILL = re.compile(r"INSERT\s+INTO\s+\w+\.\w+\s", re.IGNORECASE)
_ADD_COLUMN = re.compile(r"ALTER\s+TABLE\s+\{db\}\.(\w+)\s+ADD\s+COLUMN\s+(\w+)\s", re.IGNORECASE)

_CREATE_STATUS_TABLE = """
CREATE TABLE IF NOT EXISTS {db}.schema_migrations
(
    version     UInt32,
    name        String,
    checksum    String,
    applied_ms  Int64
)
ENGINE = MergeTree()
ORDER BY version
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version, name, SHA-256 and statements (with `{db}` still in them)."""

    version: int
    name: str
    path: Path
    checksum: str
    statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """Where one migration stands in a database: applied, pending, changed (applied, file differs since)
    or unknown (applied in the database, no such file in this code)."""

    version: int
    name: str
    state: str
    checksum: str
    applied_ms: int | None


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file in version order; a misnamed file or a repeated version is a ConfigError naming it."""
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise ConfigError(f"migration file name must be NNN_name.sql (lowercase), got {path.name}", file=str(path))
        version = int(match.group(1))
        if version in migrations:
            raise ConfigError(f"migration version {version:03d} is used by {migrations[version].path.name} and {path.name}",
                              file=str(path))
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"migration {path.name} is not UTF-8 text: {exc}", file=str(path)) from exc
        statements = tuple(s.strip() for s in _STATEMENT_END.split(strip_comment_lines(text)) if s.strip())
        if not statements:
            raise ConfigError(f"migration {path.name} has no statements", file=str(path))
        migrations[version] = Migration(version, match.group(2), path, hashlib.sha256(data).hexdigest(), statements)
    return [migrations[version] for version in sorted(migrations)]


def status(engine: Engine, database: str, directory: Path = MIGRATIONS_DIR) -> list[MigrationStatus]:
    """Each known migration's state in `database` (all pending if it does not exist), plus unknown applied ones."""
    check_identifier(database, "database")
    migrations = load_migrations(directory)
    applied = _applied(engine, database)
    result = []
    for migration in migrations:
        record = applied.pop(migration.version, None)
        if record is None:
            result.append(MigrationStatus(migration.version, migration.name, "pending", migration.checksum, None))
        else:
            state = "applied" if record.checksum == migration.checksum else "changed"
            result.append(MigrationStatus(migration.version, migration.name, state, record.checksum, record.applied_ms))
    result.extend(MigrationStatus(r.version, r.name, "unknown", r.checksum, r.applied_ms) for r in applied.values())
    return sorted(result, key=lambda s: s.version)


def render_statement(statement: str, database: str, cluster: str | None = None) -> str:
    """`statement` (with `{db}`) as it runs on `database`: unchanged but for the name on a single server (`cluster` None);
    on the cluster `cluster`, `ON CLUSTER` after the object's name and MergeTree-family engines replicated (module docstring).

    A backfill (`INSERT INTO {db}.table ...`) runs as written on the cluster too: once, on the server the migrator talks
    to, whose replicated table carries the rows to the other replicas (run on every host, it would insert them once per
    host). Any other statement that is not CREATE/DROP TABLE|[MATERIALIZED] VIEW|DATABASE or ALTER TABLE cannot run on
    every host at once: ConfigError.
    """
    sql = render_identifiers(statement, db=database)
    if cluster is None:
        return sql
    check_identifier(cluster, "cluster")
    if _BACKFILL.match(sql):
        return sql
    head = _DDL_HEAD.match(sql)
    if head is None:
        raise ConfigError(f"migration statement {_first_line(sql)!r} is not CREATE/DROP TABLE|VIEW|DATABASE, ALTER TABLE or a "
                          f"backfill (INSERT INTO), so it cannot run ON CLUSTER {cluster}", cluster=cluster)
    name = head.group("name")
    sql = f"{sql[:head.end()]} ON CLUSTER {cluster}{sql[head.end():]}"

    def replicated(match: re.Match) -> str:
        path = f"'/clickhouse/tables/{{shard}}/{name.replace('.', '/')}'"
        args = ", ".join([path, "'{replica}'", *([match.group("args").strip()] if match.group("args").strip() else [])])
        return f"ENGINE = Replicated{match.group('family') or ''}MergeTree({args})"

    return _MERGE_TREE_ENGINE.sub(replicated, sql)


def _first_line(sql: str) -> str:
    return sql.strip().splitlines()[0] if sql.strip() else ""


def migrate(engine: Engine, database: str, directory: Path = MIGRATIONS_DIR, *, cluster: str | None = None) -> list[MigrationStatus]:
    """Create `database` if needed and apply the pending migrations in order; returns those applied ([] when up to date).
    With `cluster`, every statement runs on each of its hosts and the tables are replicated (`render_statement`).

    Refuses (ConfigError) before touching anything when an applied file changed, when the database holds
    a migration this code does not know, or when a pending file is older than an applied one.
    """
    check_identifier(database, "database")
    migrations = load_migrations(directory)
    current = status(engine, database, directory)
    problems = [s for s in current if s.state in ("changed", "unknown")]
    if problems:
        first = problems[0]
        if first.state == "changed":
            raise ConfigError(f"migration {first.version:03d}_{first.name}.sql changed after it was applied to {database} "
                              f"(applied checksum {first.checksum}): add a new migration instead of editing an applied one",
                              database=database, version=first.version)
        raise ConfigError(f"database {database} has migration {first.version:03d}_{first.name} applied, which this code does not have: "
                          f"run the newer code", database=database, version=first.version)
    applied_versions = [s.version for s in current if s.state == "applied"]
    pending = [m for m in migrations if m.version not in applied_versions]
    if pending and applied_versions and pending[0].version < max(applied_versions):
        raise ConfigError(f"migration {pending[0].path.name} is older than applied migration {max(applied_versions):03d}: "
                          f"new migrations must take the next version", database=database, version=pending[0].version)
    engine.execute(render_statement("CREATE DATABASE IF NOT EXISTS {db}", database, cluster), name="create database")
    engine.execute(render_statement(_CREATE_STATUS_TABLE.strip(), database, cluster), name="create schema_migrations")
    done = []
    for migration in pending:
        for index, statement in enumerate(migration.statements, start=1):
            if _column_exists(engine, database, statement):
                continue
            engine.execute(render_statement(statement, database, cluster), name=f"{migration.path.name} statement {index}")
        applied_ms = time.time_ns() // 1_000_000
        engine.insert(f"{database}.schema_migrations", ("version", "name", "checksum", "applied_ms"),
                      [(migration.version, migration.name, migration.checksum, applied_ms)])
        done.append(MigrationStatus(migration.version, migration.name, "applied", migration.checksum, applied_ms))
    return done


def _applied(engine: Engine, database: str) -> dict[int, MigrationStatus]:
    exists = engine.execute("SELECT count() FROM system.tables WHERE database = %(database)s AND name = 'schema_migrations'",
                            {"database": database}, name="find schema_migrations")
    if not exists[0][0]:
        return {}
    rows = engine.execute(render_identifiers("SELECT version, name, checksum, applied_ms FROM {db}.schema_migrations "
                                             "ORDER BY version, applied_ms", db=database), name="read schema_migrations")
    applied: dict[int, MigrationStatus] = {}
    for version, name, checksum, applied_ms in rows:
        applied.setdefault(version, MigrationStatus(version, name, "applied", checksum, applied_ms))
    return applied


def _column_exists(engine: Engine, database: str, statement: str) -> bool:
    """Whether `statement` adds a column the table already has (a re-run after an interrupted migration)."""
    match = _ADD_COLUMN.match(statement)
    if match is None:
        return False
    rows = engine.execute("SELECT count() FROM system.columns WHERE database = %(db)s AND table = %(table)s AND name = %(column)s",
                          {"db": database, "table": match.group(1), "column": match.group(2)}, name="column exists")
    return bool(rows[0][0])
