"""``edge run``, ``edge status``, ``edge events`` and ``edge emit``: the device side."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
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
from edge.health import chain_head, cpu_temp_c, mem_available_bytes, read_throttled
from edge.services import RATING_HARDWARE_META
from edge.services.broadcast import HARDWARE_META as BROADCAST_HARDWARE_META
from edge.store import PRIORITIES, Outbox
from edge.store.host import read_lock_note
from edge.store.outbox import META_DISK_FULL
from edge.sync.undeliverable import undeliverable, undeliverable_count


def cmd_run(args: argparse.Namespace) -> int:
    from edge.commands.desired import load_effective_config
    from edge.daemon import Daemon

    config, base, _version = load_effective_config(args.config)
    # The file this daemon runs with, for the versions it installs and checks (device.update) to read too.
    os.environ["EDGE_CONFIG"] = str(config_path(args.config).absolute())
    return Daemon(config, base).run()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_report(config: EdgeConfig, outbox: Outbox) -> dict[str, Any]:
    stats = outbox.stats()
    daemon = (outbox.get_meta("daemon") or "").split()
    running = bool(daemon) and daemon[0].isdigit() and _pid_alive(int(daemon[0]))
    link = (outbox.get_meta("link") or "unknown").split()
    age = stats.oldest_pending_age_s
    return {
        "device": config.device.id,
        "commune": config.device.commune,
        "roles": list(config.device.roles),
        "broker": config.mqtt.broker,
        "daemon": {"running": running, "pid": int(daemon[0]) if running else None},
        "link": {"state": link[0] if running else "not running", "since": link[1] if len(link) > 1 else None},
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
        "host": host_health(outbox),
        "disk": disk_report(outbox, running),
        "chain": chain_head(outbox),
    }


#: What a technician does about a full state disk.
DISK_FULL_FIX = (
    "free space on that disk (old logs: journalctl --vacuum-size=50M; files that are not events.db), or move "
    "store.state_dir to a larger disk; nothing stored is lost, and new events are taken again as soon as there is room"
)


def disk_report(outbox: Outbox, running: bool) -> dict[str, Any]:
    """The state disk: free space, whether the daemon finds it full, and the events refused for it.

    While the disk is full the database cannot take a byte, so the daemon says so in its lock
    file's note (:class:`edge.store.host.DaemonLock`); the count is moved into the store's counters
    (``refused_disk_full``) once there is room again, or when the next daemon starts.
    """
    state_dir = outbox.path.parent
    free = shutil.disk_usage(state_dir).free
    _pid, note = read_lock_note(state_dir)
    episode = note.get("disk_full") if isinstance(note.get("disk_full"), dict) else None
    counted = int(outbox.counters().get("refused_disk_full", 0))
    refused_now = int(episode.get("refused", 0)) if episode is not None else 0
    try:
        last = json.loads(outbox.get_meta(META_DISK_FULL) or "null")
    except ValueError:
        last = None
    if episode is not None and not running:
        # A daemon that stopped while the disk was full: the next one counts what it refused.
        last = {"since": episode.get("since"), "refused": refused_now, "until": None, "stopped": True}
    # A daemon's word while it runs; without one, only a disk with no room at all is called full.
    full = (episode is not None and running) or free == 0
    return {
        "full": full,
        "free_bytes": free,
        "since": episode.get("since") if episode is not None else None,
        "refused": refused_now,
        "refused_total": counted + refused_now,
        "last_full": last if isinstance(last, dict) else None,
        "fix": DISK_FULL_FIX if full else None,
    }


def _bytes_text(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _disk_lines(disk: dict[str, Any], state_dir: str) -> list[str]:
    if disk["full"]:
        since = f" since {disk['since']}" if disk["since"] else ""
        return [
            f"disk        FULL{since}: {_bytes_text(disk['free_bytes'])} free on the disk holding {state_dir}; "
            f"{disk['refused']} event(s) refused and not acknowledged (no thank-you shown; a serial panel "
            "sends its presses again)",
            f"            fix: {disk['fix']}",
        ]
    if disk["refused_total"]:
        last = disk["last_full"] or {}
        until = last.get("until") or "when edge run stopped"
        when = f", last from {last['since']} to {until}" if last.get("since") else ""
        return [f"disk        {disk['refused_total']} event(s) refused while the disk was full{when}"]
    return []


def host_health(outbox: Outbox) -> dict[str, Any]:
    """This machine's temperature, throttling, load, memory and the state directory's free disk."""
    return {
        "cpu_temp_c": cpu_temp_c(),
        "throttled": read_throttled(),
        "load": [round(x, 2) for x in os.getloadavg()],
        "mem_available_bytes": mem_available_bytes(),
        "disk_free_bytes": shutil.disk_usage(outbox.path.parent).free,
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
    with open_outbox_readonly(config) as outbox:
        report = status_report(config, outbox)
    if args.json:
        print_json(report)
        return 0
    q = report["queue"]
    age = q["oldest_pending_age_s"]
    daemon = f"running, pid {report['daemon']['pid']}" if report["daemon"]["running"] else "not running"
    lines = [
        f"device      {report['commune']}/{report['device']} ({', '.join(report['roles'])})",
        f"daemon      {daemon}",
        f"broker      {report['broker']}: {report['link']['state']}"
        + (f" since {report['link']['since']}" if report["link"]["since"] else ""),
        f"queue       {q['depth']} pending "
        f"({', '.join(f'{k} {v}' for k, v in q['by_priority'].items())})"
        + (f", oldest {age:.0f} s" if age is not None else ""),
        f"last ack    {report['last_ack'] or 'never'}",
        f"evictions   bulk {report['evictions']['bulk']}, normal {report['evictions']['normal']}",
        f"store       {report['store']['bytes']} of {report['store']['cap']} bytes, epoch {report['store']['epoch']}",
    ]
    lines.append(f"host        {_host_line(report['host'])}")
    lines.extend(_disk_lines(report["disk"], str(config.store.state_dir)))
    chain = report["chain"]
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
