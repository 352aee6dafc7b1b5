"""``edge report``, ``edge verify`` and ``edge browse``: the commune side's reading of the collector's database."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from edge.cli.common import CliError, out, print_json

log = logging.getLogger(__name__)


def cmd_verify(args: argparse.Namespace) -> int:
    from edge.server.chain import record, verify_db
    from edge.server.db import open_db

    with open_db(args.db) as db:
        statuses = verify_db(db, commune=args.commune, device=args.device)
    if args.record:
        with open_db(args.db, write=True) as db:
            record(db, statuses)
    if args.json:
        print_json([s.as_dict() for s in statuses])
    else:
        if not statuses:
            out("no chained events (ratings, proof of play) in this database")
        for s in statuses:
            state = "whole" if s.whole else f"BROKEN ({len(s.breaks)} break{'s' * (len(s.breaks) != 1)})"
            extra = []
            if s.carried:
                extra.append(f"{s.carried} delivered in a later epoch")
            if s.sealed is not None:
                extra.append(f"sealed at n={s.sealed}")
            out(
                f"{s.commune}/{s.device}  epoch {s.epoch}  {state}: {s.events} events, n=1..{s.length}, "
                f"verified 1..{s.verified}" + (f" ({'; '.join(extra)})" if extra else "")
            )
            for b in s.breaks:
                out(f"    {b.kind:<10} {b.detail}")
    return 0 if all(s.whole for s in statuses) else 1


def cmd_report(args: argparse.Namespace) -> int:
    from edge.server.db import open_db
    from edge.server.report import OfficeHours, ReportError, build, month_arg, write_csv

    try:
        month = month_arg(args.month)
        office = OfficeHours.parse(args.office_hours)
    except ReportError as exc:
        raise CliError(str(exc), 2) from None
    with open_db(args.db) as db:
        report = build(
            db, month, commune=args.commune, threshold=args.threshold, min_votes=args.min_votes, office_hours=office
        )
    wrote: list[str] = []
    if args.html:
        from edge.server.report_html import render

        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(render(report), encoding="utf-8")
        wrote.append(str(args.html))
    if args.csv:
        wrote += [str(p) for p in write_csv(report, Path(args.csv))]
    if args.json:
        print_json(report)
    else:
        _summary(report)
        for path in wrote:
            out(f"wrote {path}")
    return 0


def _summary(report: dict[str, Any]) -> None:
    t = report["totals"]
    share = "-" if t["share_satisfied"] is None else f"{t['share_satisfied']:.1f} %"
    change = "" if t["change_pp"] is None else f" ({t['change_pp']:+.1f} points on the month before)"
    out(
        f"{report['month']}{' ' + report['commune'] if report['commune'] else ''}: {t['counted']} votes, "
        f"{share} satisfied{change}; {t['flagged']} flagged presses left out"
    )
    for c in report["counters"]:
        s = "-" if c["share_satisfied"] is None else f"{c['share_satisfied']:.1f} %"
        out(f"  counter {c['commune']}/{c['counter']}: {c['counted']} votes, {s} satisfied, {c['flagged']} flagged")
    if report["below_threshold"]:
        out(f"  below {report['settings']['threshold']:g} %: {', '.join(report['below_threshold'])}")
    broken = [c for c in report["chains"] if not c["whole"]]
    if broken:
        out(f"  chains with breaks: {', '.join(c['commune'] + '/' + c['device'] for c in broken)} (edge verify)")
    else:
        out(f"  chains: {len(report['chains'])} whole")


def cmd_browse(args: argparse.Namespace) -> int:
    from edge.server.browse import metadata, serve, sqlite_file

    db = sqlite_file(args.db)
    if args.print_metadata:
        out(json.dumps(metadata(db), ensure_ascii=False, indent=2))
        return 0
    try:
        import datasette  # noqa: F401
    except ImportError:
        raise CliError("Datasette is not installed: pip install 'commune-edge[server]'") from None
    return serve(db, host=args.host, port=args.port, metadata_out=args.metadata_out)


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="check every device's hash chain in a collector database")
    p.add_argument(
        "--db",
        required=True,
        help="the collector's SQLite file, or postgresql://USER[:PASS]@HOST[:PORT]/DB (read only, unless --record)",
    )
    p.add_argument("--commune", default=None, help="only this commune")
    p.add_argument("--device", default=None, help="only this device")
    p.add_argument(
        "--record",
        action="store_true",
        help="also write the results to the database's chains table (the collector keeps it as it stores)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("report", help="the monthly report: satisfaction, loudspeakers, cameras, chains")
    p.add_argument(
        "--db",
        required=True,
        help="the collector's SQLite file, or postgresql://USER[:PASS]@HOST[:PORT]/DB (read only)",
    )
    p.add_argument("--month", default=None, help="YYYY-MM, Vietnam time (default: the previous month)")
    p.add_argument("--commune", default=None, help="only this commune")
    p.add_argument("--html", default=None, metavar="FILE", help="write the report as one HTML page")
    p.add_argument("--csv", default=None, metavar="DIR", help="write the tables as CSV files into DIR")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--threshold", type=float, default=80.0, help="officers below this share satisfied (%%) are named")
    p.add_argument("--min-votes", type=int, default=10, help="officers with fewer votes are not judged")
    p.add_argument(
        "--office-hours",
        default="07:30-11:30,13:30-17:00",
        help="office hours, Monday to Friday, for officer absence (default %(default)s)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("browse", help="open the collector's database in Datasette")
    p.add_argument("--db", required=True, help="the collector's SQLite file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--metadata-out", type=Path, default=None, help="also keep the metadata file here")
    p.add_argument("--print-metadata", action="store_true", help="print the Datasette metadata and exit")
    p.set_defaults(func=cmd_browse, default_log="INFO")
