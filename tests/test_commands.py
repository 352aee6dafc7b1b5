"""Signed commands against a real daemon and a real Mosquitto (issue: signed commands).

The device trusts one Ed25519 key. The "server" is a real MQTT client that signs with it, or forges.
Whether a command ran is read from the device itself: its ``commands_executed`` counter (committed in
the same store as the journal) and the acks it published.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import keys
from edge.commands.claims import make_claims
from edge.commands.jws import b64url_encode, sign
from sim.harness import wait_for
from tests.commands_fixtures import COMMUNE, DEVICE, CommandedDevice

TIMEOUT = 15.0


def executed(dev: CommandedDevice) -> int:
    return dev.counters().get("commands_executed", 0)


def security_events(dev: CommandedDevice) -> list[dict[str, Any]]:
    return [e["data"] for e in dev.events("security")]


def test_a_valid_command_runs_once_and_is_acked_in_order(commanded: CommandedDevice) -> None:
    sent = commanded.sender.send(DEVICE, "device.selftest", {}, commanded.key)

    final = commanded.sender.wait_ack(sent.cmd_id, TIMEOUT)
    assert final is not None, commanded.log()
    assert final["state"] == "succeeded"
    states = [a["state"] for a in commanded.sender.acks(sent.cmd_id)]
    assert states == ["accepted", "succeeded"]
    # The self-test reports versions, the link, the queue and the hardware found.
    result = final["result"]
    assert result["versions"]["commune-edge"]
    assert result["link"]["connected"] is True
    assert "depth" in result["queue"]
    assert "found" in result["hardware"]
    assert "device.selftest" in result["commands"]
    assert result["command_time"]["basis"] in {"synced", "same_boot", "lower_bound", "unsynced"}
    assert executed(commanded) == 1


def test_the_same_command_delivered_twice_runs_once(commanded: CommandedDevice) -> None:
    sent = commanded.sender.send(DEVICE, "device.selftest", {}, commanded.key)
    assert commanded.sender.wait_ack(sent.cmd_id, TIMEOUT) is not None

    commanded.sender.publish(sent.topic, sent.token)  # the broker or the server delivers it again

    def replay_answered() -> dict[str, Any] | None:
        return next((a for a in commanded.sender.acks(sent.cmd_id) if a.get("reason") == "replayed"), None)

    assert wait_for(replay_answered, TIMEOUT), commanded.sender.acks(sent.cmd_id)
    replay = replay_answered()
    assert replay is not None and replay["state"] == "rejected"
    assert replay["result"]["earlier"]["state"] == "succeeded"  # the earlier outcome
    assert executed(commanded) == 1
    assert any(e["reason"] == "replayed" and e["cmd_id"] == sent.cmd_id for e in security_events(commanded))


def test_a_replay_after_a_restart_is_rejected(commanded: CommandedDevice) -> None:
    sent = commanded.sender.send(DEVICE, "sync.resend", {}, commanded.key)
    assert (commanded.sender.wait_ack(sent.cmd_id, TIMEOUT) or {}).get("state") == "succeeded"

    commanded.restart()
    commanded.sender.publish(sent.topic, sent.token)

    assert wait_for(lambda: any(a.get("reason") == "replayed" for a in commanded.sender.acks(sent.cmd_id)), TIMEOUT)
    assert executed(commanded) == 1
    assert any(e["reason"] == "replayed" for e in security_events(commanded))


# -- forged, stale and broken commands -------------------------------------------------------------


def _flip(segment: str, at: int) -> str:
    """Change one base64url character (keeping the segment canonical: not the last one)."""
    chars = list(segment)
    chars[at] = "A" if chars[at] != "A" else "B"
    return "".join(chars)


@dataclass
class Case:
    what: str
    reason: str
    make: Callable[[CommandedDevice], tuple[str, str]]  # -> (topic suffix, payload)


def _signed(dev: CommandedDevice, *, key: Ed25519PrivateKey | None = None, kid: str | None = None, **kw: Any) -> str:
    claims = make_claims(
        device=kw.pop("device", DEVICE),
        commune=kw.pop("commune", COMMUNE),
        name=kw.pop("name", "device.selftest"),
        args=kw.pop("args", {}),
        life_s=kw.pop("life_s", 60),
        now=kw.pop("now", None),
    )
    claims.update(kw)
    return sign(claims, key or dev.key, kid or dev.kid)


def _unsigned(dev: CommandedDevice, alg: str) -> str:
    header = b64url_encode(json.dumps({"alg": alg, "typ": "JWT", "kid": dev.kid}).encode())
    claims = make_claims(device=DEVICE, commune=COMMUNE, name="device.selftest", args={}, life_s=60)
    payload = b64url_encode(json.dumps(claims).encode())
    sig = "" if alg == "none" else b64url_encode(b"\x00" * 32)
    return f"{header}.{payload}.{sig}"


def _payload_flipped(dev: CommandedDevice) -> tuple[str, str]:
    h, p, s = _signed(dev).split(".")
    return "cmd/device.selftest", f"{h}.{_flip(p, len(p) // 2)}.{s}"


def _signature_flipped(dev: CommandedDevice) -> tuple[str, str]:
    h, p, s = _signed(dev).split(".")
    return "cmd/device.selftest", f"{h}.{p}.{_flip(s, 5)}"


def _unknown_kid(dev: CommandedDevice) -> tuple[str, str]:
    stranger = Ed25519PrivateKey.generate()
    return "cmd/device.selftest", _signed(dev, key=stranger, kid=keys.key_id(stranger))


CASES = [
    Case("one byte of the payload changed", "bad_signature", _payload_flipped),
    Case("one byte of the signature changed", "bad_signature", _signature_flipped),
    Case("signed by a key the device does not know", "unknown_key", _unknown_kid),
    Case("for another device", "wrong_device", lambda d: ("cmd/device.selftest", _signed(d, device="counter-02"))),
    Case("for another commune", "wrong_device", lambda d: ("cmd/device.selftest", _signed(d, commune="an-phu"))),
    Case("expired", "expired", lambda d: ("cmd/device.selftest", _signed(d, now=time.time() - 600, life_s=60))),
    Case(
        "issued in the future beyond the skew",
        "not_yet_valid",
        lambda d: ("cmd/device.selftest", _signed(d, now=time.time() + 600, life_s=60)),
    ),
    Case("life longer than allowed", "too_long_lived", lambda d: ("cmd/device.selftest", _signed(d, life_s=3600))),
    Case("not JWS at all", "malformed", lambda d: ("cmd/device.selftest", '{"name": "device.selftest"}')),
    Case("alg none", "bad_signature", lambda d: ("cmd/device.selftest", _unsigned(d, "none"))),
    Case("alg HS256", "bad_signature", lambda d: ("cmd/device.selftest", _unsigned(d, "HS256"))),
    Case("oversized", "malformed", lambda d: ("cmd/device.selftest", "x" * (70 * 1024))),
    Case(
        "a command the device does not have",
        "unknown_command",
        lambda d: ("cmd/relay.fly", _signed(d, name="relay.fly")),
    ),
    Case(
        "arguments that do not fit",
        "invalid_args",
        lambda d: ("cmd/sync.resend", _signed(d, name="sync.resend", args={"from_seq": "all"})),
    ),
    Case("topic and command name disagree", "malformed", lambda d: ("cmd/sync.resend", _signed(d))),
]


def test_bad_commands_are_rejected_with_their_reason_and_have_no_effect(commanded: CommandedDevice) -> None:
    for case in CASES:
        before = len(security_events(commanded))
        suffix, payload = case.make(commanded)
        commanded.sender.publish(f"vn/{COMMUNE}/dev/{DEVICE}/{suffix}", payload)

        def new_events(before: int = before) -> list[dict[str, Any]]:
            return security_events(commanded)[: len(security_events(commanded)) - before]

        assert wait_for(new_events, TIMEOUT), f"{case.what}: no security event\n{commanded.log()}"
        event = new_events()[0]  # newest first
        assert event["kind"] == "command_rejected"
        assert event["reason"] == case.reason, f"{case.what}: {event}"
        assert executed(commanded) == 0, case.what

    counters = commanded.counters()
    by_reason: dict[str, int] = {}
    for case in CASES:
        by_reason[case.reason] = by_reason.get(case.reason, 0) + 1
    for reason, n in by_reason.items():
        assert counters.get(f"commands_rejected_{reason}") == n, reason
    # Each rejection was also answered on `ack` with its reason.
    all_acks = [a for cid in [None, *_claimed_ids(commanded)] for a in commanded.sender.acks(cid)]
    assert {a["reason"] for a in all_acks if a["state"] == "rejected"} == set(by_reason)


def _claimed_ids(dev: CommandedDevice) -> list[str]:
    return [str(e.get("cmd_id") or e.get("claimed_cmd_id")) for e in security_events(dev)]


def test_a_forged_command_with_a_valid_looking_id_does_not_block_the_real_one(commanded: CommandedDevice) -> None:
    """Only signed commands enter the replay set: a forger who guesses or copies a cmd_id cannot
    make the device refuse the genuine command later."""
    cmd_id = str(uuid.uuid4())
    stranger = Ed25519PrivateKey.generate()
    claims = make_claims(device=DEVICE, commune=COMMUNE, name="device.selftest", args={}, cmd_id=cmd_id)
    commanded.sender.publish(f"vn/{COMMUNE}/dev/{DEVICE}/cmd/device.selftest", sign(claims, stranger, commanded.kid))
    assert wait_for(lambda: any(a["reason"] == "bad_signature" for a in commanded.sender.acks(cmd_id)), TIMEOUT)

    genuine = sign(claims, commanded.key, commanded.kid)
    commanded.sender.publish(f"vn/{COMMUNE}/dev/{DEVICE}/cmd/device.selftest", genuine)
    final = commanded.sender.wait_ack(cmd_id, TIMEOUT, frozenset({"succeeded"}))
    assert final is not None, commanded.sender.acks(cmd_id)
    assert executed(commanded) == 1


def test_sync_resend_sends_acknowledged_events_again(commanded: CommandedDevice) -> None:
    from edge.store import Outbox

    with Outbox(commanded.device.db) as outbox:
        first = outbox.append("test", {"n": 1})
        outbox.mark_acked([(first.seq, first.seq)])
    sent = commanded.sender.send(DEVICE, "sync.resend", {"from_seq": first.seq, "to_seq": first.seq}, commanded.key)
    final = commanded.sender.wait_ack(sent.cmd_id, TIMEOUT)
    assert final is not None and final["state"] == "succeeded", final
    assert final["result"]["requeued"] == 1


def test_acks_written_before_a_crash_are_delivered_after_the_restart(commanded: CommandedDevice) -> None:
    """The journal is the outbox of replies: what was committed but not yet sent goes out on start."""
    from edge.commands.channel import ack_payload
    from edge.store import Outbox
    from edge.store.journal import CommandJournal

    assert commanded.daemon is not None
    commanded.daemon.kill()  # as a power cut would
    running, finished = str(uuid.uuid4()), str(uuid.uuid4())
    with Outbox(commanded.device.db) as outbox:
        journal = CommandJournal(outbox)
        # One command was running when the power went; another had finished but its ack was not out.
        journal.record(running, "sync.resend", time.time() + 60, "accepted")
        journal.record(finished, "device.selftest", time.time() + 60, "succeeded")
        journal.reply("ack", ack_payload(finished, "succeeded", None, {"note": "written before the crash"}))

    commanded.start()

    delivered = commanded.sender.wait_ack(finished, TIMEOUT)
    assert delivered is not None and delivered["result"] == {"note": "written before the crash"}
    interrupted = commanded.sender.wait_ack(running, TIMEOUT)
    assert interrupted is not None, commanded.log()
    assert (interrupted["state"], interrupted["reason"]) == ("failed", "interrupted")
    assert executed(commanded) == 0  # reported, never run again on its own
