"""``edge command send``: sign a command, publish it, and wait for the device's final answer.

For the commune server and for technicians with the server's signing key. ``config.desired`` is
published retained on ``cfg/desired`` with no message expiry, so a device that is off gets it when it
comes back (and its ``cfg/reported`` is awaited); any other command goes to ``cmd/<name>``, with the
message expiry at the command's ``exp``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from edge import keys
from edge.cli.common import CliError, json_object_arg, out, print_json
from edge.commands.claims import DEFAULT_LIFE_S
from edge.commands.sender import CommandSender
from edge.config import BrokerAddress
from edge.exceptions import LinkError
from edge.messages import TERMINAL_STATES
from edge.sync.link import LinkSettings


def _settings(args: argparse.Namespace) -> LinkSettings:
    try:
        address = BrokerAddress.parse(args.broker)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    if address.tls and args.ca is None:
        raise CliError("mqtts:// needs --ca (and usually --cert and --tls-key)", 2)
    return LinkSettings(
        address,
        args.client_id or f"edge-command-{int(time.time() * 1000) % 10**9}",
        clean_start=True,
        session_expiry_s=0,
        ca_file=args.ca,
        cert_file=args.cert,
        key_file=args.tls_key,
        reconnect_max_s=2.0,
    )


def cmd_send(args: argparse.Namespace) -> int:
    cmd_args = json_object_arg(args.args, "--args")
    key = keys.load_signing_key(Path(args.key))
    sender = CommandSender(_settings(args), root=args.root, commune=args.commune)
    try:
        sender.start(timeout=args.timeout)
    except TimeoutError as exc:
        raise CliError(str(exc)) from None
    try:
        try:
            sent = sender.send(args.device, args.name, cmd_args, key, kid=args.kid, life_s=args.life)
        except (LinkError, TimeoutError) as exc:
            raise CliError(f"the broker did not take the command: {exc}") from None
        except ValueError as exc:
            raise CliError(str(exc), 2) from None
        if not args.json:
            out(f"sent {sent.name} {sent.cmd_id} to {sent.topic}")
        final = _follow(sender, sent.cmd_id, args)
        reported = None
        version = cmd_args.get("version")
        if args.name == "config.desired" and isinstance(version, int) and final and final["state"] != "rejected":
            reported = sender.wait_reported(args.device, version, args.timeout)
    finally:
        sender.stop()
    if args.json:
        print_json(
            {
                "cmd_id": sent.cmd_id,
                "device": args.device,
                "name": args.name,
                "acks": sender.acks(sent.cmd_id),
                "final": final,
                **({"reported": reported} if args.name == "config.desired" else {}),
            }
        )
    if final is None:
        if args.name == "config.desired":
            # Not lost: the broker keeps the retained version until a newer one replaces it.
            raise CliError(
                f"no answer from {args.device} within {args.timeout:g} s; the configuration stays retained on "
                f"{sent.topic} and the device applies it when it comes back",
                3,
            )
        raise CliError(f"no final answer from {args.device} within {args.timeout:g} s (is it online?)", 3)
    if reported is not None and not args.json:
        out(f"cfg/reported version {reported.get('version')}: {reported.get('status')} {reported.get('reason') or ''}")
    return 0 if final["state"] == "succeeded" else 1


def _follow(sender: CommandSender, cmd_id: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """Print acks as they come (unless --json); return the terminal one."""
    shown = 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        sender.wait_ack(cmd_id, min(0.2, max(0.0, deadline - time.monotonic())))
        acks = sender.acks(cmd_id)
        for ack in acks[shown:]:
            if not args.json:
                detail = ack.get("reason") or ""
                result = json.dumps(ack["result"], ensure_ascii=False) if ack.get("result") else ""
                out(f"{ack.get('ts', '')}  {ack.get('state')}  {detail}  {result}".rstrip())
        shown = len(acks)
        done = next((a for a in acks if a.get("state") in TERMINAL_STATES), None)
        if done is not None:
            return done
    return None


def register(sub: Any) -> None:
    p = sub.add_parser("command", help="sign and send a command to a device (commune server side)")
    csub = p.add_subparsers(dest="command_action", metavar="ACTION", required=True)
    q = csub.add_parser("send", help="sign, publish, and wait for the device's final ack")
    q.add_argument("device", metavar="DEVICE", help="device id, e.g. counter-01")
    q.add_argument("name", metavar="NAME", help="command name, e.g. device.selftest")
    q.add_argument("--args", default="{}", help="the command's arguments as a JSON object")
    q.add_argument(
        "--key", required=True, metavar="FILE", help="command-signing private key (edge keys signing create)"
    )
    q.add_argument("--kid", help="key id to put in the header (default: the key's own id)")
    q.add_argument("--life", type=int, default=DEFAULT_LIFE_S, help="seconds the command stays valid")
    q.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    q.add_argument("--commune", required=True, help="commune slug")
    q.add_argument("--root", default="vn")
    q.add_argument("--ca", type=Path, help="CA certificate (mqtts)")
    q.add_argument("--cert", type=Path, help="server client certificate (mqtts)")
    q.add_argument("--tls-key", type=Path, help="key of --cert (mqtts)")
    q.add_argument("--client-id", help="MQTT client id (default: a fresh one)")
    q.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the final ack")
    q.add_argument("--json", action="store_true", help="print the acks as JSON")
    q.set_defaults(func=cmd_send)
