"""The command channel after downtime, after a power cut, and under load (issue 12, points 6, 7, 8, 10).

- A device that was off while the server changed its configuration converges on the latest version
  when it comes back, although the signed message expired meanwhile; an old version replayed is stale.
- A device whose clock is not synchronised after a power cut still takes a fresh emergency command,
  and still refuses what it has seen, what is older than what it knew, and what it already forgot.
- A command does not wait behind a slow one; urgent commands have a lane of their own; commands that
  must not overlap themselves run one at a time; every outcome is journaled and acknowledged once.

The daemon tests run ``edge run`` against a real Mosquitto. The others build the channel in this
process, as the daemon does (real store, real broker, real replies), so that a test can hold a
handler or hand the channel a clock of its own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field

from edge import keys
from edge.commands.jws import b64url_decode, b64url_encode
from edge.commands.registry import CommandContext, CommandRegistry, NoArgs
from edge.keys import KeyMaterialError
from edge.model import EdgeModel
from sim.broker import MosquittoBroker
from sim.harness import run_edge, wait_for
from tests.commands_fixtures import COMMUNE, DEVICE, ChannelRig, CommandedDevice, build_channel, sender_for

TIMEOUT = 20.0
DAY = 86_400.0


# -- 6. convergence after downtime -------------------------------------------------------------------


def _effective(dev: CommandedDevice) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run_edge(["config", "show", "--json"], env=dev.device.env).stdout)
    return data


def test_a_device_that_was_off_converges_on_the_latest_desired_config(commanded: CommandedDevice) -> None:
    v1 = commanded.sender.send(
        DEVICE, "config.desired", {"version": 1, "config": {"sync": {"max_inflight": 4}}}, commanded.key, life_s=5
    )
    assert (commanded.sender.wait_reported(DEVICE, 1, TIMEOUT) or {}).get("status") == "applied", commanded.log()

    # The device goes off; meanwhile the server publishes version 2, and its signed life runs out.
    assert commanded.daemon is not None
    commanded.daemon.stop()
    v2 = commanded.sender.send(
        DEVICE, "config.desired", {"version": 2, "config": {"sync": {"max_inflight": 6}}}, commanded.key, life_s=2
    )
    assert wait_for(lambda: time.time() > v2.claims["exp"] + 1.5, TIMEOUT)

    commanded.start()

    report = commanded.sender.wait_reported(DEVICE, 2, TIMEOUT)
    assert report is not None, commanded.log()
    assert report["status"] == "applied"
    assert _effective(commanded)["sync"]["max_inflight"] == 6
    assert (commanded.sender.wait_ack(v2.cmd_id, TIMEOUT) or {}).get("state") == "succeeded"

    # Someone publishes the old version 1 again: it is stale by its version, whatever its time.
    unchanged = commanded.counters().get("cfg_desired_unchanged", 0)
    commanded.sender.publish(v1.topic, v1.token, retain=True)
    assert wait_for(lambda: commanded.counters().get("cfg_desired_unchanged", 0) > unchanged, TIMEOUT)
    assert _effective(commanded)["sync"]["max_inflight"] == 6
    # From before (an ack the daemon was stopped before the broker confirmed is sent again at its start).
    assert list(dict.fromkeys(a["state"] for a in commanded.sender.acks(v1.cmd_id))) == ["accepted", "succeeded"]
    assert not any(k.startswith("commands_rejected_") for k in commanded.counters()), commanded.counters()


def test_edge_command_send_leaves_a_desired_config_retained_for_a_device_that_is_off(
    broker: MosquittoBroker, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    out = run_edge(
        [
            *("command", "send", DEVICE, "config.desired", "--key", str(tmp_path / "signing.key")),
            *("--args", json.dumps({"version": 7, "config": {}}), "--life", "2", "--timeout", "3"),
            *("--broker", broker.url, "--commune", COMMUNE),
        ],
        check=False,
    )
    assert out.returncode == 3, out.stderr
    assert "stays retained" in out.stderr
    sent_by = time.time()

    # Long after the command's exp, a device that comes back still finds it on cfg/desired.
    assert wait_for(lambda: time.time() > sent_by + 1.5, TIMEOUT)
    found: list[bytes] = []
    late = sender_for(broker, "device-coming-back")
    late.link.subscribe(f"vn/{COMMUNE}/dev/{DEVICE}/cfg/desired", lambda _t, payload: found.append(payload))
    with late:
        assert wait_for(lambda: found, TIMEOUT)
    claims = json.loads(b64url_decode(found[0].split(b".")[1]))
    assert claims["name"] == "config.desired" and claims["args"]["version"] == 7
    assert claims["exp"] < time.time()


# -- the in-process channel ----------------------------------------------------------------------------


@dataclass
class FakeTime:
    """A clock of the test's choosing (:class:`edge.clock.TimeSource`): ``wall`` runs ``offset_s`` from
    the real time, the machine booted ``uptime_s`` before this object was made, with id ``boot``."""

    is_synced: bool
    offset_s: float = 0.0
    boot: str = "boot-1"
    uptime_s: float = 40.0
    _made: float = field(default_factory=time.monotonic)

    def synced(self) -> bool:
        return self.is_synced

    def wall(self) -> float:
        return time.time() + self.offset_s

    def boottime(self) -> float:
        return self.uptime_s + (time.monotonic() - self._made)

    def boot_id(self) -> str:
        return self.boot


class HoldArgs(EdgeModel):
    tag: str = Field(default="", description="Which of several held commands this is.")


@dataclass
class Held:
    """Test commands whose handlers run until the test lets them go."""

    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: int = 0
    most_at_once: int = 0
    started: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)

    def handler(self, args: HoldArgs, ctx: CommandContext) -> dict[str, Any]:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.started.append(args.tag)
        try:
            # Bounded, so a failing test cannot leave a thread behind for ever.
            self.release.wait(120)
            return {"tag": args.tag}
        finally:
            with self.lock:
                self.running -= 1
                self.finished.append(args.tag)


def _quick(args: NoArgs, ctx: CommandContext) -> dict[str, Any]:
    return {"done": True}


@pytest.fixture
def rig_sender(broker: MosquittoBroker) -> Iterator[Any]:
    sender = sender_for(broker, "server-rig").start()
    try:
        yield sender
    finally:
        sender.stop()


@pytest.fixture
def rigs(tmp_path: Path, broker: MosquittoBroker, signing_key: Ed25519PrivateKey, rig_sender: Any) -> Iterator[Any]:
    """``rigs(register, time_source=None)`` builds a channel on this test's store; all are stopped after."""
    built: list[ChannelRig] = []

    def make(register: Callable[[CommandRegistry], None], time_source: Any = None, **kw: Any) -> ChannelRig:
        rig = build_channel(tmp_path, broker, signing_key, register, time_source=time_source, sender=rig_sender, **kw)
        built.append(rig)
        return rig

    try:
        yield make
    finally:
        for rig in built:
            rig.stop(timeout=2)


