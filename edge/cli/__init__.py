"""The ``edge`` command line. Every subcommand has ``--help``; errors exit non-zero with one line.

Each module in this package adds its subcommands with ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from edge import __version__
from edge.cli import collect, command, device, doctor, hwtest, keys, report, setup, sim, update
from edge.cli.common import CliError
from edge.exceptions import ConfigError, EdgeError
from edge.model import problems
from edge.systemd import use_journal_if_attached

log = logging.getLogger(__name__)

#: The modules whose subcommands make up ``edge``, in the order ``edge --help`` lists them.
MODULES = (setup, device, sim, hwtest, keys, command, collect, report, doctor, update)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge", description="commune-edge: counter and loudspeaker devices for commune offices"
    )
    parser.add_argument("--version", action="version", version=f"commune-edge {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: INFO for run/collect)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in MODULES:
        module.register(sub)
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
    use_journal_if_attached()  # under systemd: structured entries to journald instead of plain stderr lines
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
