"""The machine the figures were measured on, and the PIDs of the local stack's servers."""
from __future__ import annotations

import os
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from infra.stack import LocalStack
from sinks.clickhouse import ServerEngine
from whistle.ground.settings import Settings


def describe_machine(settings: Settings) -> dict[str, Any]:
    """Cores, memory, CPU model, load, and the versions that matter for the figures."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ch = settings.clickhouse
    engine = ServerEngine.from_settings(replace(ch, user=ch.admin_user, password=ch.admin_password), database="default")
    try:
        clickhouse = engine.execute("SELECT version()")[0][0]
    finally:
        engine.close()
    return {"cpu_model": model, "cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(), "platform": platform.platform(),
            "kafka": settings.kafka.bootstrap_servers, "kafka_version": settings.stack.kafka_version if stack_pids(settings) else "external",
            "clickhouse_version": clickhouse}


def stack_pids(settings: Settings) -> dict[str, int]:
    """PIDs of the local stack's Kafka broker and ClickHouse server, when this machine runs them."""
    return {("kafka broker" if s.name.startswith("kafka") else "clickhouse server"): s.pid
            for s in LocalStack(settings).status() if s.running and s.pid}
