"""Whistle's own processes, started and stopped: the local stack, the demo, the benchmark and the tests use them.

Processes are real `whistle …` commands in their own process groups, configured only through the
`WHISTLE_*` environment built from a `Settings` object, logging to files. Every wait is bounded.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from whistle.ground.errors import StackError
from whistle.ground.settings import Settings


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2,
               tolerate: tuple[type[BaseException], ...] = ()) -> None:
    """Poll `check` until it is true; StackError after `timeout_s`.

    Exceptions of the `tolerate` types count as "not yet" (e.g. Kafka errors while a broker restarts);
    the last one is named if time runs out.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except tolerate as exc:
            last_error = exc
        time.sleep(interval_s)
    raise StackError(f"timed out after {timeout_s:.0f}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


@dataclass
class WhistleProcess:
    """A running `whistle` subcommand."""

    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                return self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.poll()

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(settings: Settings, name: str, args: list[str], log_dir: Path, **overrides: str) -> WhistleProcess:
    """Start `whistle ARGS` with `settings` (plus WHISTLE_* `overrides`) in its own process group."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    env = {**os.environ, **settings.to_env(), **overrides, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        popen = subprocess.Popen([sys.executable, "-m", "whistle", *args], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return WhistleProcess(name, popen, log)


def record_pids(path: Path, processes: list[WhistleProcess]) -> None:
    """Remember which processes a command left running, so `whistle stack down` can stop them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p.popen.pid}\n" for p in processes))


def stop_recorded(path: Path, timeout_s: float = 30.0) -> list[int]:
    """Stop (SIGTERM, then SIGKILL) the recorded processes that are still Whistle processes; returns their pids."""
    stopped: list[int] = []
    try:
        pids = [int(line) for line in path.read_text().split()]
    except (OSError, ValueError):
        return stopped
    for pid in pids:
        try:
            if b"whistle" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue  # gone, or the pid now belongs to someone else
            os.killpg(pid, signal.SIGTERM)
        except (OSError, ProcessLookupError):
            continue
        stopped.append(pid)
    deadline = time.monotonic() + timeout_s
    while any(Path(f"/proc/{pid}").exists() for pid in stopped) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in stopped:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    path.unlink(missing_ok=True)
    return stopped
