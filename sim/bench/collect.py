"""The collector benchmark, run by ``scripts/bench_collect``. Not a test: it prints figures.

A fleet of simulated devices (each a real :class:`~edge.store.Outbox`, :class:`~edge.sync.MqttLink`
and :class:`~edge.sync.Uplink`, all in this process) sends through a private Mosquitto to real
``edge collect`` processes, in four cases: one collector on SQLite, two on one SQLite file through a
shared subscription (``--share``), one on PostgreSQL, two on PostgreSQL. Counters and loudspeakers
are three to five, as in a commune, and each sends its events in the proportions of a real day:
a counter ~100 chained ratings to 288 health reports (one every 5 min), a loudspeaker ~20 plays
(scheduled, started, finished: 60 chained ``broadcast`` events) to 288 health reports.

Each case has two phases on a fresh broker, database and fleet:

- **backlog**: every device has events committed before its uplink starts (as after an outage);
  the clock runs from starting the uplinks to the last evtack: the most the collectors store;
- **live**: every device commits on its own at a steady offered rate; events/s stored are taken
  from the first commit to the last evtack, and each event's latency from its commit (``append``
  returned) to the first evtack that covers it.

Then every committed id must be stored exactly once, every device must have nothing pending and
every chain must be whole: a case that stores wrongly says so in capitals and the run exits 3.
In the same run, the rows the first case stored are inserted again with plain ``executemany`` (one
transaction per batch, at the collector's sizes) into a fresh SQLite file and a fresh PostgreSQL
database of the same schema: the raw baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from paho.mqtt.reasoncodes import ReasonCode

from edge.config import BrokerAddress, SyncConfig
from edge.health import health_data
from edge.server.collector import GROUP_MAX_EVENTS
from edge.server.storage import PostgresStorage, SqliteStorage
from edge.store import NewEvent, Outbox
from edge.store.chain import CHAINED_TYPES
from edge.sync import LinkSettings, MqttLink, Uplink
from edge.topics import Topics
from sim.bench.common import (
    MachineLoad,
    ProcessCpu,
    add_common_arguments,
    child_pid,
    cpu_line,
    cpu_seconds,
    line,
    memory_kb,
    percentile,
    run_in_workdir,
    say,
)
from sim.bench.pipeline import COMMUNE, ROOT_TOPIC, Observer
from sim.broker import MosquittoBroker
from sim.harness import EdgeProcess, wait_for
from sim.postgres import fresh_database, postgres_server

#: A real day, per device: what the sizing multiplies out (see the module's doc).
DAY: dict[str, dict[str, int]] = {
    "counter": {"rating": 100, "health": 288},
    "loudspeaker": {"broadcast": 60, "health": 288},
}
#: Every event chained: the collector's worst case (each store reads and verifies chains).
CHAINED_ONLY: dict[str, dict[str, int]] = {"counter": {"rating": 1}, "loudspeaker": {"broadcast": 1}}
MIXES = {"day": DAY, "chained": CHAINED_ONLY}
#: Devices of one commune (a one-stop counter office and its neighbourhoods' loudspeakers).
COMMUNE_DEVICES = {"counter": 3, "loudspeaker": 5}
#: Vietnam: communes, provinces (a province's collectors serve its communes).
COMMUNES = 10_000
PROVINCES = 34
#: The capacity asked of a setup over its mean load: office hours concentrate the ratings, and a
#: district-wide outage ends with every device sending its backlog at once.
HEADROOM = 10

#: The collector's columns, as :mod:`edge.server.storage` writes them.
COLUMNS = ("id", "device", "commune", "epoch", "seq", "type", "priority", "ts", "clock_synced", "data", "received_at")


@dataclass(frozen=True)
class Case:
    backend: str  # "sqlite" | "postgresql"
    collectors: int

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.collectors}"

    @property
    def title(self) -> str:
        return f"{'SQLite' if self.backend == 'sqlite' else 'PostgreSQL'}, {self.collectors} collector" + (
            "s (--share)" if self.collectors > 1 else ""
        )


CASES = (Case("sqlite", 1), Case("sqlite", 2), Case("postgresql", 1), Case("postgresql", 2))


# -- what the devices commit ------------------------------------------------------------------------


class Mix:
    """The next event type of one device, in fixed proportions and evenly spread (no randomness, so
    two runs send the same events)."""

    def __init__(self, weights: dict[str, int]) -> None:
        self.weights = weights
        self.total = sum(weights.values())
        self.counts = dict.fromkeys(weights, 0)
        self.n = 0

    def next(self) -> str:
        self.n += 1
        # The type furthest behind its share so far.
        kind = max(self.weights, key=lambda t: self.weights[t] * self.n / self.total - self.counts[t])
        self.counts[kind] += 1
        return kind


SCORES = {4: ("very_satisfied", "Rất hài lòng"), 3: ("satisfied", "Hài lòng"), 2: ("neutral", "Bình thường")}
SCORES[1] = ("dissatisfied", "Không hài lòng")


def rating_data(device: str, k: int) -> dict[str, Any]:
    """A rating as the counter's rating service writes it (officer mode, a window per case)."""
    score = (4, 4, 3, 4, 2, 3, 4, 1)[k % 8]
    label, text = SCORES[score]
    return {
        "counter": f"{device}-q1",
        "officer": f"nv-{k % 5:02d}",
        "officer_from": "assignment",
        "score": score,
        "label": label,
        "text": text,
        "button": 5 - score,
        "window": "officer",
        "window_id": f"w-{device}-{k:06d}",
        "case": f"HS-{k:06d}",
        "misuse": None,
        "panel": "panel-4btn-serial",
    }


