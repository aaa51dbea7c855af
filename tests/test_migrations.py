"""Schema migrations and the engine adapters, on ClickHouse 18.16 (real server) and modern ClickHouse (chdb)."""
from __future__ import annotations

import dataclasses
import re
import shutil

import pytest

from sinks.clickhouse import render_identifiers
from sinks.migrator import MIGRATIONS_DIR, load_migrations, migrate, render_statement, status
from streams.domain.case import CaseEvent
from streams.domain.sla import Breach
from whistle.ground.errors import ConfigError, StoreError

KAFKA_COLUMNS = ["kafka_topic", "kafka_partition", "kafka_offset", "ingest_ms"]


def table_columns(engine, database, table):
    return [name for name, in engine.execute("SELECT name FROM system.columns WHERE database = %(db)s AND table = %(table)s",
                                             {"db": database, "table": table})]


def schema_snapshot(engine, database):
    return engine.execute("SELECT table, name, type FROM system.columns WHERE database = %(db)s ORDER BY table, name", {"db": database})


def test_migrate_creates_the_audit_tables_with_the_contract_columns(engine, database):
    applied = migrate(engine, database)

    assert [(m.version, m.name, m.state) for m in applied] == [(1, "audit_tables", "applied"), (2, "sink_batches", "applied"),
                                                                  (3, "case_state_view", "applied"), (4, "offset_ledger", "applied"),
                                                                  (5, "raw_sender", "applied"), (6, "rules_and_anchors", "applied"),
                                                                  (7, "case_figures", "applied")]
    tables = {name for name, in engine.execute("SELECT name FROM system.tables WHERE database = %(db)s", {"db": database})}
    assert tables == {"schema_migrations", "raw_events", "case_events", "case_state", "breaches", "dead_letters", "sink_batches",
                      "offset_ledger", "case_event_offsets", "breach_offsets", "rule_files", "chain_anchors", "case_figures",
                      "case_figures_feed"}
    case_event_fields = ["at_ms" if f.name == "at" else f.name for f in dataclasses.fields(CaseEvent)]
    breach_fields = [f"{f.name}_ms" if f.name in ("deadline", "fired_at") else f.name for f in dataclasses.fields(Breach)]
    assert sorted(table_columns(engine, database, "case_events")) == sorted(case_event_fields + KAFKA_COLUMNS)
    assert sorted(table_columns(engine, database, "breaches")) == sorted(breach_fields + KAFKA_COLUMNS)


def test_migrating_again_changes_nothing(engine, database):
    migrate(engine, database)
    before = (schema_snapshot(engine, database), status(engine, database))

    assert migrate(engine, database) == []
    assert (schema_snapshot(engine, database), status(engine, database)) == before
    assert engine.execute(f"SELECT count() FROM {database}.schema_migrations") == [(7,)]


def test_status_lists_pending_migrations_of_a_new_database(engine, database):
    assert [(s.version, s.state, s.applied_ms) for s in status(engine, database)] == [(1, "pending", None), (2, "pending", None),
                                                                                  (3, "pending", None), (4, "pending", None), (5, "pending", None),
                                                                                  (6, "pending", None), (7, "pending", None)]


