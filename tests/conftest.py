"""Test fixtures: the real local Kafka and ClickHouse, started once per session by infra/stack.py.

Tests run their own stack on their own ports and state folder (`.whistle/test-<port base>`), so a running
demo stack is never touched. The stack is stopped at the end of the run (WHISTLE_TEST_KEEP_STACK=1 keeps it
running between local runs, for fast re-runs).
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import signal
import uuid

import pytest

from infra.provision import provision_all
from infra.stack import LocalStack
from sinks.clickhouse import ChdbEngine, ServerEngine
from whistle.ground.settings import PROJECT_ROOT, Settings

# Tests run their own stack; WHISTLE_TEST_PORT_BASE moves it (ports BASE, BASE+92, BASE+93, BASE+123; a replicated
# ClickHouse also BASE+10·n, BASE+124+10·n and ZooKeeper on BASE+181)
# so that several test runs can share one machine.
PORT_BASE = int(os.environ.get("WHISTLE_TEST_PORT_BASE", "29000"))
TEST_STATE = PROJECT_ROOT / ".whistle" / f"test-{PORT_BASE}"


def make_test_settings() -> Settings:
    base = Settings.from_env({})
    stack = dataclasses.replace(base.stack, state_dir=TEST_STATE, kafka_port=PORT_BASE + 92, controller_port=PORT_BASE + 93,
                                clickhouse_tcp_port=PORT_BASE, clickhouse_http_port=PORT_BASE + 123, zookeeper_port=PORT_BASE + 181)
    kafka = dataclasses.replace(base.kafka, bootstrap_servers=f"127.0.0.1:{PORT_BASE + 92}")
    clickhouse = dataclasses.replace(base.clickhouse, port=PORT_BASE, http_port=PORT_BASE + 123)
    # The tests replay historical periods (2024-2026) into today's Kafka: a backfill, so devices' times are
    # believed up to ten years before arrival; tests of the skew bounds set their own.
    time = dataclasses.replace(base.time, device_behind_s=10 * 365 * 86_400.0)
    return dataclasses.replace(base, stack=stack, kafka=kafka, clickhouse=clickhouse, time=time)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_test_settings()


@pytest.fixture(scope="session")
def local_stack(settings: Settings):
    """The running single-broker test stack: started if needed, stopped at the end of the session (also when a test
    failed or the run was interrupted), unless WHISTLE_TEST_KEEP_STACK=1 keeps it for fast local re-runs."""
    TEST_STATE.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(settings)
    with open(TEST_STATE / "fixture.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stack.up()
    try:
        yield stack
    finally:
        if os.environ.get("WHISTLE_TEST_KEEP_STACK") != "1":
            stack.down()


@pytest.fixture
def isolated(settings: Settings, local_stack: LocalStack) -> Settings:
    """Settings with a topic prefix and a ClickHouse database of this test's own, provisioned like production."""
    tag = uuid.uuid4().hex[:8]
    clickhouse = dataclasses.replace(settings.clickhouse, database=f"t_{tag}", user="default")
    mine = dataclasses.replace(settings, topic_prefix=f"t{tag}.", clickhouse=clickhouse)
    provision_all(mine)
    return mine


@pytest.fixture(scope="module")
def clickhouse_cluster(settings: Settings):
    """Two ClickHouse 18.16 replicas of one shard and Apache ZooKeeper, on ports of their own (BASE+2000…, no Kafka: tests
    that need it use the session's); stopped and wiped when the module ends, also after a failure."""
    cfg = dataclasses.replace(settings.stack, state_dir=TEST_STATE / "cluster", clickhouse_tcp_port=PORT_BASE + 2000,
                              clickhouse_http_port=PORT_BASE + 2123, zookeeper_port=PORT_BASE + 2181)
    stack = LocalStack(dataclasses.replace(settings, stack=cfg), clickhouse_replicas=2)
    try:
        stack.up_clickhouse()
        yield stack
    finally:
        stack.down(wipe=True)


@pytest.fixture
def clustered(settings: Settings, local_stack: LocalStack, clickhouse_cluster: LocalStack) -> Settings:
    """As `isolated`, with the database on the two-replica cluster (written through replica 1), migrated ON CLUSTER."""
    tag = uuid.uuid4().hex[:8]
    clickhouse = dataclasses.replace(settings.clickhouse, database=f"t_{tag}", user="default",
                                     port=clickhouse_cluster.clickhouse_port(1), cluster=clickhouse_cluster.cluster)
    mine = dataclasses.replace(settings, topic_prefix=f"t{tag}.", clickhouse=clickhouse)
    provision_all(mine)
    return mine


@pytest.fixture(scope="session")
def kafka_bootstrap(local_stack: LocalStack) -> str:
    """Bootstrap servers of a running real Kafka broker."""
    return local_stack.bootstrap_servers


@pytest.fixture(scope="session")
def clickhouse_native(local_stack: LocalStack, settings: Settings) -> tuple[str, int]:
    """(host, native port) of a running real ClickHouse 18.16 server; user `default`, no password."""
    return "127.0.0.1", settings.stack.clickhouse_tcp_port


@pytest.fixture(scope="module", params=["clickhouse-18.16", "chdb"])
def engine(request, tmp_path_factory):
    """Each ClickHouse in turn: the real 18.16 server, then modern ClickHouse embedded in chdb (one data path per process)."""
    if request.param == "chdb":
        engine = ChdbEngine(tmp_path_factory.getbasetemp() / "chdb")
    else:
        host, port = request.getfixturevalue("clickhouse_native")
        engine = ServerEngine(host, port)
    yield engine
    engine.close()


@pytest.fixture
def database(engine):
    """A database of its own for one test, dropped afterwards."""
    name = f"whistle_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield name
    engine.execute(f"DROP DATABASE IF EXISTS {name}")


# What a test touches, read from the fixtures it uses (directly or through other fixtures), so that the
# markers cannot drift from what the test really needs: `pytest -m pure` (make test-pure) runs the tests
# that need no server; kafka / clickhouse select by server; drill, the slow fault drills.
_KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "isolated", "clustered", "local_stack", "spare_stack"})
_CLICKHOUSE_FIXTURES = frozenset({"clickhouse_native", "engine", "database", "isolated", "clustered", "clickhouse_cluster", "local_stack",
                                  "spare_stack"})


def pytest_configure(config: pytest.Config) -> None:
    """A run ended by SIGTERM (a CI timeout, `kill`) unwinds as Ctrl-C does: every test's and fixture's `finally` runs, so
    the worker processes a test spawned and the session's stack are stopped, instead of being orphaned."""
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        marks = {mark.name for mark in item.iter_markers()}
        if used & _KAFKA_FIXTURES and "kafka" not in marks:
            item.add_marker(pytest.mark.kafka)
            marks.add("kafka")
        if used & _CLICKHOUSE_FIXTURES and "clickhouse" not in marks:
            item.add_marker(pytest.mark.clickhouse)
            marks.add("clickhouse")
        if not marks & {"kafka", "clickhouse", "drill"}:
            item.add_marker(pytest.mark.pure)