def broadcast_data(device: str, k: int) -> dict[str, Any]:
    """A proof-of-play event as the loudspeaker's scheduler writes it: scheduled, started, finished."""
    state = ("scheduled", "started", "finished")[k % 3]
    play = k // 3
    sha = f"{play:064x}"
    return {
        "broadcast_id": f"tb-{play:05d}",
        "state": state,
        "priority": "normal",
        "zones": ["khu-pho-1", "khu-pho-2"],
        "source": {"kind": "url", "sha256": sha, "url": f"https://commune.example/audio/{play}.mp3", "bytes": 412_000},
        "sha256": sha,
        "started_at": "2026-11-21T06:00:02+07:00" if state != "scheduled" else None,
        "ended_at": "2026-11-21T06:04:10+07:00" if state == "finished" else None,
        "duration_s": 248.1 if state == "finished" else None,
        "level_dbfs": -18.4 if state == "finished" else None,
        "heard_dbfs": None,
        "reason": None,
        "occurrence": "2026-11-21T06:00:00+07:00",
        "play": 1,
        "repeat": 1,
        "cmd_id": f"0193{play:028x}",
    }


# -- the fleet --------------------------------------------------------------------------------------


class CountingLink(MqttLink):
    """The device's link, counting the payload bytes of the event batches it publishes (resends too:
    they are on the wire as well)."""

    def __init__(self, settings: LinkSettings) -> None:
        super().__init__(settings)
        self.evt_bytes = 0
        self.evt_messages = 0

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, expiry_s: int | None = None
    ) -> Future[ReasonCode | None]:
        if "/evt/" in topic:
            self.evt_bytes += len(payload)
            self.evt_messages += 1
        return super().publish(topic, payload, qos, retain, expiry_s)


@dataclass(frozen=True)
class Commit:
    seq: int
    id: str
    type: str
    at: float  # time.monotonic() when append returned: committed on the device
    wall: float  # time.time() at the same moment, to compare with the collector's received_at


class FleetDevice:
    """One simulated device: its outbox, link and uplink, and what it committed."""

    def __init__(self, work: Path, broker: MosquittoBroker, name: str, role: str, weights: dict[str, int]) -> None:
        self.name = name
        self.role = role
        self.mix = Mix(weights)
        self.started = time.monotonic()
        self.outbox = Outbox(work / name / "events.db")
        self.link = CountingLink(
            LinkSettings(address=BrokerAddress.parse(broker.url), client_id=name, reconnect_min_s=0.1)
        )
        self.uplink = Uplink(self.outbox, self.link, Topics(ROOT_TOPIC, COMMUNE, name), SyncConfig())
        self.commits: list[Commit] = []
        self._k: dict[str, int] = {}

    def _event(self) -> NewEvent:
        kind = self.mix.next()
        k = self._k[kind] = self._k.get(kind, 0) + 1
        if kind == "rating":
            return NewEvent(kind, rating_data(self.name, k))
        if kind == "broadcast":
            return NewEvent(kind, broadcast_data(self.name, k))
        # The daemon's own health report: the machine's real figures and this store's queue.
        link = {"connected": self.link.connected.is_set(), "state": "up", "since": None}
        return NewEvent(kind, health_data(self.outbox, self.started, {"boot": 1, "link": link, "inflight": 0}))

    def fill(self, count: int, chunk: int = 100) -> list[Commit]:
        """Commit ``count`` events in transactions of ``chunk`` (not timed: the backlog's set-up)."""
        out: list[Commit] = []
        while len(out) < count:
            events = [self._event() for _ in range(min(chunk, count - len(out)))]
            committed = self.outbox.append_many(events)
            at, wall = time.monotonic(), time.time()
            out += [Commit(c.seq, c.id, e.type, at, wall) for c, e in zip(committed, events, strict=True)]
        self.commits += out
        return out

    def commit_one(self) -> Commit:
        """One event committed as the device's services do: one append, durable when it returns."""
        event = self._event()
        c = self.outbox.append(event.type, event.data)
        commit = Commit(c.seq, c.id, event.type, time.monotonic(), time.time())
        self.commits.append(commit)
        return commit

    def stop(self) -> None:
        self.uplink.stop()
        self.link.stop()
        self.outbox.close()


