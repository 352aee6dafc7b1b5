"""What every benchmark shares: percentiles, CPU and memory of processes, the targets table, and
running in a work directory with ``--json`` output."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# -- numbers --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def stats_ms(samples: Sequence[float], quantiles: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """Samples in seconds → ``{"samples", "p50_ms", ..., "max_ms"}`` in milliseconds."""
    ms = [s * 1000 for s in samples]
    out: dict[str, float] = {"samples": len(ms)}
    for q in quantiles:
        out[f"p{q}_ms"] = percentile(ms, q)
    out["max_ms"] = max(ms) if ms else math.nan
    return out


# -- output ---------------------------------------------------------------------------------------


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def line(label: str, value: str, note: str = "") -> None:
    """One figure: a label, its value and a note, in columns."""
    say(f"  {label:<34} {value:<26} {note}".rstrip())


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@dataclass(frozen=True)
class Target:
    """A target and whether this run met it: ``Target("live p95 <= 100 ms", p95 <= 100, "90.1 ms")``."""

    name: str
    ok: bool
    value: str


def report_targets(targets: Sequence[Target]) -> dict[str, dict[str, Any]]:
    """Print the PASS/MISS table and return it for the JSON figures."""
    say()
    say("targets")
    for t in targets:
        say(f"  {verdict(t.ok)}  {t.name:<34} {t.value}")
    return {t.name: {"pass": t.ok, "value": t.value} for t in targets}


# -- processes ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), RssAnon and RssFile (the resident pages of libraries and other files) of
    a process, in kB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for row in f:
            key, _, rest = row.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0])
    return out


def child_pid(name: str) -> int | None:
    """Pid of this process's child whose command line mentions ``name`` (e.g. the broker)."""
    for task in Path("/proc/self/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if name in cmdline:
                return int(pid)
    return None


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine have spent busy since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ProcessCpu:
    """CPU seconds used by a set of processes between ``__init__`` and ``read()``, and by every
    other process on the machine ("others": busy time of all CPUs minus ours)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v is not None}
        self.before = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self.busy_before = machine_busy_seconds()

    def add(self, name: str, pid: int) -> None:
        """Count a process started after ``__init__`` from its start."""
        self.pids[name] = pid
        self.before[name] = 0.0

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, p in self.pids.items():
            try:
                out[k] = cpu_seconds(p) - self.before[k]
            except OSError:
                continue
        out["others"] = max(0.0, machine_busy_seconds() - self.busy_before - sum(out.values()))
        return out


class MachineLoad:
    """What every other process on the machine used during a whole run, said at its end: figures
    taken while others load the cores are skewed, and the reader must know."""

    def __init__(self) -> None:
        self.busy, self.own, self.wall = machine_busy_seconds(), own_seconds(), time.monotonic()

    def report(self) -> dict[str, float]:
        """Print the line and return ``wall_s``, ``others_cpu_s``, ``others_share_pct``. Call it once
        every child has been waited for, so that our own CPU seconds include theirs."""
        wall = time.monotonic() - self.wall
        others = max(0.0, machine_busy_seconds() - self.busy - (own_seconds() - self.own))
        share = 100 * others / (wall * (os.cpu_count() or 1))
        say()
        say(
            f"other processes on this machine used {others:.1f} CPU s during the {wall:.0f} s run "
            f"({share:.0f} % of its CPUs)"
            + ("; the figures are skewed by that load, run again on a quiet machine" if share > 10 else "")
        )
        return {"wall_s": wall, "others_cpu_s": others, "others_share_pct": share}


def cpu_line(label: str, used: dict[str, float], wall: float) -> None:
    cpus = os.cpu_count() or 1
    line(
        label, ", ".join(f"{k} {v:.1f}" for k, v in used.items()), f"of {cpus * wall:.1f} CPU s ({wall:.1f} s x {cpus})"
    )


def idle_usage(pid: int, seconds: float) -> dict[str, float]:
    """CPU share of one core and RSS of a running process left alone for ``seconds``."""
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    time.sleep(seconds)
    t1, c1 = time.monotonic(), cpu_seconds(pid)
    mem = memory_kb(pid)
    return {
        "seconds": t1 - t0,
        "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
        "rss_mb": mem["VmRSS"] / 1024,
        "peak_rss_mb": mem["VmHWM"] / 1024,
        "anon_mb": mem["RssAnon"] / 1024,
        "file_mb": mem["RssFile"] / 1024,
    }


# -- running --------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a fast smoke run with fewer samples")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--workdir", type=Path, help="work here and keep the files (default: a temp dir, removed)")


def run_in_workdir(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, Path], dict[str, Any]],
    prefix: str,
    failures: tuple[type[BaseException], ...] = (TimeoutError, RuntimeError),
) -> int:
    """Run a benchmark in ``--workdir`` (kept) or a temporary directory (removed), write ``--json``.

    A missed target is a finding, not a failure of the benchmark: the exit status says only whether
    every figure could be measured (1, with the files kept, when one of ``failures`` was raised).
    """
    keep = args.workdir is not None
    work = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        figures = run(args, work)
    except failures as exc:
        say(f"benchmark failed: {exc}; files in {work}")
        keep = True
        return 1
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    return 0
