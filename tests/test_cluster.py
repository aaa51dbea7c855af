"""The audit store on a ClickHouse cluster: two 18.16 replicas of one shard with Apache ZooKeeper (`clickhouse_cluster`).

Migrations create replicated tables on both replicas ON CLUSTER; a row written to one replica is read from the other;
a retried identical block is stored once; and the sink stays exactly-once while a replica is stopped under load and
restarted: nothing lost, nothing doubled, `audit verify` clean on both replicas.
"""
from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from test_migrations import schema_snapshot
from test_sink import START, District, committed, district_day, log_ends, sink_dead_letters, stored_rows

from infra.processes import wait_until
from infra.stack import LocalStack
from schemas.serde import Serde
from sinks.audit import AUDITED_TABLES, verify
from sinks.clickhouse import ServerEngine
from sinks.migrator import migrate, status
from sinks.sink import build_sink
from whistle.edges.sdk import Publisher
from whistle.ground.settings import Settings

REPLICATED_TABLES = (*AUDITED_TABLES, "schema_migrations", "sink_batches", "offset_ledger")


def replicas(cluster: LocalStack) -> list[ServerEngine]:
    """A connection to each replica; every wait on one (SYSTEM SYNC REPLICA included) is bounded by 60 s."""
    return [ServerEngine("127.0.0.1", cluster.clickhouse_port(r), send_receive_timeout=60) for r in (1, 2)]


def sync(engine: ServerEngine, database: str) -> None:
    """Wait until the replica has fetched every part its table's replication log names (bounded by the engine's timeout)."""
    for table in REPLICATED_TABLES:
        engine.execute(f"SYSTEM SYNC REPLICA {database}.{table}")


def test_migrations_create_the_same_replicated_tables_on_both_replicas(clickhouse_cluster):
    database = f"whistle_test_{uuid.uuid4().hex[:8]}"
    first, second = replicas(clickhouse_cluster)
    try:
        applied = migrate(first, database, cluster=clickhouse_cluster.cluster)
        sync(second, database)

        engines = {}
        for replica in (first, second):
            engines[replica.where] = replica.execute("SELECT name, engine FROM system.tables WHERE database = %(db)s ORDER BY name",
                                                     {"db": database})
        assert engines[first.where] == engines[second.where]
        assert {engine for name, engine in engines[first.where] if name in REPLICATED_TABLES} == {
            "ReplicatedMergeTree", "ReplicatedReplacingMergeTree"}
        assert schema_snapshot(first, database) == schema_snapshot(second, database)
        assert [s.state for s in status(second, database)] == ["applied"] * len(applied)
        assert migrate(second, database, cluster=clickhouse_cluster.cluster) == []  # applied once, for the whole cluster
    finally:
        first.execute(f"DROP DATABASE IF EXISTS {database} ON CLUSTER {clickhouse_cluster.cluster}")
        first.close()
        second.close()


def test_a_row_written_to_one_replica_is_read_from_the_other_and_a_retried_block_is_stored_once(clickhouse_cluster):
    database = f"whistle_test_{uuid.uuid4().hex[:8]}"
    first, second = replicas(clickhouse_cluster)
    columns = ("table_name", "kafka_topic", "kafka_partition", "kafka_offset", "record_key", "ingest_ms")
    block = [("case_events", "t.cases", 0, offset, f"e-{offset}", 1) for offset in range(100)]
    try:
        migrate(first, database, cluster=clickhouse_cluster.cluster)
        first.insert(f"{database}.offset_ledger", columns, block)
        first.insert(f"{database}.offset_ledger", columns, block)  # a retry of the same block: dropped
        second.insert(f"{database}.offset_ledger", columns, block)  # on the other replica too
        second.insert(f"{database}.offset_ledger", columns, block[:1])  # negative control: another block is stored
        sync(first, database)
        sync(second, database)

        for replica in (first, second):
            assert replica.execute(f"SELECT count() FROM {database}.offset_ledger") == [(101,)]
    finally:
        first.execute(f"DROP DATABASE IF EXISTS {database} ON CLUSTER {clickhouse_cluster.cluster}")
        first.close()
        second.close()


@pytest.mark.drill
def test_a_replica_stopped_under_load_and_restarted_loses_and_doubles_nothing(clustered: Settings, clickhouse_cluster: LocalStack):
    """The sink writes through replica 1 while replica 2 is stopped; once it is back and has caught up, both replicas hold
    every offset exactly once and `audit verify` finds nothing on either."""
    day = district_day(200)
    db = clustered.clickhouse.database
    first, second = replicas(clickhouse_cluster)
    sink = build_sink(clustered, batch_rows=500, batch_seconds=0.2)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            sink.run()
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    runner = threading.Thread(target=run, name="sink")
    try:
        with Publisher(clustered, serde=Serde.from_settings(clustered), delivery_timeout_s=20) as publisher:
            district = District(clustered, publisher)
            runner.start()
            district.send(day[:300])
            wait_until(lambda: sum(stored_rows(first, db).values()) > 0, 30, "the sink's first rows")
            clickhouse_cluster.stop_clickhouse(replica=2)
            try:
                district.send(day[300:])
                district.produce(district.tick(START + timedelta(days=4)))
                ends = log_ends(clustered)
                wait_until(lambda: stored_rows(first, db) == ends, 60, "every record stored on replica 1 while replica 2 is away")
            finally:
                clickhouse_cluster.start_clickhouse(replica=2)
                time.sleep(1)  # until exec has set up the server's command line, infra/stack.py's liveness check reads it as exited
                clickhouse_cluster.wait_clickhouse(replica=2)
        sync(second, db)
    finally:
        sink.stop()
        if runner.is_alive():
            runner.join(60)
    try:
        assert failures == []
        for replica in (first, second):
            assert stored_rows(replica, db) == ends, replica.where
            assert verify(replica, db) == [], replica.where
        assert committed(clustered) == ends
        assert sink_dead_letters(clustered, district.serde) == []
    finally:
        first.close()
        second.close()
