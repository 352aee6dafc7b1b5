"""Pieces every ``edge`` subcommand uses: the one-line error, output, and config loading."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edge.commands.desired import load_effective_config
from edge.config import EdgeConfig
from edge.store import Outbox


class CliError(Exception):
    """A one-line reason for a non-zero exit."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def print_json(data: Any) -> None:
    out(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def json_object_arg(text: str, flag: str) -> dict[str, Any]:
    """A command-line argument that must be a JSON object; a one-line error (exit 2) otherwise."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{flag} is not valid JSON: {exc}", 2) from None
    if not isinstance(value, dict):
        raise CliError(f"{flag} must be a JSON object", 2)
    return value


def load(args: argparse.Namespace) -> EdgeConfig:
    """The effective configuration: the file, ``EDGE_*`` variables and the applied ``cfg/desired``."""
    return load_effective_config(args.config)[0]


def open_outbox(config: EdgeConfig) -> Outbox:
    """The device's store for appending next to a running daemon (``edge emit``)."""
    return Outbox.from_config(config)


def open_outbox_readonly(config: EdgeConfig) -> Outbox:
    """The device's store for reading only (``edge status``, ``edge events``): never creates,
    changes or moves the file, whatever state it is in."""
    return Outbox.open_readonly(config.db_path, max_bytes=config.store.max_bytes)


def add_common(p: argparse.ArgumentParser, json_flag: bool = False) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $EDGE_CONFIG, else /etc/commune-edge/edge.toml)",
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON")