def _final(rig: ChannelRig, cmd_id: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    ack = rig.sender.wait_ack(cmd_id, timeout)
    assert ack is not None, (cmd_id, rig.sender.acks(cmd_id))
    return ack


def _reason(rig: ChannelRig, cmd_id: str) -> str | None:
    return _final(rig, cmd_id).get("reason")


def _settle(rig: ChannelRig) -> None:
    """Wait until every reply the device wrote has reached the sender. Acks come from one publisher
    on one topic, in order: once a marker command's final ack is in, everything before it is too."""
    assert wait_for(lambda: not rig.journal.pending_replies(), TIMEOUT)
    marker, _ = rig.send("test.quick")
    _final(rig, marker)


# -- 6, the rule in detail -------------------------------------------------------------------------------


def test_an_expired_desired_config_is_taken_only_if_newer_and_otherwise_valid(rigs: Any) -> None:
    rig: ChannelRig = rigs(lambda registry: None)
    old = time.time() - 3600  # signed an hour ago, expired 59 minutes ago

    def publish(args: dict[str, Any], **kw: Any) -> str:
        return rig.send("config.desired", args, topic="cfg/desired", now=old, **kw)[0]

    newer = publish({"version": 3, "config": {"sync": {"max_inflight": 5}}})
    assert (rig.sender.wait_reported(DEVICE, 3, TIMEOUT) or {}).get("status") == "applied"
    assert _final(rig, newer)["state"] == "succeeded"

    # Everything but the time is still checked.
    wrong_device = publish({"version": 4, "config": {}}, device="counter-02")
    assert _reason(rig, wrong_device) == "wrong_device"
    too_long = publish({"version": 4, "config": {}}, life_s=301)
    assert _reason(rig, too_long) == "too_long_lived"
    # Only the retained cfg/desired converges; the same command on cmd/ is as expired as any other.
    on_cmd, _ = rig.send("config.desired", {"version": 4, "config": {}}, now=old)
    assert _reason(rig, on_cmd) == "expired"
    # Not newer: ignored, whatever its time.
    before = rig.outbox.counters().get("cfg_desired_unchanged", 0)
    publish({"version": 2, "config": {"sync": {"max_inflight": 9}}})
    assert wait_for(lambda: rig.outbox.counters().get("cfg_desired_unchanged", 0) > before, TIMEOUT)
    assert rig.channel.desired.version == 3
    assert [changed for _, changed in rig.applied] == [{"sync.max_inflight"}]


# -- 7. the clock after a power cut ----------------------------------------------------------------------


def _register_hold_and_quick(held: Held) -> Callable[[CommandRegistry], None]:
    def register(registry: CommandRegistry) -> None:
        registry.register("test.hold", HoldArgs, held.handler, description="Run until released.")
        registry.register("test.quick", NoArgs, _quick, description="Return at once.")
        registry.register("broadcast.stop_all", NoArgs, _quick, description="Stand-in for the loudspeaker's.")

    return register


def _run_before_the_cut(rigs: Any, clock: FakeTime) -> tuple[Callable[[CommandRegistry], None], str, str]:
    """A device with ``clock`` runs one command (life 300 s), then loses power.
    Returns the registry's commands, and the command's id and token."""
    register = _register_hold_and_quick(Held())
    rig = rigs(register, clock)
    cmd_id, token = rig.send("test.quick", life_s=300, now=clock.wall())
    assert _final(rig, cmd_id)["state"] == "succeeded"
    rig.stop()
    return register, cmd_id, token


def test_after_a_power_cut_an_unsynced_device_takes_a_fresh_command_and_refuses_old_ones(rigs: Any) -> None:
    # Before the cut: synchronised, 1000 s ago (the test plays the past with a clock that ran behind).
    before_cut = FakeTime(is_synced=True, offset_s=-1000, boot="boot-1")
    register, seen, seen_token = _run_before_the_cut(rigs, before_cut)
    last_synced = before_cut.wall()

    # After the cut: another boot, 40 s up, fake-hwclock put the clock two days behind, no NTP yet.
    rig = rigs(register, FakeTime(is_synced=False, offset_s=-2 * DAY, boot="boot-2"))

    # What it has seen stays refused.
    rig.sender.publish(f"{rig.channel.topics.prefix}cmd/test.quick", seen_token)
    assert wait_for(lambda: "replayed" in [a.get("reason") for a in rig.sender.acks(seen)], TIMEOUT)
    # What was issued before the time it last knew, and it never saw, is older than that time.
    stale, _ = rig.send("test.quick", life_s=300, now=last_synced - 200)
    assert _reason(rig, stale) == "expired"
    # A fresh emergency command runs, although this clock says it comes from two days ahead.
    fresh, _ = rig.send("broadcast.stop_all")
    assert _final(rig, fresh)["state"] == "succeeded"
    # A signed command is proof of the server's time: what expired before it was issued is refused.
    during_outage, _ = rig.send("test.quick", life_s=60, now=time.time() - 500)
    assert _reason(rig, during_outage) == "expired"

    _settle(rig)
    assert rig.states(fresh) == ["accepted", "succeeded"]
    details = [a["result"].get("detail", "") for a in rig.sender.acks(stale)]
    assert any("not synchronised" in d for d in details), details


def test_the_journal_forgets_by_command_time_not_by_an_unsynced_clock(rigs: Any) -> None:
    register, cmd_id, token = _run_before_the_cut(rigs, FakeTime(is_synced=True, boot="boot-1"))

    # Rebooted with a real-time clock two days ahead and no NTP: housekeeping runs.
    rig = rigs(register, FakeTime(is_synced=False, offset_s=2 * DAY, boot="boot-2"))
    assert rig.journal.purge() == 0
    assert rig.journal.get(cmd_id) is not None
    rig.stop()

    # NTP corrects the clock while the command is still within its life: a replay is still refused.
    rig = rigs(register, FakeTime(is_synced=True, boot="boot-2"))
    rig.sender.publish(f"{rig.channel.topics.prefix}cmd/test.quick", token)
    assert wait_for(lambda: "replayed" in [a.get("reason") for a in rig.sender.acks(cmd_id)], TIMEOUT)
    assert rig.outbox.counters().get("commands_executed") == 1


def test_a_command_the_journal_forgot_stays_refused_after_a_restart(rigs: Any) -> None:
    register, old, old_token = _run_before_the_cut(rigs, FakeTime(is_synced=True, offset_s=-1000, boot="boot-1"))

    # Unsynced after a reboot: a fresh command shows the time is now well past the old one's life,
    # so housekeeping forgets the old one.
    rig = rigs(register, FakeTime(is_synced=False, offset_s=-2 * DAY, boot="boot-2"))
    fresh, _ = rig.send("test.quick")
    assert _final(rig, fresh)["state"] == "succeeded"
    assert rig.journal.purge() == 1
    rig.stop()

    # Restarted, still unsynced, still the same boot: what the fresh command proved is not lost.
    rig = rigs(register, FakeTime(is_synced=False, offset_s=-2 * DAY, boot="boot-2", uptime_s=60))
    rig.sender.publish(f"{rig.channel.topics.prefix}cmd/test.quick", old_token)
    assert wait_for(lambda: "expired" in [a.get("reason") for a in rig.sender.acks(old)], TIMEOUT)
    assert rig.outbox.counters().get("commands_executed") == 2


# -- 8. commands do not wait behind each other ---------------------------------------------------------


def test_a_command_completes_while_a_slow_one_still_runs(rigs: Any) -> None:
    held = Held()
    rig = rigs(_register_hold_and_quick(held))
    try:
        slow, _ = rig.send("test.hold", {"tag": "relay-test"})
        assert wait_for(lambda: held.started == ["relay-test"], TIMEOUT)

        quick, _ = rig.send("test.quick")

        assert _final(rig, quick)["state"] == "succeeded"
        assert held.finished == [] and rig.states(slow) == ["accepted"]
    finally:
        held.release.set()
    assert _final(rig, slow)["state"] == "succeeded"
    _settle(rig)
    assert rig.states(slow) == ["accepted", "succeeded"]
    assert rig.states(quick) == ["accepted", "succeeded"]


def test_an_urgent_command_does_not_wait_behind_busy_workers(rigs: Any) -> None:
    from edge.commands.runner import WORKERS

    held = Held()
    rig = rigs(_register_hold_and_quick(held))
    assert rig.registry.get("broadcast.stop_all").urgent  # urgent by contract
    assert not rig.registry.get("test.hold").urgent
    try:
        busy = [rig.send("test.hold", {"tag": f"busy-{i}"})[0] for i in range(WORKERS + 1)]
        assert wait_for(lambda: len(held.started) == WORKERS, TIMEOUT)
        waiting = busy[-1]
        assert wait_for(lambda: rig.states(waiting) == ["accepted"], TIMEOUT)

        stop_all, _ = rig.send("broadcast.stop_all")

        assert _final(rig, stop_all)["state"] == "succeeded"
        assert len(held.started) == WORKERS and held.finished == []
    finally:
        held.release.set()
    for cmd_id in busy:
        assert _final(rig, cmd_id)["state"] == "succeeded"
    _settle(rig)
    assert all(rig.states(c) == ["accepted", "succeeded"] for c in [*busy, stop_all])
    assert rig.outbox.counters().get("commands_executed") == WORKERS + 3  # with the marker


def test_quick_commands_keep_their_order(rigs: Any) -> None:
    """``broadcast.play`` then ``broadcast.cancel`` of it must not run the other way round."""
    from edge.commands.runner import CommandRunner

    order: list[tuple[str, int]] = []

    class SeqArgs(EdgeModel):
        n: int = Field(description="Position in the sequence the server sent.")

    def record(name: str) -> Callable[[SeqArgs, CommandContext], dict[str, Any]]:
        def handler(args: SeqArgs, ctx: CommandContext) -> dict[str, Any]:
            order.append((name, args.n))
            return {}

        return handler

    def register(registry: CommandRegistry) -> None:
        registry.register("broadcast.play", SeqArgs, record("play"), description="Stand-in.")
        registry.register("broadcast.cancel", SeqArgs, record("cancel"), description="Stand-in.")
        registry.register("test.first", SeqArgs, record("first"), description="Ordinary.")
        registry.register("test.second", SeqArgs, record("second"), description="Ordinary.")

    # A patience longer than the test: what is checked is that the lanes start commands in order.
    rig = rigs(register, runner=CommandRunner(patience_s=TIMEOUT))
    names = ["broadcast.play", "broadcast.cancel", "test.first", "test.second"] * 5
    ids = [rig.send(name, {"n": n})[0] for n, name in enumerate(names)]
    for cmd_id in ids:
        assert _final(rig, cmd_id)["state"] == "succeeded"

    urgent = [n for name, n in order if name in ("play", "cancel")]
    ordinary = [n for name, n in order if name in ("first", "second")]
    assert urgent == sorted(urgent) and ordinary == sorted(ordinary) and len(order) == len(names)


def test_commands_registered_serial_run_one_at_a_time_in_arrival_order(rigs: Any) -> None:
    held = Held()

    def register(registry: CommandRegistry) -> None:
        registry.register("test.serial", HoldArgs, held.handler, description="One at a time.", serial=True)
        registry.register("test.quick", NoArgs, _quick, description="Return at once.")

    rig = rigs(register)
    assert rig.registry.get("config.desired").serial
    try:
        ids = [rig.send("test.serial", {"tag": str(i)})[0] for i in range(3)]
        assert wait_for(lambda: all(rig.states(c) == ["accepted"] for c in ids), TIMEOUT)
        quick, _ = rig.send("test.quick")  # another command is not held up by the queue
        assert _final(rig, quick)["state"] == "succeeded"
        assert held.started == ["0"]
    finally:
        held.release.set()
    for cmd_id in ids:
        assert _final(rig, cmd_id)["state"] == "succeeded"
    assert held.started == ["0", "1", "2"] and held.most_at_once == 1
    _settle(rig)
    assert all(rig.states(c) == ["accepted", "succeeded"] for c in ids)


def test_stopping_reports_commands_that_never_ran_as_interrupted_once(rigs: Any) -> None:
    from edge.commands.runner import WORKERS

    held = Held()
    rig = rigs(_register_hold_and_quick(held))
    ids = [rig.send("test.hold", {"tag": f"{i}"})[0] for i in range(WORKERS + 1)]
    assert wait_for(lambda: len(held.started) == WORKERS, TIMEOUT)
    assert wait_for(lambda: rig.journal.get(ids[-1]) is not None, TIMEOUT)

    def state(cmd_id: str) -> str | None:
        outcome = rig.journal.get(cmd_id)
        return outcome.state if outcome else None

    stopping = threading.Thread(target=rig.channel.stop, args=(TIMEOUT,))
    stopping.start()
    assert wait_for(lambda: state(ids[-1]) == "failed", TIMEOUT)
    held.release.set()  # the running ones finish while the channel waits for them
    stopping.join(TIMEOUT)
    assert not stopping.is_alive()

    outcomes = {c: rig.journal.get(c) for c in ids}
    assert [(o.state, o.reason) for o in outcomes.values() if o] == [("succeeded", None)] * WORKERS + [
        ("failed", "interrupted")
    ]
    assert wait_for(lambda: not rig.journal.pending_replies(), TIMEOUT)
    assert wait_for(lambda: all(len(rig.sender.acks(c)) >= 2 for c in ids), TIMEOUT)
    assert [rig.states(c) for c in ids] == [["accepted", "succeeded"]] * WORKERS + [["accepted", "failed"]]
    # A later start has nothing left to report.
    assert rig.channel.finish_interrupted() == 0


def test_a_full_lane_refuses_more_commands_as_busy(rigs: Any) -> None:
    from edge.commands.runner import CommandRunner

    held = Held()
    rig = rigs(_register_hold_and_quick(held), runner=CommandRunner(workers=1, limit=1))
    try:
        running, _ = rig.send("test.hold", {"tag": "running"})
        assert wait_for(lambda: held.started == ["running"], TIMEOUT)
        waiting, _ = rig.send("test.hold", {"tag": "waiting"})
        assert wait_for(lambda: rig.states(waiting) == ["accepted"], TIMEOUT)

        refused, token = rig.send("test.hold", {"tag": "one too many"})

        ack = _final(rig, refused)
        assert (ack["state"], ack["reason"]) == ("rejected", "busy")
    finally:
        held.release.set()
    assert _final(rig, running)["state"] == "succeeded" and _final(rig, waiting)["state"] == "succeeded"
    assert held.started == ["running", "waiting"]
    # Its refusal is journaled: the same command again is answered from the journal, not run.
    rig.sender.publish(f"{rig.channel.topics.prefix}cmd/test.hold", token)
    assert wait_for(lambda: "replayed" in [a.get("reason") for a in rig.sender.acks(refused)], TIMEOUT)
    assert rig.outbox.counters().get("commands_rejected_busy") == 1


# -- 10. one base64url -------------------------------------------------------------------------------------


def test_keys_and_signatures_share_one_strict_base64url() -> None:
    key = Ed25519PrivateKey.generate()
    raw = keys.public_key_raw(key)
    assert keys.public_key_b64(key) == b64url_encode(raw)
    canonical = b64url_encode(raw)
    # The last character of 32 bytes carries 4 unused bits; setting one spells the same bytes
    # differently. JWS refuses such a spelling, and so does the key loader.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    other = canonical[:-1] + alphabet[alphabet.index(canonical[-1]) | 1]
    with pytest.raises(ValueError):
        b64url_decode(other)
    with pytest.raises(KeyMaterialError, match="canonical"):
        keys.load_trusted_key(other)
