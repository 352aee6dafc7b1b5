"""Running real ``edge`` processes against a private broker: used by the demo, tests and benchmarks.

Everything here drives the installed command line in subprocesses, exactly as a technician or
systemd would, so what is exercised is the real daemon, the real collector and real Mosquitto.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edge.config import starter_config


def edge_command() -> list[str]:
    """How to run ``edge`` with this interpreter (works before and after installation)."""
    return [sys.executable, "-m", "edge"]


def write_device_config(
    path: Path,
    broker_url: str,
    *,
    device: str = "counter-01",
    commune: str = "gia-ray",
    role: str = "counter",
    state_dir: Path | None = None,
    extra: str = "",
) -> Path:
    """A device config from the same starter ``edge init`` writes, plus optional extra TOML."""
    text = starter_config(role, device, commune, broker_url, str(state_dir or path.parent / "state"))  # type: ignore[arg-type]
    path.write_text(text + ("\n" + extra if extra else ""), encoding="utf-8")
    return path


@dataclass
class EdgeProcess:
    """One long-running ``edge`` subcommand (run, collect, sim) with its log in a file."""

    args: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    _log: IO[str] | None = None

    def start(self) -> EdgeProcess:
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*edge_command(), *self.args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **self.env},
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, like a power cut for the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> str:
        """SIGTERM and wait; returns what the process printed on stdout."""
        out = ""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                out, _ = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
        if self._log is not None:
            self._log.close()
            self._log = None
        return out or ""


def run_edge(
    args: Sequence[str], env: Mapping[str, str] | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run one short ``edge`` command to completion."""
    return subprocess.run(
        [*edge_command(), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=check,
        timeout=timeout,
    )


def collector_rows(db: Path, query: str = "SELECT id, type, seq FROM events", params: Sequence[Any] = ()) -> list[Any]:
    """Rows from the collector's database (read with a fresh connection)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(query, params).fetchall()
    except sqlite3.OperationalError:
        return []  # the table may not exist yet
    finally:
        conn.close()


def daemon_link(db: Path, pid: int | None = None) -> str | None:
    """The link state (``up``/``down``) that the daemon with ``pid`` (any daemon if None) last recorded
    in its store's ``meta``, or None if that daemon has not started yet. Read-only, never creates the file."""
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return None
    try:
        rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('daemon', 'link')").fetchall())
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    daemon = rows.get("daemon", "").split()
    if not daemon or (pid is not None and daemon[0] != str(pid)):
        return None
    link = rows.get("link", "").split()
    return link[0] if link else None


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
