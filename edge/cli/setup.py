"""``edge init`` and ``edge config validate|show``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge.cli.common import CliError, add_common, load, out, print_json
from edge.config import config_path, load_config, render_toml, starter_config
from edge.exceptions import ConfigError


def cmd_init(args: argparse.Namespace) -> int:
    text = starter_config(args.role, args.device, args.commune, args.broker, args.state_dir)
    if args.output:
        path = Path(args.output)
        if path.exists() and not args.force:
            raise CliError(f"{path} exists; use --force to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        out(f"wrote {path}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    try:
        load_config(path)
    except ConfigError as exc:
        if args.json:
            print_json({"ok": False, "file": str(path), "errors": [{"key": k, "error": m} for k, m in exc.problems]})
        else:
            sys.stderr.write(f"{path}: {len(exc.problems)} error(s)\n")
            for key, msg in exc.problems:
                sys.stderr.write(f"  {key}: {msg}\n")
        return 2
    if args.json:
        print_json({"ok": True, "file": str(path), "errors": []})
    else:
        out(f"{path}: ok")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    config = load(args)
    data = config.model_dump(mode="json")
    if args.json:
        print_json(data)
    else:
        sys.stdout.write(render_toml(data, comments=False))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="print a commented starter config for a role")
    p.add_argument("--role", choices=["counter", "loudspeaker"], required=True)
    p.add_argument("--device", help="device id (slug), e.g. counter-01")
    p.add_argument("--commune", help="commune slug, e.g. gia-ray")
    p.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--state-dir", help="state directory (default /var/lib/commune-edge)")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    add_common(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("config", help="check or print the configuration")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    q = csub.add_parser("validate", help="check a config; every error with its key path")
    add_common(q, json_flag=True)
    q.set_defaults(func=cmd_config_validate)
    q = csub.add_parser("show", help="print the effective config (file plus EDGE_* overrides)")
    add_common(q, json_flag=True)
    q.set_defaults(func=cmd_config_show)