def test_a_new_migration_is_applied_alone_and_in_order(engine, database, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    migrate(engine, database, directory)
    (directory / "008_scratch.sql").write_text(
        "-- a later migration with two statements\n"
        "CREATE TABLE IF NOT EXISTS {db}.scratch_a (k String) ENGINE = MergeTree() ORDER BY k;\n"
        "CREATE TABLE IF NOT EXISTS {db}.scratch_b (k String) ENGINE = MergeTree() ORDER BY k;\n")

    assert [s.state for s in status(engine, database, directory)] == ["applied"] * 7 + ["pending"]
    assert [(m.version, m.name) for m in migrate(engine, database, directory)] == [(8, "scratch")]
    assert engine.execute("SELECT count() FROM system.tables WHERE database = %(db)s AND name LIKE 'scratch%%'", {"db": database}) == [(2,)]


def test_an_added_column_interrupted_before_it_was_recorded_completes_on_the_next_run(engine, database, tmp_path):
    """18.16 has no ADD COLUMN IF NOT EXISTS: the migrator skips a column that is already there (the ALTER ran, the
    record of it did not), and still adds one that is not (the negative control)."""
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    migrate(engine, database, directory)
    (directory / "008_more_columns.sql").write_text(
        "ALTER TABLE {db}.raw_events ADD COLUMN sender String DEFAULT '' AFTER decode_error;\n"
        "ALTER TABLE {db}.raw_events ADD COLUMN scratch String DEFAULT '';\n")

    assert [(m.version, m.name) for m in migrate(engine, database, directory)] == [(8, "more_columns")]
    columns = table_columns(engine, database, "raw_events")
    assert columns.count("sender") == 1 and "scratch" in columns


def test_an_applied_migration_that_changed_is_refused(engine, database, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    migrate(engine, database, directory)
    edited = directory / "001_audit_tables.sql"
    edited.write_text(edited.read_text() + "\n-- an edit after the fact\n")

    assert [s.state for s in status(engine, database, directory)] == ["changed"] + ["applied"] * 6
    with pytest.raises(ConfigError, match=r"001_audit_tables.sql changed after it was applied"):
        migrate(engine, database, directory)


def test_a_database_ahead_of_the_code_is_refused(engine, database, tmp_path):
    migrate(engine, database)
    directory = tmp_path / "migrations"
    directory.mkdir()
    shutil.copy(MIGRATIONS_DIR / "001_audit_tables.sql", directory)

    assert [(s.version, s.state) for s in status(engine, database, directory)] == [(1, "applied")] + [(v, "unknown") for v in range(2, 8)]
    with pytest.raises(ConfigError, match=r"has migration 002_sink_batches applied, which this code does not have"):
        migrate(engine, database, directory)


def test_a_pending_migration_older_than_an_applied_one_is_refused(engine, database, tmp_path):
    directory = tmp_path / "migrations"
    directory.mkdir()
    shutil.copy(MIGRATIONS_DIR / "002_sink_batches.sql", directory)
    migrate(engine, database, directory)
    shutil.copy(MIGRATIONS_DIR / "001_audit_tables.sql", directory)

    with pytest.raises(ConfigError, match=r"001_audit_tables.sql is older than applied migration 002"):
        migrate(engine, database, directory)


def test_misnamed_or_repeated_migration_files_are_refused(tmp_path):
    (tmp_path / "1_first.sql").write_text("SELECT 1;\n")
    with pytest.raises(ConfigError, match="must be NNN_name.sql"):
        load_migrations(tmp_path)
    (tmp_path / "1_first.sql").unlink()
    (tmp_path / "001_a.sql").write_text("SELECT 1;\n")
    (tmp_path / "001_b.sql").write_text("SELECT 2;\n")
    with pytest.raises(ConfigError, match="version 001 is used by 001_a.sql and 001_b.sql"):
        load_migrations(tmp_path)


def test_statements_are_split_at_line_end_semicolons_without_comments():
    first = load_migrations()[0]

    assert [s.split("(")[0].split() for s in first.statements] == [
        ["CREATE", "TABLE", "IF", "NOT", "EXISTS", "{db}.raw_events"],
        ["CREATE", "TABLE", "IF", "NOT", "EXISTS", "{db}.case_events"],
        ["CREATE", "TABLE", "IF", "NOT", "EXISTS", "{db}.case_state"],
        ["CREATE", "TABLE", "IF", "NOT", "EXISTS", "{db}.breaches"],
        ["CREATE", "TABLE", "IF", "NOT", "EXISTS", "{db}.dead_letters"],
    ]


@pytest.mark.parametrize("name", ["whistle; DROP DATABASE system", "1abc", "a.b", "", "x" * 64])
def test_only_plain_identifiers_are_spliced_into_sql(name):
    with pytest.raises(StoreError, match="not a plain identifier"):
        render_identifiers("SELECT 1 FROM {db}.t", db=name)


def test_values_are_bound_with_escaping_and_round_trip(engine, database):
    tricky = "it's a \\ back'slash\nnew line\ttab 50% {db} 街道 ' OR 1 = 1 --"
    engine.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    engine.execute(f"CREATE TABLE {database}.texts (k UInt32, s String, n Nullable(String)) ENGINE = MergeTree() ORDER BY k")
    engine.insert(f"{database}.texts", ("k", "s", "n"), [(1, tricky, None), (2, "plain", "x")])

    assert engine.execute(f"SELECT k, s, n FROM {database}.texts WHERE s = %(s)s", {"s": tricky}) == [(1, tricky, None)]
    assert engine.execute(f"SELECT k FROM {database}.texts WHERE s = %(s)s", {"s": "' OR 1 = 1 --"}) == []


def test_engine_errors_name_the_statement(engine):
    with pytest.raises(StoreError, match="failed ranking.sql") as caught:
        engine.execute("SELECT no_such_column FROM system.one", name="ranking.sql")
    assert caught.value.context["query"] == "ranking.sql"


_REPLICATED_ENGINE = re.compile(r"ENGINE = Replicated(\w*)MergeTree\('/clickhouse/tables/\{shard\}/whistle/(\w+)', '\{replica\}'(?:, ([^)]*))?\)")


@pytest.mark.parametrize("migration", load_migrations(), ids=lambda m: m.path.name)
def test_every_shipped_migration_renders_for_one_server_and_for_a_cluster(migration):
    """One server: the file as written. A cluster: ON CLUSTER after the object's name, and every MergeTree-family engine
    replicated at its table's own path with its own arguments; nothing else differs."""
    for statement in migration.statements:
        single = render_statement(statement, "whistle")
        clustered = render_statement(statement, "whistle", "city")

        assert single == render_identifiers(statement, db="whistle")
        if single.startswith("INSERT INTO whistle."):  # a backfill runs once, on one server, on a cluster too
            assert clustered == single
            continue
        name = re.match(r"(?:CREATE|DROP|ALTER) (?:TABLE|VIEW|MATERIALIZED VIEW)(?: IF (?:NOT )?EXISTS)? (whistle\.\w+)", single).group(1)
        assert clustered.startswith(single[:single.index(name) + len(name)] + " ON CLUSTER city")
        engines = _REPLICATED_ENGINE.findall(clustered)
        assert [table for _, table, _ in engines] == [name.split(".")[1]] * len(engines)
        unreplicated = _REPLICATED_ENGINE.sub(lambda m: f"ENGINE = {m.group(1)}MergeTree({m.group(3) or ''})", clustered)
        assert unreplicated.replace(" ON CLUSTER city", "", 1) == single
        assert "MergeTree" not in _REPLICATED_ENGINE.sub("", clustered)


def test_a_replacing_table_keeps_its_version_column_on_a_cluster():
    [case_state] = [s for s in load_migrations()[0].statements if "{db}.case_state" in s]

    assert ("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/whistle/case_state', '{replica}', seq)"
            in render_statement(case_state, "whistle", "city"))


def test_a_statement_that_cannot_run_on_every_host_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"'OPTIMIZE TABLE whistle.t FINAL' is not CREATE/DROP .* ON CLUSTER city"):
        render_statement("OPTIMIZE TABLE {db}.t FINAL", "whistle", "city")
    # The one kind of statement that is not DDL and runs: a backfill, as written, once.
    assert render_statement("INSERT INTO {db}.t SELECT 1", "whistle", "city") == "INSERT INTO whistle.t SELECT 1"
    with pytest.raises(StoreError, match="cluster 'a b' is not a plain identifier"):
        render_statement("DROP TABLE {db}.t", "whistle", "a b")