def make_fleet(work: Path, broker: MosquittoBroker, devices: int, mix: dict[str, dict[str, int]]) -> list[FleetDevice]:
    """``devices`` devices, counters and loudspeakers three to five (at least one counter)."""
    share = COMMUNE_DEVICES["counter"] / sum(COMMUNE_DEVICES.values())
    counters = max(1, round(devices * share))
    fleet = [FleetDevice(work, broker, f"counter-{i:02d}", "counter", mix["counter"]) for i in range(counters)]
    fleet += [
        FleetDevice(work, broker, f"loa-{i:02d}", "loudspeaker", mix["loudspeaker"]) for i in range(devices - counters)
    ]
    return fleet


# -- evtacks as the observer saw them ---------------------------------------------------------------


class FleetObserver(Observer):
    """The pipeline benchmark's observer, read incrementally (a fleet makes thousands of evtacks)."""

    def acks_since(self, device: str, index: int) -> list[tuple[float, list[list[int]]]]:
        with self._cond:
            return self.acks.get(device, [])[index:]


class AckTimes:
    """When the first evtack covering each wanted (device, seq) reached the observer."""

    def __init__(self, observer: FleetObserver) -> None:
        self.observer = observer
        self.read: dict[str, int] = {}
        self.wanted: dict[str, set[int]] = {}
        self.times: dict[tuple[str, int], float] = {}

    def want(self, device: str, seqs: Sequence[int]) -> None:
        self.wanted.setdefault(device, set()).update(seqs)

    def missing(self) -> int:
        """Take in the evtacks that came since the last call; how many wanted seqs none covers yet."""
        for device, wanted in self.wanted.items():
            if not wanted:
                continue
            new = self.observer.acks_since(device, self.read.get(device, 0))
            self.read[device] = self.read.get(device, 0) + len(new)
            for t, ranges in new:
                for a, b in ranges:
                    for s in range(a, b + 1):
                        if s in wanted:
                            wanted.discard(s)
                            self.times[(device, s)] = t
        return sum(len(w) for w in self.wanted.values())

    def wait(self, timeout: float, alive: Any) -> bool:
        """Poll until nothing wanted is missing; False on timeout or when ``alive()`` turns false."""
        deadline = time.monotonic() + timeout
        while self.missing():
            if time.monotonic() > deadline or not alive():
                return False
            time.sleep(0.1)
        return True


# -- databases --------------------------------------------------------------------------------------


