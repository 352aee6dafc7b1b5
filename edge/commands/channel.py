"""The command channel: ``cmd/#`` and ``cfg/desired`` in, ``ack`` (and ``cfg/reported``) out.

For each message, on the intake thread, in arrival order (all quick):

1. signature (:func:`~edge.commands.jws.verify`) and claims (:func:`~edge.commands.claims.check_claims`)
   judged by the device's command time (:class:`edge.clock.CommandClock`: the synchronised clock,
   or after a power cut what the device knows for sure about the time); a message on ``cmd/<name>``
   must carry that name, one on ``cfg/desired`` the name ``config.desired``; a ``cfg/desired`` whose
   signed version is not newer than the applied one is ignored quietly, and one that is newer is
   taken even after its ``exp`` (the retained message is how a device that was off converges; why
   that is safe: :mod:`edge.commands.desired`);
2. replay: a ``cmd_id`` already in the journal is not run again; the answer is ``rejected``/``replayed``
   with the earlier outcome in ``result.earlier``;
3. the handler must exist (``unknown_command``), take the arguments (``invalid_args``) and have room
   on its lane (``busy``);
4. the command is written to the journal with an ``accepted`` ack in one durable commit.

Then it runs on its lane (:mod:`edge.commands.runner`): in arrival order, never long behind a slow
command, and urgent commands never behind an ordinary one. Its outcome and the
``succeeded``/``failed`` ack are committed together, once.

Acks of commands whose signature verified are durable (the journal keeps them until the broker has
them). A rejection is also a ``security`` event. A message whose signature does not verify comes from
someone who is not the commune server, possibly in a flood: its ack and its ``security`` event are
rate-limited (:class:`RejectionBudget`); every one is still counted (``commands_rejected_<reason>`` in
``edge status``) and the events say how many were suppressed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.clock import now_iso
from edge.commands.claims import Claims, check_claims
from edge.commands.desired import DesiredConfig
from edge.commands.jws import MAX_TOKEN_BYTES, unverified_claims, verify
from edge.commands.registry import CommandContext, CommandFailed, CommandRegistry, Registration
from edge.commands.runner import CommandRunner, Job
from edge.config import CommandsConfig
from edge.exceptions import CommandRejected, StoreError
from edge.messages import CommandAck
from edge.store.journal import CommandJournal
from edge.store.outbox import Outbox
from edge.sync.link import MqttLink
from edge.sync.replies import ReplySender
from edge.topics import Topics

log = logging.getLogger(__name__)

#: How long :meth:`CommandChannel.stop` waits for running commands by default.
STOP_WAIT_S = 10.0

#: Messages waiting for the intake thread. Beyond this the newest are dropped and counted: a flood must not
#: eat the device's memory (the signed commands of a real server never come this fast).
QUEUE_MAX = 1000


def ack_payload(
    cmd_id: str | None, state: str, reason: str | None = None, result: Mapping[str, Any] | None = None
) -> bytes:
    ack = CommandAck(cmd_id=cmd_id, state=state, reason=reason, ts=now_iso(), result=dict(result or {}))  # type: ignore[arg-type]
    return ack.model_dump_json(exclude_none=True).encode()


def _detail(detail: str) -> dict[str, str]:
    return {"detail": detail} if detail else {}


class RejectionBudget:
    """A token bucket for unauthenticated rejections: ``burst`` at once, then ``rate_per_s``."""

    def __init__(self, burst: int = 20, rate_per_s: float = 0.5) -> None:
        self.burst = burst
        self.rate = rate_per_s
        self._tokens = float(burst)
        self._at = time.monotonic()
        self.suppressed: Counter[str] = Counter()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class CommandChannel:
    """Verifies, journals and runs signed commands for one device (judged by ``journal.clock``)."""

    def __init__(
        self,
        settings: CommandsConfig,
        trusted: Mapping[str, Ed25519PublicKey],
        outbox: Outbox,
        journal: CommandJournal,
        link: MqttLink,
        topics: Topics,
        registry: CommandRegistry,
        replies: ReplySender,
        desired: DesiredConfig,
        *,
        max_bytes: int = MAX_TOKEN_BYTES,
        runner: CommandRunner | None = None,
    ) -> None:
        self.settings = settings
        self.trusted = dict(trusted)
        self.outbox = outbox
        self.journal = journal
        self.link = link
        self.topics = topics
        self.registry = registry
        self.replies = replies
        self.desired = desired
        self.clock = journal.clock
        self.runner = runner or CommandRunner()
        self.max_bytes = min(max_bytes, MAX_TOKEN_BYTES)
        self.budget = RejectionBudget()
        self._queue: deque[tuple[str, bytes | None, int]] = deque()
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cmd_prefix = topics.prefix + "cmd/"
        link.subscribe(topics.cmd_filter, self._on_message)
        link.subscribe(topics.cfg_desired, self._on_message)

    # -- intake (network thread) ----------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        self._enqueue(topic, payload, len(payload))

    def deliver(self, topic: str, payload: bytes) -> None:
        """Take a message as if it had arrived from the broker on ``topic``: the simulator hands
        its training commands over here. It is verified, journaled and answered like any other."""
        self._on_message(topic, payload)

    def on_oversized(self, topic: str, size: int) -> None:
        """The link dropped a message over its size cap; if it was a command, reject it."""
        if topic.startswith(self._cmd_prefix) or topic == self.topics.cfg_desired:
            self._enqueue(topic, None, size)

    def _enqueue(self, topic: str, payload: bytes | None, size: int) -> None:
        with self._ready:
            if len(self._queue) >= QUEUE_MAX:
                with contextlib.suppress(StoreError):
                    self.outbox.bump("commands_dropped_queue_full")
                return
            self._queue.append((topic, payload, size))
            self._ready.notify()

    # -- intake ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._ready:
                if not self._queue:
                    self._ready.wait(5.0)
                item = self._queue.popleft() if self._queue else None
            try:
                if item is None:
                    self._flush_suppressed()
                    self.clock.remember()
                else:
                    self._handle(*item)
            except StoreError:
                log.exception("the event store failed while handling a command")
            except Exception:
                log.exception("handling a command failed")

    def _handle(self, topic: str, payload: bytes | None, size: int) -> None:
        desired_topic = topic == self.topics.cfg_desired
        if payload is None:
            self._reject_unverified(topic, None, CommandRejected("malformed", f"oversized: {size} bytes"))
            return
        try:
            header, raw = verify(payload, self.trusted, max_bytes=self.max_bytes)
        except CommandRejected as exc:
            self._reject_unverified(topic, payload, exc)
            return
        # From here the message is signed by a trusted key: its cmd_id can be believed.
        args = raw.get("args")
        version = args.get("version") if desired_topic and isinstance(args, dict) else None
        if self.desired.is_stale(version):
            self.outbox.bump("cfg_desired_unchanged")
            return
        try:
            claims = check_claims(
                raw,
                device=self.topics.device,
                commune=self.topics.commune,
                now=self.clock.now(),
                skew_s=self.settings.clock_skew_s,
                max_life_s=self.settings.max_life_s,
                # A newer desired version is stale by version, not by time (edge.commands.desired).
                enforce_exp=not self.desired.is_newer(version),
            )
        except CommandRejected as exc:
            self._reject_signed(topic, raw, header, exc)
            return
        self.clock.observe(claims.iat, self.settings.clock_skew_s)
        expected = "config.desired" if desired_topic else topic[len(self._cmd_prefix) :]
        if claims.name != expected:
            wrong = CommandRejected("malformed", f"topic is for {expected!r}, the command is {claims.name!r}")
            self._reject_signed(topic, raw, header, wrong)
            return
        earlier = self.journal.get(claims.cmd_id)
        if earlier is not None:
            replay = CommandRejected("replayed", f"{claims.cmd_id} was seen before ({earlier.state})")
            self._reject_signed(topic, raw, header, replay, result={"earlier": earlier.as_dict()}, journal=False)
            return
        try:
            registration = self.registry.get(claims.name)
            args = registration.parse_args(claims.args)
            lane = self.runner.lane(registration)
            if lane.full():
                raise CommandRejected("busy", f"{lane.name} has {lane.limit} commands waiting")
        except CommandRejected as exc:
            self._reject_signed(topic, raw, header, exc, claims=claims)
            return
        cmd_id = claims.cmd_id
        if not self.journal.record(
            cmd_id, claims.name, claims.exp, "accepted", reply=("ack", ack_payload(cmd_id, "accepted"), False)
        ):
            return  # cannot happen with one intake thread; never run a command twice if it does
        if desired_topic:
            self.desired.accepted(version)
        self.replies.wake()
        log.info("command %s %s accepted (kid %s)", claims.name, cmd_id, header.get("kid"))
        if not lane.submit(Job(cmd_id, claims.name, lambda: self._execute(claims, registration, args))):
            self._interrupted(cmd_id, claims.name, {}, "the command channel was stopping")

    def _execute(self, claims: Claims, registration: Registration, args: Any) -> None:
        """Run one accepted command on its lane and journal its outcome (with its ack) once."""
        cmd_id = claims.cmd_id

        def progress(result: Mapping[str, Any]) -> None:
            if self.journal.update(
                cmd_id,
                "in_progress",
                result=result,
                reply=("ack", ack_payload(cmd_id, "in_progress", None, result), False),
            ):
                self.replies.wake()

        state, reason, result = "succeeded", None, {}
        try:
            result = dict(registration.handler(args, CommandContext(claims, progress)) or {})
        except CommandFailed as exc:
            state, reason, result = (
                "failed",
                exc.reason,
                {**exc.result, **({"detail": exc.detail} if exc.detail else {})},
            )
        except CommandRejected as exc:
            state, reason, result = "failed", exc.reason, {"detail": exc.detail} if exc.detail else {}
        except Exception as exc:
            log.exception("command %s %s failed", claims.name, cmd_id)
            state, reason, result = "failed", "internal_error", {"detail": f"{type(exc).__name__}: {exc}"}
        self.outbox.bump("commands_executed")
        if not self.journal.update(
            cmd_id,
            state,
            reason=reason,
            result=result,
            reply=("ack", ack_payload(cmd_id, state, reason, result), False),
        ):
            # It was reported interrupted meanwhile (a stop that could not wait for it): one outcome only.
            log.warning("command %s %s ended %s after it was reported; not reported again", claims.name, cmd_id, state)
            return
        self.replies.wake()
        log.info("command %s %s %s%s", claims.name, cmd_id, state, f" ({reason})" if reason else "")

    def _interrupted(self, cmd_id: str, name: str, result: Mapping[str, Any], detail: str) -> bool:
        result = {**result, **_detail(detail)}
        done = self.journal.update(
            cmd_id,
            "failed",
            reason="interrupted",
            result=result,
            reply=("ack", ack_payload(cmd_id, "failed", "interrupted", result), False),
        )
        if done:
            log.warning("command %s %s: %s; reported failed (interrupted)", name, cmd_id, detail)
            self.replies.wake()
        return done

    def finish_interrupted(self) -> int:
        """At start: commands accepted but never finished (the daemon died mid-way) are reported
        ``failed``/``interrupted``. They are not run again: a loudspeaker must not replay by itself."""
        return sum(
            self._interrupted(o.cmd_id, o.name, o.result, "interrupted by a restart") for o in self.journal.unfinished()
        )

    # -- rejections -----------------------------------------------------------------------------

    def _security_event(self, topic: str, reason: str, detail: str, extra: Mapping[str, Any]) -> None:
        data: dict[str, Any] = {
            "kind": "command_rejected",
            "reason": reason,
            "detail": detail[:300],
            "topic": topic[len(self.topics.prefix) :] if topic.startswith(self.topics.prefix) else topic[:200],
            **extra,
        }
        if self.budget.suppressed:
            data["suppressed"] = dict(self.budget.suppressed)
            self.budget.suppressed.clear()
        self.outbox.append("security", data)

    def _flush_suppressed(self) -> None:
        """After a flood: one event says how many rejections had no event of their own."""
        if self.budget.suppressed and self.budget.take():
            data = {"kind": "command_rejected_suppressed", "suppressed": dict(self.budget.suppressed)}
            self.budget.suppressed.clear()
            self.outbox.append("security", data)

    def _count(self, reason: str) -> None:
        self.outbox.bump(f"commands_rejected_{reason}")

    def _reject_unverified(self, topic: str, payload: bytes | None, exc: CommandRejected) -> None:
        self._count(exc.reason)
        log.warning("rejected a message on %s: %s", topic, exc)
        if not self.budget.take():
            self.budget.suppressed[exc.reason] += 1
            return
        claimed = unverified_claims(payload, max_bytes=self.max_bytes) if payload is not None else None
        cmd_id = claimed.get("cmd_id") if claimed else None
        cmd_id = cmd_id if isinstance(cmd_id, str) and len(cmd_id) <= 64 else None
        self._security_event(
            topic, exc.reason, exc.detail, {"claimed_cmd_id": cmd_id, "bytes": len(payload or b""), "verified": False}
        )
        # Best effort and not journaled: the sender has not proved who it is.
        self.link.publish(self.topics.ack, ack_payload(cmd_id, "rejected", exc.reason, {"detail": exc.detail}))

    def _reject_signed(
        self,
        topic: str,
        raw: Mapping[str, Any],
        header: Mapping[str, Any],
        exc: CommandRejected,
        *,
        claims: Claims | None = None,
        result: Mapping[str, Any] | None = None,
        journal: bool = True,
    ) -> None:
        """A rejection of a message signed by a trusted key: durable ack, and a security event."""
        self._count(exc.reason)
        cmd_id = raw.get("cmd_id") if isinstance(raw.get("cmd_id"), str) else None
        cmd_id = cmd_id if cmd_id is None or len(cmd_id) <= 64 else None
        log.warning("rejected command %s on %s: %s", cmd_id, topic, exc)
        result = {**(result or {}), **_detail(exc.detail)}
        reply = ("ack", ack_payload(cmd_id, "rejected", exc.reason, result), False)
        if journal and claims is not None:
            # Fully valid but not runnable here (unknown_command, invalid_args): remember the
            # outcome so a repeat is answered from the journal.
            self.journal.record(
                claims.cmd_id, claims.name, claims.exp, "rejected", reason=exc.reason, result=result, reply=reply
            )
        else:
            self.journal.reply(*reply)
        if topic == self.topics.cfg_desired:
            self._report_desired_rejected(raw, exc)
        self.replies.wake()
        self._security_event(
            topic,
            exc.reason,
            exc.detail,
            {"cmd_id": cmd_id, "name": str(raw.get("name"))[:64], "kid": header.get("kid"), "verified": True},
        )

    def _report_desired_rejected(self, raw: Mapping[str, Any], exc: CommandRejected) -> None:
        args = raw.get("args")
        version = args.get("version") if isinstance(args, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and exc.reason != "replayed":
            self.desired.report(version, "rejected", f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason)

    # -- lifetime -------------------------------------------------------------------------------

    @property
    def thread(self) -> threading.Thread | None:
        """The intake thread, once started: the daemon's supervisor watches it."""
        return self._thread

    def start(self) -> CommandChannel:
        self.finish_interrupted()
        self.clock.remember()
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Stop taking commands; report those that never started ``interrupted``; wait up to
        ``timeout`` seconds for the running ones (one still running after that is reported
        ``interrupted`` at the next start, and its own outcome is then dropped). Idempotent."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        for job in self.runner.close():
            with contextlib.suppress(StoreError):
                self._interrupted(job.cmd_id, job.name, {}, "the daemon stopped before it ran")
        if not self.runner.join(max(0.0, deadline - time.monotonic())):
            log.warning("commands still running after %.0f s; stopping without them", timeout)
