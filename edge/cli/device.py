"""``edge run``, ``edge status``, ``edge events`` and ``edge emit``: the device side."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.cli.common import (
    CliError,
    add_common,
    json_object_arg,
    load,
    open_outbox,
    open_outbox_readonly,
    out,
    print_json,
)
from edge.config import EdgeConfig, config_path
from edge.exceptions import StoreError
from edge.health import chain_head, cpu_temp_c, mem_available_bytes, read_throttled
from edge.services import RATING_HARDWARE_META
from edge.services.broadcast import HARDWARE_META as BROADCAST_HARDWARE_META
from edge.store import PRIORITIES, Outbox
from edge.store.host import pid_alive, read_lock_note
from edge.store.outbox import META_DISK_FULL
from edge.sync.undeliverable import undeliverable, undeliverable_count


def cmd_run(args: argparse.Namespace) -> int:
    from edge.commands.desired import load_effective_config
    from edge.daemon import serve

    config, base, _version = load_effective_config(args.config)
    # The file this daemon runs with, for the versions it installs and checks (device.update) to read too.
    os.environ["EDGE_CONFIG"] = str(config_path(args.config).absolute())
    return serve(config, base)


@dataclass(frozen=True)
class DaemonSeen:
    """The ``edge run`` that owns the store, as ``edge status`` finds it: its pid while it runs,
    and its note in ``daemon.lock`` (empty unless the note is the running daemon's own)."""

    pid: int | None
    note: dict[str, Any]
    #: The note left by a daemon that no longer runs (it may have stopped while the disk was full).
    left: dict[str, Any]

    @property
    def running(self) -> bool:
        return self.pid is not None


def find_daemon(state_dir: Path, meta_daemon: str | None) -> DaemonSeen:
    """The pid in ``daemon.lock`` (written as the daemon takes the lock, before it opens the store,
    so even a daemon waiting for room to open it is found) if it runs, else the one the store's
    ``daemon`` meta names."""
    lock_pid, note = read_lock_note(state_dir)
    if lock_pid is not None and pid_alive(lock_pid):
        return DaemonSeen(lock_pid, note, {})
    meta = (meta_daemon or "").split()
    pid = int(meta[0]) if meta and meta[0].isdigit() and pid_alive(int(meta[0])) else None
    return DaemonSeen(pid, {}, note)


def _link(daemon: DaemonSeen, meta_link: str | None) -> dict[str, Any]:
    """The broker link as the running daemon last said: in its note, kept where a full disk does not
    stop it (the store's copy may wait in memory for room); else the store's ``link`` meta."""
    noted = daemon.note.get("link")
    if daemon.running and isinstance(noted, dict) and noted.get("state"):
        return {"state": str(noted["state"]), "since": noted.get("since")}
    link = (meta_link or "unknown").split()
    return {"state": link[0] if daemon.running else "not running", "since": link[1] if len(link) > 1 else None}


def status_report(config: EdgeConfig, outbox: Outbox) -> dict[str, Any]:
    stats = outbox.stats()
    daemon = find_daemon(outbox.path.parent, outbox.get_meta("daemon"))
    running = daemon.running
    age = stats.oldest_pending_age_s
    return {
        "device": config.device.id,
        "commune": config.device.commune,
        "roles": list(config.device.roles),
        "broker": config.mqtt.broker,
        "daemon": {"running": running, "pid": daemon.pid},
        "link": _link(daemon, outbox.get_meta("link")),
        "queue": {
            "depth": stats.depth,
            "by_priority": stats.depth_by_priority,
            "oldest_pending_age_s": None if age is None else round(age, 1),
        },
        "last_ack": outbox.get_meta("last_ack"),
        "evictions": stats.evictions,
        "store": {"path": str(outbox.path), "epoch": stats.epoch, "bytes": stats.db_bytes, "cap": stats.max_bytes},
        "counters": stats.counters,
        "undeliverable_total": undeliverable_count(outbox),
        "undeliverable": undeliverable(outbox),
        "hardware": _hardware_problems(outbox, running),
        "host": host_health(outbox.path.parent),
        "disk": disk_report(outbox, daemon),
        "chain": chain_head(outbox),
    }


def unreadable_store_report(config: EdgeConfig, daemon: DaemonSeen, problem: str) -> dict[str, Any]:
    """What ``edge status`` can say while the store cannot even be read (SQLite cannot make its
    ``-shm`` file on a full disk) and a daemon runs: what its ``daemon.lock`` note says. The keys of
    :func:`status_report`, with None for what only the store knows."""
    state_dir = config.store.state_dir
    return {
        "device": config.device.id,
        "commune": config.device.commune,
        "roles": list(config.device.roles),
        "broker": config.mqtt.broker,
        "daemon": {"running": daemon.running, "pid": daemon.pid},
        "link": _link(daemon, None),
        "queue": None,
        "last_ack": None,
        "evictions": None,
        "store": {"path": str(config.db_path), "error": problem},
        "counters": {},
        "undeliverable_total": None,
        "undeliverable": [],
        "hardware": {},
        "host": host_health(state_dir),
        "disk": _disk(state_dir, daemon, counted=None, last=None),
        "chain": None,
    }


#: What a technician does about a full state disk.
DISK_FULL_FIX = (
    "free space on that disk (old logs: journalctl --vacuum-size=50M; files that are not events.db), or move "
    "store.state_dir to a larger disk; nothing stored is lost, and new events are taken again as soon as there is room"
)


def disk_report(outbox: Outbox, daemon: DaemonSeen) -> dict[str, Any]:
    """The state disk: free space, whether the daemon finds it full, and the events refused for it.

    While the disk is full the database cannot take a byte, so the daemon says so in its lock
    file's note (:class:`edge.store.host.DaemonLock`); the count is moved into the store's counters
    (``refused_disk_full``) once there is room again, or when the next daemon starts. ``waiting``
    is why the store could not be opened, while the daemon waits for room to open it.
    """
    try:
        last = json.loads(outbox.get_meta(META_DISK_FULL) or "null")
    except ValueError:
        last = None
    counted = int(outbox.counters().get("refused_disk_full", 0))
    return _disk(outbox.path.parent, daemon, counted, last if isinstance(last, dict) else None)


def _disk(state_dir: Path, daemon: DaemonSeen, counted: int | None, last: dict[str, Any] | None) -> dict[str, Any]:
    free = shutil.disk_usage(state_dir).free
    note = daemon.note if daemon.running else daemon.left
    episode = note.get("disk_full") if isinstance(note.get("disk_full"), dict) else None
    refused_now = int(episode.get("refused", 0)) if episode is not None else 0
    if episode is not None and not daemon.running:
        # A daemon that stopped while the disk was full: the next one counts what it refused.
        last = {"since": episode.get("since"), "refused": refused_now, "until": None, "stopped": True}
    # A daemon's word while it runs; without one, only a disk with no room at all is called full.
    live = episode if daemon.running else None
    full = live is not None or free == 0
    return {
        "full": full,
        "free_bytes": free,
        "since": live.get("since") if live is not None else None,
        "refused": refused_now,
        "refused_total": None if counted is None else counted + refused_now,
        "last_full": last,
        "waiting": str(live["waiting"]) if live is not None and live.get("waiting") else None,
        "fix": DISK_FULL_FIX if full else None,
    }


def _bytes_text(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _disk_lines(disk: dict[str, Any], state_dir: str) -> list[str]:
    if disk["full"]:
        since = f" since {disk['since']}" if disk["since"] else ""
        lines = [
            f"disk        FULL{since}: {_bytes_text(disk['free_bytes'])} free on the disk holding {state_dir}; "
            f"{disk['refused']} event(s) refused and not acknowledged (no thank-you shown; a serial panel "
            "sends its presses again)",
        ]
        if disk["waiting"]:
            lines.append(
                "            the daemon waits for room to open the event store, and starts in full as soon as "
                f"there is: {disk['waiting']}"
            )
        return [*lines, f"            fix: {disk['fix']}"]
    if disk["refused_total"]:
        last = disk["last_full"] or {}
        until = last.get("until") or "when edge run stopped"
        when = f", last from {last['since']} to {until}" if last.get("since") else ""
        return [f"disk        {disk['refused_total']} event(s) refused while the disk was full{when}"]
    return []


def host_health(state_dir: Path) -> dict[str, Any]:
    """This machine's temperature, throttling, load, memory and the state directory's free disk."""
    return {
        "cpu_temp_c": cpu_temp_c(),
        "throttled": read_throttled(),
        "load": [round(x, 2) for x in os.getloadavg()],
        "mem_available_bytes": mem_available_bytes(),
        "disk_free_bytes": shutil.disk_usage(state_dir).free,
    }


def _host_line(host: dict[str, Any]) -> str:
    parts = [] if host["cpu_temp_c"] is None else [f"{host['cpu_temp_c']:.1f} °C"]
    parts.append(f"load {host['load'][0]:.2f}")
    if host["mem_available_bytes"] is not None:
        parts.append(f"{host['mem_available_bytes'] / 2**20:.0f} MB memory free")
    parts.append(f"{_bytes_text(host['disk_free_bytes'])} disk free")
    flags = host["throttled"] or {}
    now = [f for f in ("under_voltage", "freq_capped", "throttled", "soft_temp_limit") if flags.get(f)]
    past = [f for f in ("under_voltage", "throttled") if flags.get(f + "_occurred") and not flags.get(f)]
    if now:
        parts.append("NOW: " + ", ".join(f.replace("_", "-") for f in now))
    if past:
        parts.append("since boot: " + ", ".join(f.replace("_", "-") for f in past))
    return ", ".join(parts)


def _hardware_problems(outbox: Outbox, running: bool) -> dict[str, str]:
    """The problems the services last wrote to the store's meta (``relays``, ``speaker``, ``panel``...),
    while the daemon that wrote them runs: a stopped daemon's old problems say nothing of the hardware now."""
    if not running:
        return {}
    problems: dict[str, str] = {}
    for key in (RATING_HARDWARE_META, BROADCAST_HARDWARE_META):
        try:
            found = json.loads(outbox.get_meta(key) or "{}")
        except ValueError:
            continue
        if isinstance(found, dict):
            problems.update({str(k): str(v) for k, v in found.items() if v})
    return problems


def cmd_status(args: argparse.Namespace) -> int:
    config = load(args)
    try:
        with open_outbox_readonly(config) as outbox:
            report = status_report(config, outbox)
    except StoreError as exc:
        # Unreadable (a full disk leaves SQLite no room for its -shm file) while a daemon runs:
        # say what it says. Without a running daemon the error is the answer.
        daemon = find_daemon(config.store.state_dir, None)
        if not daemon.running:
            raise
        report = unreadable_store_report(config, daemon, str(exc))
    if args.json:
        print_json(report)
        return 0
    daemon_line = f"running, pid {report['daemon']['pid']}" if report["daemon"]["running"] else "not running"
    lines = [
        f"device      {report['commune']}/{report['device']} ({', '.join(report['roles'])})",
        f"daemon      {daemon_line}",
        f"broker      {report['broker']}: {report['link']['state']}"
        + (f" since {report['link']['since']}" if report["link"]["since"] else ""),
    ]
    q = report["queue"]
    if q is None:
        lines.append(f"store       cannot be read: {report['store']['error']}")
    else:
        age = q["oldest_pending_age_s"]
        lines += [
            f"queue       {q['depth']} pending "
            f"({', '.join(f'{k} {v}' for k, v in q['by_priority'].items())})"
            + (f", oldest {age:.0f} s" if age is not None else ""),
            f"last ack    {report['last_ack'] or 'never'}",
            f"evictions   bulk {report['evictions']['bulk']}, normal {report['evictions']['normal']}",
            f"store       {report['store']['bytes']} of {report['store']['cap']} bytes, "
            f"epoch {report['store']['epoch']}",
        ]
    lines.append(f"host        {_host_line(report['host'])}")
    lines.extend(_disk_lines(report["disk"], str(config.store.state_dir)))
    chain = report["chain"]
    if q is not None:
        head = "nothing chained yet" if chain is None else f"n {chain['n']}, digest {chain['digest'][:16]}…"
        lines.append(f"chain       {head}")
    for part, problem in report["hardware"].items():
        lines.append(f"{part:<11} problem: {problem}")
    if report["undeliverable_total"]:
        lines.append(f"set aside   {report['undeliverable_total']} undeliverable event(s), see --json")
    out("\n".join(lines))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    config = load(args)
    with open_outbox_readonly(config) as outbox:
        events = outbox.list_events(type=args.type, state=args.state, since=args.since, limit=args.limit)
    if args.json:
        print_json([e.as_dict() for e in events])
        return 0
    for e in events:
        state = "pending" if e.acked_at is None else "acked"
        out(f"{e.seq:>8}  {e.ts}  {e.type:<10} {e.priority:<8} {state:<7} {e.id}  {e.data_json}")
    return 0


def cmd_emit(args: argparse.Namespace) -> int:
    data = json_object_arg(args.data, "--data")
    if args.count < 1:
        raise CliError("--count must be at least 1", 2)
    config = load(args)
    with open_outbox(config) as outbox:
        for i in range(args.count):
            if i and args.interval:
                time.sleep(args.interval)
            committed = outbox.append(args.type, data, args.priority)
            # Printed only once committed: an id on stdout is a promise the event is on disk.
            out(committed.id)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the device daemon in the foreground")
    add_common(p)
    p.set_defaults(func=cmd_run, default_log="INFO")

    p = sub.add_parser("status", help="device, broker link, queue, last ack, evictions")
    add_common(p, json_flag=True)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("events", help="list events in the local store, newest first")
    add_common(p, json_flag=True)
    p.add_argument("--type", help="only this event type")
    p.add_argument("--state", choices=["all", "pending", "acked"], default="all")
    p.add_argument("--since", help="only events at or after this ISO time")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("emit", help="append events to the local store; prints each committed id")
    add_common(p)
    p.add_argument("type", help="event type, e.g. test")
    p.add_argument("--data", default="{}", help="event data as a JSON object")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--priority", choices=list(PRIORITIES), default=None, help="default: by type")
    p.add_argument("--interval", type=float, default=0.0, help="seconds to wait between events")
    p.set_defaults(func=cmd_emit)
