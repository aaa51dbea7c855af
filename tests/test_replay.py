"""`whistle audit replay` on real Kafka and ClickHouse: a simulated day re-derived from the case stream alone is
identical to what the audit store holds, rankings included (recomputed in a scratch chdb store, deleted afterwards);
an altered or invented row is named, and so is each ranking unit an altered row moves."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta

import orjson
from test_end_to_end import TRANSIENT, send_day, wait_for_sink

from infra.processes import wait_until
from sinks.clickhouse import ServerEngine
from sinks.replay import ReplayReport, compare_rankings, period_months, replay
from sinks.sink import BREACH_COLUMNS, CASE_EVENT_COLUMNS
from streams.domain.reference import load_reference
from whistle.devtools.harness import Pipeline, read_all
from whistle.devtools.simulate import SimConfig, simulate
from whistle.ground.names import Topics

START = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


def _run_a_day(settings, logs) -> None:
    day = list(simulate(load_reference(), SimConfig(seed=3, start=START, days=1.0, incidents_per_day=60)))
    pipeline = Pipeline(settings, logs).wait_ready()
    topics = Topics.with_prefix(settings.topic_prefix)
    try:
        send_day(settings, day, START + timedelta(days=3))
        wait_until(lambda: len(read_all(settings, [topics.breaches])) > 0, 60, "the day's breaches", 1.0, TRANSIENT)
        wait_for_sink(settings, pipeline)
    finally:
        pipeline.stop()


def _cli_replay(settings) -> tuple[int, dict]:
    env = {**os.environ, **settings.to_env()}
    done = subprocess.run([sys.executable, "-m", "whistle", "audit", "replay", "--format", "json"], env=env, capture_output=True,
                          text=True, timeout=300)
    first = done.stdout.splitlines()[0] if done.stdout else "{}"
    return done.returncode, orjson.loads(first)


def _replay_as_auditor(settings):
    ch = settings.clickhouse
    auditor = ServerEngine.from_settings(dataclasses.replace(ch, user=ch.auditor_user, password=ch.auditor_password))
    try:
        return replay(settings, auditor, ch.database, 0, 2**63 - 1)
    finally:
        auditor.close()


def test_a_day_replayed_from_the_case_stream_is_identical_and_an_altered_row_is_named(isolated, tmp_path, monkeypatch):
    _run_a_day(isolated, tmp_path / "logs")
    ch, db = isolated.clickhouse, isolated.clickhouse.database
    scratch_parent = tmp_path / "tmp"
    scratch_parent.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_parent))  # where replay's scratch store goes
    clean = _replay_as_auditor(isolated)
    assert clean.identical and clean.derived["case_events"] == clean.stored["case_events"] > 100 and clean.derived["breaches"] > 0
    assert clean.months == ("2026-11",) and not clean.rankings_not_recomputed
    assert clean.derived["rankings"] == clean.stored["rankings"] > 2  # the four tiers' units of the month, all identical
    assert not list(scratch_parent.iterdir())  # the scratch store is gone
    code, summary = _cli_replay(isolated)  # the command, as the auditor: identical, rankings its third table
    assert code == 0 and [row["table"] for row in summary] == ["case_events", "breaches", "rankings"]

    admin = ServerEngine.from_settings(ch)
    try:  # hand one case to another grid: a copy of its opened event, holder changed (the last copy wins in FINAL)
        opened = admin.execute(f"SELECT {', '.join(CASE_EVENT_COLUMNS)} FROM {db}.case_events "
                               f"WHERE kind = 'opened' AND assignee_tier = 'grid' ORDER BY case_id LIMIT 1")[0]
        holder = CASE_EVENT_COLUMNS.index("assignee_unit_id")
        other = admin.execute(f"SELECT any(assignee_unit_id) FROM {db}.case_events WHERE kind = 'opened' AND assignee_tier = 'grid' "
                              f"AND assignee_unit_id != %(holder)s", {"holder": opened[holder]})[0][0]
        admin.insert(f"{db}.case_events", CASE_EVENT_COLUMNS, [opened[:holder] + (other,) + opened[holder + 1:]])
    finally:
        admin.close()
    moved = _replay_as_auditor(isolated)
    assert moved.counts["case_events"] == {"missing": 0, "extra": 0, "differs": 1} and moved.counts["breaches"]["differs"] == 0
    ranked = [d for d in moved.listed if d.table == "rankings"]
    assert sum(moved.counts["rankings"].values()) == len(ranked) > 0 and moved.counts["rankings"]["extra"] == 0
    assert f"2026-11 grid {other}" in {d.key for d in ranked}  # it now held the case too (from its opening)
    assert all(d.key.startswith("2026-11 grid ") for d in ranked)  # nothing moved at the other tiers: those rankings are identical
    gained = next(d for d in ranked if d.key == f"2026-11 grid {other}")
    assert gained.kind == "differs" and ("received: stored" in gained.detail or "rank: stored" in gained.detail)

    admin = ServerEngine.from_settings(ch)
    try:
        row = admin.execute(f"SELECT {', '.join(CASE_EVENT_COLUMNS)} FROM {db}.case_events WHERE seq > 1 ORDER BY case_id, seq LIMIT 1")[0]
        note = CASE_EVENT_COLUMNS.index("note")
        admin.insert(f"{db}.case_events", CASE_EVENT_COLUMNS, [row[:note] + ("rewritten by hand",) + row[note + 1:]])
        breach = admin.execute(f"SELECT {', '.join(BREACH_COLUMNS)} FROM {db}.breaches LIMIT 1")[0]
        admin.insert(f"{db}.breaches", BREACH_COLUMNS, [("invented-breach",) + breach[1:]])
    finally:
        admin.close()
    code, _ = _cli_replay(isolated)
    assert code == 1
    altered = _replay_as_auditor(isolated)
    assert not altered.identical
    assert altered.counts["case_events"] == {"missing": 0, "extra": 0, "differs": 2}  # the street moved above, and the note
    assert altered.counts["breaches"] == {"missing": 0, "extra": 1, "differs": 0}
    differs = next(d for d in altered.listed if d.table == "case_events" and d.key == row[0])
    assert differs.case_id == row[1] and "note: stored 'rewritten by hand'" in differs.detail


def test_the_months_ranked_are_the_period_s_clipped_to_the_case_log():
    day = 86_400_000
    nov_2 = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp() * 1000)
    assert period_months(0, 2**63 - 1, [nov_2, nov_2 + 40 * day]) == ("2026-11", "2026-12")
    assert period_months(nov_2 + day, 2**63 - 1, [nov_2, nov_2 + 2 * day]) == ("2026-11",)
    assert period_months(0, nov_2, [nov_2, nov_2 + day]) == ()  # everything after the period
    assert period_months(0, 2**63 - 1, []) == ()
    # 2026-10-31 17:00 UTC is November 1st, 01:00 in the city (Asia/Shanghai): the city's month counts
    assert period_months(0, 2**63 - 1, [int(datetime(2026, 10, 31, 17, 0, tzinfo=UTC).timestamp() * 1000)]) == ("2026-11",)


class _Untouchable:
    def execute_with_columns(self, *args, **kwargs):
        raise AssertionError("the audit store was ranked although the scratch store could not be made")


def test_without_chdb_replay_says_rankings_were_not_recomputed(monkeypatch):
    monkeypatch.setitem(sys.modules, "chdb", None)  # `import chdb` raises ImportError
    report = compare_rankings([], [], _Untouchable(), "whistle", ("2026-11",), None, ReplayReport())
    assert "chdb" in report.rankings_not_recomputed and "not importable" in report.rankings_not_recomputed
    assert "rankings" not in report.counts and report.identical is True
