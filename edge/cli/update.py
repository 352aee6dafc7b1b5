"""``edge update status`` and ``edge update guard``: the installed versions and the update on trial."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from edge.cli.common import add_common, load, out, print_json


def update_report(args: argparse.Namespace) -> dict[str, Any]:
    from edge.update import Installation, MarkerFile

    config = load(args)
    inst = Installation(config.update.install_root)
    marker = MarkerFile(config.store.state_dir).load()
    current, confirmed = inst.current(), inst.confirmed()
    versions = []
    for release in inst.releases():
        versions.append(
            {
                "release": release,
                "current": release == current,
                "confirmed": release == confirmed,
                "dependencies_from": sorted(inst.bases(release)) or None,
            }
        )
    return {
        "install_root": str(inst.root),
        "current": current,
        "confirmed": confirmed,
        "versions": versions,
        "allow_hosts": list(config.update.allow_hosts),
        "last_update": asdict(marker) if marker is not None else None,
    }


def cmd_status(args: argparse.Namespace) -> int:
    report = update_report(args)
    if args.json:
        print_json(report)
        return 0
    out(f"installation  {report['install_root']}")
    out(f"current       {report['current'] or '(none: not installed here)'}")
    out(f"confirmed     {report['confirmed'] or '(none yet)'}")
    for v in report["versions"]:
        notes = [n for n in ("current", "confirmed") if v[n]]
        if v["dependencies_from"]:
            notes.append("dependencies from " + ", ".join(v["dependencies_from"]))
        out(f"  {v['release']}" + (f"  ({'; '.join(notes)})" if notes else ""))
    hosts = report["allow_hosts"]
    out(f"allow_hosts   {', '.join(hosts) if hosts else '(none: every device.update is refused)'}")
    last = report["last_update"]
    if last is None:
        out("last update   none")
    else:
        line = f"last update   {last['from_version']} -> {last['to_version']}: {last['state']}"
        if last["state"] == "pending":
            line += f" (on trial, {last['health_timeout_s']:g} s to be healthy)"
        elif last["ended_at"]:
            line += f" at {last['ended_at']}"
        if last["reason"]:
            line += f": {last['reason']}"
        out(line)
    return 0


def cmd_guard(args: argparse.Namespace) -> int:
    from edge.update import Installation, MarkerFile, guard

    config = load(args)
    out("edge update guard: " + guard(Installation(config.update.install_root), MarkerFile(config.store.state_dir)))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "update",
        help="installed versions, and the software update on trial",
        description="The versions installed under update.install_root and how the last device.update went.",
    )
    actions = p.add_subparsers(dest="update_command", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="installed versions, current and confirmed, the last update")
    add_common(status, json_flag=True)
    status.set_defaults(func=cmd_status)
    guard = actions.add_parser(
        "guard",
        help="before a start: let a new version on trial start once, roll it back if it stopped unconfirmed",
        description="Run by the systemd unit before every start (ExecStartPre=-/opt/commune-edge/confirmed/bin/"
        "edge update guard), from the last confirmed version.",
    )
    add_common(guard)
    guard.set_defaults(func=cmd_guard)