def db_rows(db: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query on the collector's database (SQLite path or PostgreSQL URL), read apart."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]  # our own literal SQL
    lite = sqlite3.connect(db, timeout=30)
    try:
        return lite.execute(sql).fetchall()
    finally:
        lite.close()


def stored_bytes(db: str) -> int:
    """What the events take on disk: the SQLite file once its WAL is checkpointed, or PostgreSQL's
    ``pg_total_relation_size`` of ``events`` (its heap, TOAST and indexes)."""
    if db.startswith("postgresql://"):
        return int(db_rows(db, "SELECT pg_total_relation_size('events')")[0][0])
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    wal = Path(f"{db}-wal")
    return Path(db).stat().st_size + (wal.stat().st_size if wal.exists() else 0)


@dataclass
class Collectors:
    """The ``edge collect`` processes of one case."""

    processes: list[EdgeProcess] = field(default_factory=list)
    summaries: list[dict[str, Any]] | None = None

    @property
    def pids(self) -> dict[str, int | None]:
        return {f"collector-{chr(97 + i)}": p.proc.pid if p.proc else None for i, p in enumerate(self.processes)}

    def running(self) -> bool:
        return all(p.running for p in self.processes)

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM each; their summaries (the JSON line ``edge collect`` prints as it ends). Idempotent."""
        if self.summaries is not None:
            return self.summaries
        out: list[dict[str, Any]] = []
        for p in self.processes:
            text = p.stop().strip()
            try:
                out.append(json.loads(text.splitlines()[-1]) if text else {})
            except ValueError:
                out.append({"unreadable": text[-200:]})
        self.summaries = out
        return out


def start_collectors(work: Path, broker: MosquittoBroker, db: str, count: int) -> Collectors:
    group = Collectors()
    for i in range(count):
        name = f"collect-{chr(97 + i)}"
        args = ["collect", "--broker", broker.url, "--db", db, "--commune", COMMUNE, "--client-id", name]
        args += ["--summary-interval", "0", *(["--share", "pool"] if count > 1 else [])]
        group.processes.append(EdgeProcess(args, work / f"{name}.log").start())
    return group


# -- one case ---------------------------------------------------------------------------------------


def ms_stats(samples: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(samples, 50) * 1e3,
        "p95_ms": percentile(samples, 95) * 1e3,
        "max_ms": max(samples) * 1e3 if samples else math.nan,
    }


#: Less collector CPU than this is a handful of clock ticks (10 ms each): too few to divide by.
MIN_CPU_S = 0.2


def per_1000(cpu: dict[str, float], events: int) -> float:
    """Collector milliseconds of CPU (all collectors of the case) per 1000 events stored; NaN when
    the phase was too short to tell."""
    used = sum(v for k, v in cpu.items() if k.startswith("collector"))
    return 1e6 * used / events if events and used >= MIN_CPU_S else math.nan


def wire(fleet: Sequence[FleetDevice], before: tuple[int, int], events: int) -> dict[str, float]:
    payload = sum(d.link.evt_bytes for d in fleet) - before[0]
    messages = sum(d.link.evt_messages for d in fleet) - before[1]
    return {
        "payload_bytes": payload,
        "messages": messages,
        "bytes_per_event": payload / events if events else math.nan,
        "events_per_message": events / messages if messages else math.nan,
    }


def wire_counts(fleet: Sequence[FleetDevice]) -> tuple[int, int]:
    return sum(d.link.evt_bytes for d in fleet), sum(d.link.evt_messages for d in fleet)


def phase_backlog(
    fleet: Sequence[FleetDevice], observer: FleetObserver, collectors: Collectors, pids: dict[str, int | None], n: int
) -> dict[str, Any]:
    """Commit ``n`` events per device with no uplink running, then start them all and time the drain."""
    acks = AckTimes(observer)
    for d in fleet:
        acks.want(d.name, [c.seq for c in d.fill(n)])
    total = n * len(fleet)
    before = wire_counts(fleet)
    cpu = ProcessCpu(pids)
    t0 = time.monotonic()
    for d in fleet:
        d.uplink.start()
    if not acks.wait(120 + total / 100, collectors.running):
        raise RuntimeError(
            f"backlog: {acks.missing()} of {total} events never acknowledged"
            + ("" if collectors.running() else " (a collector died)")
        )
    t1 = max(acks.times.values())
    used = cpu.read()
    return {
        "events": total,
        "seconds": t1 - t0,
        "rate": total / (t1 - t0),
        "cpu_seconds": used,
        "collector_cpu_ms_per_1000": per_1000(used, total),
        "wire": wire(fleet, before, total),
    }


def phase_live(
    fleet: Sequence[FleetDevice],
    observer: FleetObserver,
    collectors: Collectors,
    pids: dict[str, int | None],
    db: str,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """Every device commits on its own thread at ``rate / devices`` events/s for ``seconds``."""
    per_device = rate / len(fleet)
    commits: dict[str, list[Commit]] = {d.name: [] for d in fleet}
    failures: list[BaseException] = []
    start = time.monotonic() + 0.2

    def feed(i: int, device: FleetDevice) -> None:
        # Devices start out of step, as real ones do: device i a fraction of a period after i - 1.
        k = 0
        first = start + i / rate
        try:
            while True:
                due = first + k / per_device
                if due - start >= seconds:
                    return
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                commits[device.name].append(device.commit_one())
                k += 1
        except BaseException as exc:  # reported below; a dead feeder would skew the rate silently
            failures.append(exc)

    before = wire_counts(fleet)
    cpu = ProcessCpu(pids)
    threads = [threading.Thread(target=feed, args=(i, d), name=f"feed-{d.name}") for i, d in enumerate(fleet)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"live: a device could not commit: {failures[0]!r}")
    acks = AckTimes(observer)
    for name, cs in commits.items():
        acks.want(name, [c.seq for c in cs])
    total = sum(len(cs) for cs in commits.values())
    if not acks.wait(120, collectors.running):
        raise RuntimeError(f"live: {acks.missing()} of {total} events never acknowledged")
    used = cpu.read()
    first = min(c.at for cs in commits.values() for c in cs)
    last = max(acks.times.values())
    latency = [acks.times[(name, c.seq)] - c.at for name, cs in commits.items() for c in cs]
    chained = [acks.times[(name, c.seq)] - c.at for name, cs in commits.items() for c in cs if c.type in CHAINED_TYPES]
    # The collector's received_at: taken just before its insert, so a lower bound of "stored", in
    # wall-clock milliseconds; the evtack (published after the commit) is the upper bound.
    wall = {c.id: c.wall for cs in commits.values() for c in cs}
    received = [
        datetime.fromisoformat(r).timestamp() - wall[i]
        for i, r in db_rows(db, "SELECT id, received_at FROM events")
        if i in wall
    ]
    offered = sum(len(cs) for cs in commits.values())
    return {
        "offered_rate": rate,
        "seconds": seconds,
        "events": offered,
        "rate": offered / (last - first),
        "evtack": ms_stats(latency),
        "evtack_chained": ms_stats(chained),
        "received_at": ms_stats(received),
        "cpu_seconds": used,
        "collector_cpu_ms_per_1000": per_1000(used, offered),
        "wire": wire(fleet, before, offered),
    }


def exactly_once(db: str, fleet: Sequence[FleetDevice]) -> dict[str, Any]:
    """Every committed id stored once and nothing else; nothing pending; every chain whole."""
    committed = {c.id for d in fleet for c in d.commits}
    rows = db_rows(db, "SELECT id FROM events")
    ids = [r[0] for r in rows]
    stored = set(ids)
    chained = {d.name: sum(1 for c in d.commits if c.type in CHAINED_TYPES) for d in fleet}
    chains = {
        r[0]: (int(r[1]), int(r[2]), int(r[3]))
        for r in db_rows(db, "SELECT device, events, verified, whole FROM chains")
    }
    broken = sorted(name for name, n in chained.items() if n and chains.get(name) != (n, n, 1))
    pending = sorted(d.name for d in fleet if d.outbox.stats().depth)
    out = {
        "committed": len(committed),
        "stored_rows": len(ids),
        "missing": len(committed - stored),
        "repeated": len(ids) - len(stored),
        "not_committed": len(stored - committed),
        "devices_pending": pending,
        "chains_broken": broken,
        "chains_whole": sum(1 for name, n in chained.items() if n and name not in broken),
    }
    out["ok"] = not (out["missing"] or out["repeated"] or out["not_committed"] or pending or broken)
    return out


def run_case(
    case: Case, args: argparse.Namespace, work: Path, pg_server: str | None
) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """One case on a fresh broker, database and fleet: its figures, and the rows it stored."""
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if case.backend == "postgresql":
            assert pg_server is not None
            db = stack.enter_context(fresh_database(pg_server, prefix="edge_bench_"))
        else:
            db = str(work / "collector.db")
        broker = MosquittoBroker(work / "broker").start()
        stack.callback(broker.stop)
        observer = FleetObserver(broker.port)
        observer.start()
        stack.callback(observer.stop)
        collectors = start_collectors(work, broker, db, case.collectors)
        stack.callback(collectors.stop)
        fleet = make_fleet(work / "devices", broker, args.devices, MIXES[args.mix])
        for d in fleet:
            stack.callback(d.stop)
        for d in fleet:
            d.link.start()
        if not wait_for(lambda: all(d.link.connected.is_set() for d in fleet), 60):
            raise RuntimeError("the fleet did not connect to the broker")
        # Every collector of the group subscribed: each says the server is online once it is.
        if not observer.wait(lambda: "server" in observer.online, 30) or not collectors.running():
            raise RuntimeError("the collectors did not come online")
        time.sleep(0.5)  # the second collector's subscription, which says nothing when it is active
        pids = {**collectors.pids, "mosquitto": child_pid(str(work / "broker")), "fleet": os.getpid()}

        backlog = phase_backlog(fleet, observer, collectors, pids, args.backlog)
        live = phase_live(fleet, observer, collectors, pids, db, args.rate, args.seconds)
        if not wait_for(lambda: all(d.outbox.stats().depth == 0 for d in fleet), 60):
            say("  (some devices still have events pending after 60 s)")
        check = exactly_once(db, fleet)
        peak_rss = {k: memory_kb(p)["VmHWM"] / 1024 for k, p in collectors.pids.items() if p is not None}
        cpu_total = {k: cpu_seconds(p) for k, p in collectors.pids.items() if p is not None}
        summaries = collectors.stop()
        rows = check["stored_rows"]
        size = stored_bytes(db)
        figures = {
            "case": case.name,
            "backlog": backlog,
            "live": live,
            "exactly_once": check,
            "stored_bytes": size,
            "stored_bytes_per_event": size / rows if rows else math.nan,
            "collectors": summaries,
            "collector_cpu_total_s": cpu_total,
            "collector_peak_rss_mb": peak_rss,
        }
        return figures, db_rows(db, f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY rowid")


def print_case(case: Case, f: dict[str, Any]) -> None:
    b, live, check = f["backlog"], f["live"], f["exactly_once"]
    line(
        f"backlog {b['events']} events",
        f"{b['rate']:.0f} events/s",
        f"{b['seconds']:.2f} s from starting the uplinks to the last evtack",
    )
    cpu_line("  CPU s", b["cpu_seconds"], b["seconds"])
    per = b["collector_cpu_ms_per_1000"]
    line(
        "  collector CPU per 1000 events",
        f"{per:.0f} ms",
        f"= {1e6 / per:.0f} events per collector CPU second" if per == per else f"under {MIN_CPU_S} CPU s: too short",
    )
    line(
        f"live {live['offered_rate']:.0f}/s offered, {live['seconds']:.0f} s",
        f"{live['rate']:.0f} events/s stored",
        f"{live['events']} events, first commit to last evtack",
    )
    e, c, r = live["evtack"], live["evtack_chained"], live["received_at"]
    line(
        "  commit -> evtack p50 / p95",
        f"{e['p50_ms']:.1f} / {e['p95_ms']:.1f} ms",
        f"max {e['max_ms']:.0f} ms; chained only p95 {c['p95_ms']:.1f} ms (upper bound of stored)",
    )
    line("  commit -> received_at p50 / p95", f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} ms", "lower bound, ms resolution")
    cpu_line("  CPU s", live["cpu_seconds"], live["seconds"])
    line(
        "  CPU per 1000 events",
        f"collectors {live['collector_cpu_ms_per_1000']:.0f} ms",
        f"mosquitto {1e6 * live['cpu_seconds'].get('mosquitto', math.nan) / live['events']:.0f} ms; "
        "at the offered rate, one event per message",
    )
    line(
        "stored bytes per event",
        f"{f['stored_bytes_per_event']:.0f} B",
        f"{f['stored_bytes'] / 1e6:.1f} MB for {check['stored_rows']} rows, indexes and chains included",
    )
    bw, lw = b["wire"], live["wire"]
    line(
        "MQTT payload bytes per event",
        f"{lw['bytes_per_event']:.0f} B live",
        f"{lw['events_per_message']:.1f} events/message; backlog {bw['bytes_per_event']:.0f} B "
        f"at {bw['events_per_message']:.0f} events/message",
    )
    if len(f["collectors"]) > 1:
        line(
            "share of the load", " / ".join(str(s.get("stored", "?")) for s in f["collectors"]), "events stored by each"
        )
    dups = sum(int(s.get("duplicates", 0)) for s in f["collectors"])
    if check["ok"]:
        line(
            "exactly once",
            "yes",
            f"{check['committed']} committed = {check['stored_rows']} stored; {check['chains_whole']} chains whole; "
            f"{dups} repeats ignored",
        )
    else:
        say(f"  !!! {case.name} STORED WRONGLY: {json.dumps(check)}")


# -- the raw baseline -------------------------------------------------------------------------------


def raw_sqlite(path: Path, rows: Sequence[tuple[Any, ...]], size: int) -> dict[str, float]:
    """Plain executemany, one transaction per ``size`` rows, into the collector's schema (WAL, FULL)."""
    SqliteStorage(path).close()  # the schema, made as the collector makes it
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        sql = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        start = time.perf_counter()
        for i in range(0, len(rows), size):
            conn.execute("BEGIN")
            conn.executemany(sql, rows[i : i + size])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return {"rows": len(rows), "batch": size, "rate": len(rows) / elapsed}


def raw_postgres(url: str, rows: Sequence[tuple[Any, ...]], size: int) -> dict[str, float]:
    """Plain executemany, one transaction per ``size`` rows, into the collector's schema."""
    import psycopg

    PostgresStorage(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        sql = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
        start = time.perf_counter()
        for i in range(0, len(rows), size):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows[i : i + size])  # type: ignore[arg-type]  # our own literal SQL
        elapsed = time.perf_counter() - start
    return {"rows": len(rows), "batch": size, "rate": len(rows) / elapsed}


def baselines(
    rows: Sequence[tuple[Any, ...]], single: int, work: Path, pg_server: str | None, runs: int
) -> dict[str, Any]:
    """Each raw insert ``runs`` times into a fresh database, the best kept: the baseline is the
    strongest this machine gave (its load moves while the benchmark runs)."""
    out: dict[str, Any] = {}
    for size in (GROUP_MAX_EVENTS, 1):
        some = rows if size > 1 else rows[:single]
        for backend in ("sqlite", "postgresql") if pg_server is not None else ("sqlite",):
            tries = []
            for n in range(runs):
                if backend == "sqlite":
                    tries.append(raw_sqlite(work / f"raw-{size}-{n}.db", some, size))
                else:
                    assert pg_server is not None
                    with fresh_database(pg_server, prefix="edge_bench_raw_") as url:
                        tries.append(raw_postgres(url, some, size))
            best = max(tries, key=lambda r: r["rate"])
            out[f"{backend}_{size}"] = {**best, "runs": [r["rate"] for r in tries]}
    return out


# -- sizing -----------------------------------------------------------------------------------------


def commune_day(mix: dict[str, dict[str, int]] = DAY) -> int:
    return sum(COMMUNE_DEVICES[role] * sum(mix[role].values()) for role in COMMUNE_DEVICES)


def sizing(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Events per day of a commune, a province and the country against the capacities measured.

    Two capacities per case: the backlog rate (what the collectors store when devices send hundreds
    of events per message, after an outage), and the live cost (collector CPU per event when every
    message carries one event, as it does day to day: a device commits an event every few minutes),
    turned into events/s per collector CPU core.
    """
    per_commune = commune_day()
    levels = {"commune": 1, "province": COMMUNES / PROVINCES, "country": COMMUNES}
    out: dict[str, Any] = {"events_per_commune_day": per_commune, "headroom": HEADROOM, "levels": {}, "cases": {}}
    for level, communes in levels.items():
        events = per_commune * communes
        out["levels"][level] = {
            "communes": communes,
            "events_per_day": events,
            "mean_events_per_s": events / 86400,
            "needed_events_per_s": HEADROOM * events / 86400,
        }
    for name, f in cases.items():
        per_core = 1e6 / f["live"]["collector_cpu_ms_per_1000"]  # NaN stays NaN
        out["cases"][name] = {
            "backlog_rate": f["backlog"]["rate"],
            "communes_at_backlog_rate": f["backlog"]["rate"] * 86400 / HEADROOM / per_commune,
            "live_events_per_core_s": per_core,
            "communes_per_core_live": per_core * 86400 / HEADROOM / per_commune,
            "stored_bytes_per_day": {
                level: v["events_per_day"] * f["stored_bytes_per_event"] for level, v in out["levels"].items()
            },
        }
    return out


def human_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


# -- the run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cases = [c for c in CASES if c.name in args.cases]
    figures: dict[str, Any] = {
        "devices": args.devices,
        "mix": args.mix,
        "backlog_per_device": args.backlog,
        "offered_rate": args.rate,
        "live_seconds": args.seconds,
        "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()},
        "cases": {},
    }
    # The fleet's links and uplinks log in this process: to a file, not between the figures.
    logging.basicConfig(
        filename=work / "bench.log", level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    load = MachineLoad()
    say(
        f"commune-edge collector benchmark: {args.devices} devices ({args.mix} mix), backlog {args.backlog} per "
        f"device, live {args.rate:.0f} events/s for {args.seconds:.0f} s; {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}; work dir {work}"
    )
    rows: list[tuple[Any, ...]] = []
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres_server()) if any(c.backend == "postgresql" for c in cases) else None
        for case in cases:
            say()
            say(case.title)
            try:
                f, stored = run_case(case, args, work / case.name, pg)
            except (RuntimeError, TimeoutError) as exc:
                kept = f"files in {work / case.name}" if args.workdir else "run with --workdir DIR to keep the files"
                say(f"  !!! {case.name} FAILED: {exc}; {kept}")
                figures["cases"][case.name] = {"case": case.name, "failed": str(exc)}
                continue
            rows = rows or stored
            figures["cases"][case.name] = f
            print_case(case, f)

        say()
        if rows:
            say(f"raw baseline: the {len(rows)} rows of the first case, plain executemany into the same schema")
            raw = baselines(rows, args.single_rows, work, pg, args.raw_runs)
            figures["raw"] = raw
            for key, r in raw.items():
                backend, size = key.rsplit("_", 1)
                line(
                    f"raw {backend}, {size} row{'s' if size != '1' else ''} per transaction",
                    f"{r['rate']:.0f} rows/s",
                    f"{r['rows']} rows; best of {', '.join(f'{x:.0f}' for x in r['runs'])}",
                )

    ok_cases = {k: f for k, f in figures["cases"].items() if "backlog" in f}
    figures["sizing"] = sizing(ok_cases)
    print_summary(figures)

    figures["machine"].update(load.report())
    say()
    say("method")
    say("  Stored = covered by an evtack that reached a paho subscriber in this process: the collector publishes")
    say("  it only after its commit, so commit -> evtack bounds commit -> stored from above (monotonic clock, no")
    say("  polling of the database, which would compete for the cores). The collector's received_at, taken just")
    say("  before its insert, bounds it from below (wall clock, milliseconds). Commit = Outbox.append returned.")
    say("  The fleet (outboxes, links, uplinks, the live phase's feeders) runs in this one process: its CPU is")
    say("  'fleet' above, and on a small machine it competes with the collectors for the same cores.")
    wrong = [k for k, f in figures["cases"].items() if not f.get("exactly_once", {}).get("ok", False)]
    figures["stored_wrongly_or_failed"] = wrong
    if wrong:
        say()
        say(f"!!! NOT EXACTLY ONCE, OR NOT MEASURED: {', '.join(wrong)} (see above)")
    return figures


def print_summary(figures: dict[str, Any]) -> None:
    say()
    say("summary")
    say(
        f"  {'case':<14} {'backlog':>8} {'CPU ms':>7} {'live':>6} {'p50':>6} {'p95':>6} {'CPU ms':>7} "
        f"{'B/event':>7} {'B/event':>7}  exactly"
    )
    say(
        f"  {'':<14} {'ev/s':>8} {'/1000':>7} {'ev/s':>6} {'ms':>6} {'ms':>6} {'/1000':>7} "
        f"{'stored':>7} {'wire':>7}  once"
    )
    for name, f in figures["cases"].items():
        if "backlog" not in f:
            say(f"  {name:<14} failed: {f.get('failed')}")
            continue
        b, live = f["backlog"], f["live"]
        say(
            f"  {name:<14} {b['rate']:>8.0f} {b['collector_cpu_ms_per_1000']:>7.0f} {live['rate']:>6.0f} "
            f"{live['evtack']['p50_ms']:>6.1f} {live['evtack']['p95_ms']:>6.1f} "
            f"{live['collector_cpu_ms_per_1000']:>7.0f} {f['stored_bytes_per_event']:>7.0f} "
            f"{live['wire']['bytes_per_event']:>7.0f}  " + ("yes" if f["exactly_once"]["ok"] else "NO")
        )
    for key, r in figures.get("raw", {}).items():
        say(f"  raw {key:<12} {r['rate']:>12.0f}  rows/s, {r['batch']} per transaction")
    s = figures["sizing"]
    say()
    say(
        f"sizing: a commune (3 counters, 5 loudspeakers) commits {s['events_per_commune_day']} events/day; "
        f"x{s['headroom']} headroom over the mean"
    )
    for level, v in s["levels"].items():
        say(
            f"  {level:<9} {v['communes']:>6.0f} communes {v['events_per_day']:>12,.0f} events/day "
            f"{v['mean_events_per_s']:>8.2f}/s mean {v['needed_events_per_s']:>9.1f}/s needed"
        )
    say(f"  {'case':<16} {'communes at':>11} {'live ev/s per':>13} {'communes per':>12}  stored per day")
    say(f"  {'':<16} {'backlog rate':>11} {'collector core':>13} {'core, live':>12}  commune / province / country")
    for name, c in s["cases"].items():
        stored = " / ".join(human_bytes(b) for b in c["stored_bytes_per_day"].values())
        say(
            f"  {name:<16} {c['communes_at_backlog_rate']:>11.0f} {c['live_events_per_core_s']:>13.0f} "
            f"{c['communes_per_core_live']:>12.0f}  {stored}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=None, help="simulated devices (default 50)")
    parser.add_argument("--backlog", type=int, default=None, help="events per device in the backlog (default 1000)")
    parser.add_argument("--rate", type=float, default=None, help="live events/s offered by the fleet (default 200)")
    parser.add_argument("--seconds", type=float, default=None, help="length of the live phase (default 30)")
    parser.add_argument("--mix", choices=sorted(MIXES), default="day", help="a real day's mix, or chained events only")
    parser.add_argument(
        "--single-rows", type=int, default=None, help="rows of the one-row-per-transaction baseline (default 2000)"
    )
    parser.add_argument("--raw-runs", type=int, default=None, help="runs of each raw baseline, best kept (default 3)")
    parser.add_argument(
        "--cases",
        default=",".join(c.name for c in CASES),
        help=f"which cases, comma-separated (default all: {','.join(c.name for c in CASES)})",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    args.devices = args.devices or (10 if quick else 50)
    args.backlog = args.backlog or (50 if quick else 1000)
    args.rate = args.rate or (40.0 if quick else 200.0)
    args.seconds = args.seconds or (3.0 if quick else 30.0)
    args.single_rows = args.single_rows or (200 if quick else 2000)
    args.raw_runs = args.raw_runs or (1 if quick else 3)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - {c.name for c in CASES}
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    figures: dict[str, Any] = {}

    def measure(a: argparse.Namespace, work: Path) -> dict[str, Any]:
        figures.update(run(a, work))
        return figures

    rc = run_in_workdir(args, measure, "commune-edge-bench-collect-")
    if rc == 0 and figures.get("stored_wrongly_or_failed"):
        return 3
    return rc


if __name__ == "__main__":
    sys.exit(main())
