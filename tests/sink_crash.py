"""A sink that dies like a killed process right after its first INSERT: before the batch is recorded in
sink_batches and before its Kafka offsets are committed. Configured by WHISTLE_* variables; used by
tests/test_sink.py, which restarts a sink after it and checks that nothing was stored twice."""
from __future__ import annotations

import os

from sinks.sink import build_sink
from whistle.ground.settings import Settings


def die(table: str, rows: int) -> None:
    os._exit(137)


if __name__ == "__main__":
    build_sink(Settings.from_env(), batch_rows=1000, batch_seconds=0.3, on_inserted=die).run(max_idle_s=20)
