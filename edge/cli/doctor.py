"""``edge doctor``: check the installation, one line per check, with the fix."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli.common import add_common, out, print_json


def cmd_doctor(args: argparse.Namespace) -> int:
    from edge.doctor import exit_status, format_line, run_checks

    findings = run_checks(Path(args.config) if args.config else None, quick=args.quick, timeout_s=args.timeout)
    status = exit_status(findings)
    if args.json:
        counts = {s: sum(f.status == s for f in findings) for s in ("ok", "warn", "fail", "skip")}
        print_json({"ok": status == 0, "counts": counts, "checks": [f.to_json() for f in findings]})
    else:
        for f in findings:
            out(format_line(f))
        fails = sum(f.status == "fail" for f in findings)
        warns = sum(f.status == "warn" for f in findings)
        out(f"{fails} failed, {warns} warning(s), {len(findings)} checks")
    return status


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check the installation: config, state, store, clock, broker, keys and hardware",
        description="Check this device's installation; one line per check (ok, warn, fail, skip) with the fix. "
        "Exits 1 if any check failed.",
    )
    add_common(p, json_flag=True)
    p.add_argument("--quick", action="store_true", help="no network round trips (DNS, broker, IP cameras)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for each answer (5)")
    p.set_defaults(func=cmd_doctor)
