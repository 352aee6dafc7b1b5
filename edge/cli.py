"""The ``edge`` command line. Every subcommand has ``--help``; errors exit non-zero with one line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge import __version__
from edge.config import EdgeConfig, config_path, load_config, render_toml, starter_config
from edge.exceptions import ConfigError, EdgeError
from edge.model import problems
from edge.store import PRIORITIES, Outbox

log = logging.getLogger("edge.cli")


class CliError(Exception):
    """A one-line reason for a non-zero exit."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _print_json(data: Any) -> None:
    _out(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _load(args: argparse.Namespace) -> EdgeConfig:
    return load_config(args.config)


# -- edge init / config --------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    text = starter_config(args.role, args.device, args.commune, args.broker, args.state_dir)
    if args.output:
        path = Path(args.output)
        if path.exists() and not args.force:
            raise CliError(f"{path} exists; use --force to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        _out(f"wrote {path}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    try:
        load_config(path)
    except ConfigError as exc:
        if args.json:
            _print_json({"ok": False, "file": str(path), "errors": [{"key": k, "error": m} for k, m in exc.problems]})
        else:
            sys.stderr.write(f"{path}: {len(exc.problems)} error(s)\n")
            for key, msg in exc.problems:
                sys.stderr.write(f"  {key}: {msg}\n")
        return 2
    if args.json:
        _print_json({"ok": True, "file": str(path), "errors": []})
    else:
        _out(f"{path}: ok")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    config = _load(args)
    data = config.model_dump(mode="json")
    if args.json:
        _print_json(data)
    else:
        sys.stdout.write(render_toml(data, comments=False))
    return 0


# -- edge run / sim ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from edge.daemon import Daemon

    return Daemon(_load(args)).run()


def cmd_sim(args: argparse.Namespace) -> int:
    """A simulated device: the real daemon, plus a driver that produces test events."""
    from edge.daemon import Daemon

    daemon = Daemon(_load(args)).start()
    stop = threading.Event()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration if args.duration else None
    n = 0
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if args.count is None or n < args.count:
                n += 1
                committed = daemon.outbox.append("test", {"sim": True, "n": n, "note": "simulated device"})
                log.info("simulated test event %d committed as %s", n, committed.id)
            stop.wait(args.interval)
    finally:
        daemon.stop()
    return 0


# -- edge status / events / emit -----------------------------------------------------------------


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
    }


def _open_outbox(config: EdgeConfig) -> Outbox:
    return Outbox(config.db_path, max_bytes=config.store.max_bytes, keep_acked_s=config.store.keep_acked_s)


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    with _open_outbox(config) as outbox:
        report = status_report(config, outbox)
    if args.json:
        _print_json(report)
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
    _out("\n".join(lines))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    config = _load(args)
    with _open_outbox(config) as outbox:
        events = outbox.list_events(type=args.type, state=args.state, since=args.since, limit=args.limit)
    if args.json:
        _print_json([e.as_dict() for e in events])
        return 0
    for e in events:
        state = "pending" if e.acked_at is None else "acked"
        _out(f"{e.seq:>8}  {e.ts}  {e.type:<10} {e.priority:<8} {state:<7} {e.id}  {e.data_json}")
    return 0


def cmd_emit(args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        raise CliError(f"--data is not valid JSON: {exc}", 2) from None
    if not isinstance(data, dict):
        raise CliError("--data must be a JSON object", 2)
    if args.count < 1:
        raise CliError("--count must be at least 1", 2)
    config = _load(args)
    with _open_outbox(config) as outbox:
        for i in range(args.count):
            if i and args.interval:
                time.sleep(args.interval)
            committed = outbox.append(args.type, data, args.priority)
            # Printed only once committed: an id on stdout is a promise the event is on disk.
            _out(committed.id)
    return 0


# -- edge collect --------------------------------------------------------------------------------


def cmd_collect(args: argparse.Namespace) -> int:
    import signal

    from edge.collector import Collector

    collector = Collector(
        args.broker,
        args.db,
        commune=args.commune,
        root=args.root,
        client_id=args.client_id,
        ca_file=args.ca,
        cert_file=args.cert,
        key_file=args.key,
        max_message_bytes=args.max_message_bytes,
    ).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration if args.duration else None
    last = time.monotonic()
    try:
        while not stop.wait(0.5):
            now = time.monotonic()
            if args.summary_interval and now - last >= args.summary_interval:
                last = now
                log.info("collector: %s", json.dumps(collector.summary()))
            if deadline is not None and now >= deadline:
                break
    finally:
        collector.stop()
    _out(json.dumps(collector.summary(), ensure_ascii=False))
    return 0


# -- parser --------------------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser, json_flag: bool = False) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $EDGE_CONFIG, else /etc/commune-edge/edge.toml)",
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge", description="commune-edge: counter and loudspeaker devices for commune offices"
    )
    parser.add_argument("--version", action="version", version=f"commune-edge {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: INFO for run/collect)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", help="print a commented starter config for a role")
    p.add_argument("--role", choices=["counter", "loudspeaker"], required=True)
    p.add_argument("--device", help="device id (slug), e.g. counter-01")
    p.add_argument("--commune", help="commune slug, e.g. gia-ray")
    p.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--state-dir", help="state directory (default /var/lib/commune-edge)")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    _add_common(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("config", help="check or print the configuration")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    q = csub.add_parser("validate", help="check a config; every error with its key path")
    _add_common(q, json_flag=True)
    q.set_defaults(func=cmd_config_validate)
    q = csub.add_parser("show", help="print the effective config (file plus EDGE_* overrides)")
    _add_common(q, json_flag=True)
    q.set_defaults(func=cmd_config_show)

    p = sub.add_parser("run", help="run the device daemon in the foreground")
    _add_common(p)
    p.set_defaults(func=cmd_run, default_log="INFO")

    p = sub.add_parser("sim", help="run a simulated device (the daemon plus simulated hardware)")
    _add_common(p)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between simulated test events")
    p.add_argument("--count", type=int, default=None, help="stop producing after this many events")
    p.add_argument("--duration", type=float, default=None, help="exit after this many seconds")
    p.set_defaults(func=cmd_sim, default_log="INFO")

    p = sub.add_parser("status", help="device, broker link, queue, last ack, evictions")
    _add_common(p, json_flag=True)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("events", help="list events in the local store, newest first")
    _add_common(p, json_flag=True)
    p.add_argument("--type", help="only this event type")
    p.add_argument("--state", choices=["all", "pending", "acked"], default="all")
    p.add_argument("--since", help="only events at or after this ISO time")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("emit", help="append events to the local store; prints each committed id")
    _add_common(p)
    p.add_argument("type", help="event type, e.g. test")
    p.add_argument("--data", default="{}", help="event data as a JSON object")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--priority", choices=list(PRIORITIES), default=None, help="default: by type")
    p.add_argument("--interval", type=float, default=0.0, help="seconds to wait between events")
    p.set_defaults(func=cmd_emit)

    p = sub.add_parser("collect", help="the commune-side collector: subscribe, store, acknowledge")
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--db", required=True, help="SQLite file to store events in")
    p.add_argument("--commune", default="+", help="commune slug, or + for all")
    p.add_argument("--root", default="vn")
    p.add_argument("--client-id", default=None)
    p.add_argument("--ca", type=Path, help="CA certificate (mqtts)")
    p.add_argument("--cert", type=Path, help="client certificate (mqtts)")
    p.add_argument("--key", type=Path, help="client key (mqtts)")
    p.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--summary-interval", type=float, default=60.0, help="seconds between summary log lines")
    p.add_argument("--duration", type=float, default=None, help="exit after this many seconds")
    p.set_defaults(func=cmd_collect, default_log="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or getattr(args, "default_log", "WARNING")
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as exc:
        sys.stderr.write(f"edge {args.command}: {exc}\n")
        return exc.code
    except ConfigError as exc:
        sys.stderr.write(f"edge {args.command}: {exc}\n")
        return 2
    except ValidationError as exc:
        first = problems(exc)[0]
        sys.stderr.write(f"edge {args.command}: {first[0]}: {first[1]}\n")
        return 2
    except BrokenPipeError:
        return 0
    except (EdgeError, OSError) as exc:
        sys.stderr.write(f"edge {args.command}: {exc}\n")
        return 1
    except Exception as exc:
        log.debug("unexpected failure", exc_info=True)
        sys.stderr.write(f"edge {args.command}: internal error: {type(exc).__name__}: {exc}\n")
        return 1
