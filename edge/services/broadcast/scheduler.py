"""The broadcast scheduler: which item is on the air, the relay sequence, and the proof of play.

One thread (``broadcast-scheduler``) makes every decision and drives every relay; a second one
(``broadcast-play``) only runs :meth:`~drivers.audio.AudioPlayer.play_source` for the item on the
air, so the scheduler can cut it at once. Commands (on the command channel's thread) change the
schedule under the scheduler's lock and wake it; the relay bank's own watchdog may open every relay
whatever the scheduler does.

For each play (DESIGN.md §8)::

    player and relay board ready?  source opens?      otherwise: failed, no relay touched
    amplifier on → warm-up          skipped when warm; a better item arriving now takes over the warm-up
    zones on → started|resumed      committed with the row (state playing) before the first sample
    play                            a strictly higher priority cuts it at once (preempted)
    zones off → finished|...        amplifier off after idle_off_s without anything to play

Arbitration: the due item with the highest priority plays, equal priorities in order of arrival; a
strictly higher priority preempts, an equal one waits. Quiet hours hold back normal items (those
already on the air finish). What was preempted is resumed (from where it was cut, less
``resume_rewind_s``), restarted or dropped as its ``on_preempt`` says; it keeps its place in the queue.
An item past its deadline is expired, never played late; a live stream stops at its ``not_after``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from drivers.audio import AudioUnavailable, BadAudio
from edge.clock import now_iso
from edge.config.broadcast import BroadcastConfig
from edge.exceptions import EdgeError, HardwareError, RelayFault
from edge.services.broadcast.plan import (
    RANK,
    Clock,
    Item,
    StreamSource,
    TextSource,
    UrlSource,
    gain_db,
    iso,
    next_occurrence,
    occurrence_deadline,
    system_clock,
)
from edge.services.broadcast.schedule import RowWriter, ScheduleStore

if TYPE_CHECKING:
    import numpy as np

    from drivers.audio import AudioPlayer, PcmSource, PlayResult
    from drivers.audio.capture import LevelMeter
    from drivers.relay import RelayBank

log = logging.getLogger(__name__)

#: Longest the scheduler sleeps: the wall clock may jump (NTP after boot), so due times are re-read.
TICK_S = 0.5
#: How often the position of the item on the air is noted for a resume after a crash.
CHECKPOINT_S = 2.0
#: A play told to stop that has not ended after this long is abandoned (a hung source or device).
STUCK_S = 5.0
#: Reasons a failure is the source's fault for good (every later occurrence would fail the same way).
PERMANENT_REASONS = frozenset(
    {"bad_hash", "bad_size", "too_large", "host_not_allowed", "bad_url", "bad_audio", "text_too_long", "bad_text"}
)
#: The test tone of relay.test.
TEST_TONE_HZ = 1000.0
TEST_TONE_DBFS = -20.0

EndState = Literal["finished", "preempted", "cancelled", "failed"]
Observer = Callable[[str, Mapping[str, Any]], None]


class Hardware(Protocol):
    """What the scheduler plays on; the service opens the real drivers behind it."""

    def relays(self) -> RelayBank:
        """The relay bank; raises :exc:`~edge.exceptions.HardwareError` (RelayFault) if there is none."""

    def player(self) -> AudioPlayer:
        """The audio player; raises :exc:`~drivers.audio.AudioUnavailable`."""

    def meter(self) -> LevelMeter | None:
        """A level meter on the capture device, None when none is configured."""

    def open_source(self, item: Item, start_s: float) -> PcmSource:
        """The item's audio from ``start_s`` on; raises BadAudio (or another EdgeError) if it cannot."""

    def speaker_cap_db(self) -> float:
        """The [speaker] global volume cap in dB (0 when there is none)."""

    def release(self, item: Item) -> None:
        """``item`` left the schedule: its cached files may be pruned."""

    def reset_player(self) -> None:
        """The player is stuck in a play that does not end: let it go and open a fresh one next time."""


class SourceFailed(EdgeError, RuntimeError):
    """A source that cannot be played; ``reason`` is the ``failed`` event's reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Cut:
    """Why the item on the air (or warming up) is being stopped."""

    state: EndState
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RelayTest:
    """A ``relay.test`` waiting or running: a tone on each zone in turn."""

    test_id: str
    zones: tuple[str, ...]
    seconds: float
    arrival: int
    cmd_id: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    cut: Cut | None = None

    rank = RANK["priority"]

    @property
    def order(self) -> tuple[int, int]:
        return (-self.rank, self.arrival)


class _Tracked:
    """A source that counts what was read from it and can be told to end (see :class:`_PlayJob`)."""

    def __init__(self, source: PcmSource) -> None:
        self.inner = source
        self.rate = source.rate
        self.channels = source.channels
        self.duration_s = source.duration_s
        self.frames_read = 0
        self.ended = threading.Event()

    def read(self, frames: int) -> np.ndarray:
        if self.ended.is_set():
            import numpy as np

            return np.zeros((0, self.channels), dtype=np.float32)
        block = self.inner.read(frames)
        self.frames_read += len(block)
        return block

    def close(self) -> None:
        self.inner.close()


class _PlayJob:
    """Plays one source on its own thread; the scheduler watches and may stop it."""

    def __init__(
        self,
        player: AudioPlayer,
        source: PcmSource,
        gain: float,
        meter: LevelMeter | None,
        wake: Callable[[], None],
        on_first_sample: Callable[[], None] = lambda: None,
    ) -> None:
        self.player = player
        self.source = _Tracked(source)
        self.gain = gain
        self.meter = meter
        self.result: PlayResult | None = None
        self.error: tuple[str, str] | None = None
        self.heard_dbfs: float | None = None
        self.meter_error: str | None = None
        self.done = threading.Event()
        self._wake = wake
        self._on_first_sample = on_first_sample
        self._thread = threading.Thread(target=self._run, name="broadcast-play", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # The flag covers a stop that comes before play_source has begun (it would clear the player's).
        self.source.ended.set()
        self.player.stop()

    def position_s(self) -> float:
        return self.source.frames_read / self.source.rate if self.source.rate else 0.0

    def _run(self) -> None:
        meter = self.meter
        try:
            if meter is not None:
                try:
                    meter.start()
                except (AudioUnavailable, HardwareError) as exc:
                    self.meter_error = str(exc)
                    meter = None
            self.result = self.player.play_source(self.source, gain_db=self.gain, on_start=self._on_first_sample)
        except AudioUnavailable as exc:
            self.error = ("no_audio_device", str(exc))
        except BadAudio as exc:
            self.error = ("bad_audio", str(exc))
        except SourceFailed as exc:
            self.error = (exc.reason, exc.detail)
        except Exception as exc:  # a bug or a source's surprise must not leave the relays on
            log.exception("playing failed")
            self.error = ("internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            if meter is not None:
                try:
                    self.heard_dbfs = meter.stop()
                except Exception as exc:
                    self.meter_error = str(exc)
            self.done.set()
            self._wake()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def thread(self) -> threading.Thread:
        return self._thread


class BroadcastScheduler:
    """Arbitrates, sequences the relays and records every state change. ``start()`` / ``stop()``."""

    def __init__(
        self,
        store: ScheduleStore,
        settings: BroadcastConfig,
        hardware: Hardware,
        *,
        clock: Clock = system_clock,
        on_prepare: Callable[[Item], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.hw = hardware
        self.clock = clock
        self._on_prepare = on_prepare or (lambda item: None)
        self._cond = threading.Condition(threading.RLock())
        # Held while a relay is switched: stop_all's all_off() never interleaves with a zone being closed.
        self._relay_lock = threading.Lock()
        self._items: dict[str, Item] = {}
        self._tests: deque[RelayTest] = deque()
        self._current: Item | RelayTest | None = None
        self._phase: Literal["idle", "warming", "playing"] = "idle"
        self._job: _PlayJob | None = None
        self._cut: Cut | None = None
        self._arrivals = store.last_arrival()
        self._idle_since = time.monotonic()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._observers: list[Observer] = []
        self._notes: queue.SimpleQueue[tuple[str, Mapping[str, Any]] | None] = queue.SimpleQueue()
        self._notifier: threading.Thread | None = None
        self.counts: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._notifier = threading.Thread(target=self._notify_loop, name="broadcast-notify", daemon=True)
        self._notifier.start()
        self._thread = threading.Thread(target=self._run, name="broadcast-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread. What plays is cut as ``preempted`` (reason ``shutdown``) and is resumed,
        restarted or dropped at the next start as its ``on_preempt`` says, as after a crash."""
        with self._cond:
            self._stopping.set()
            if self._current is not None and self._phase == "playing":
                self._cut_current(Cut("preempted", "shutdown"))
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._notifier is not None:
            self._notes.put(None)
            self._notifier.join(timeout=5)
            self._notifier = None

    @property
    def thread(self) -> threading.Thread | None:
        """The scheduler's thread (every decision, every relay), from :meth:`start` until :meth:`stop`."""
        return self._thread

    @property
    def notifier_thread(self) -> threading.Thread | None:
        """The thread observers are called on."""
        return self._notifier

    @property
    def play_thread(self) -> threading.Thread | None:
        """The thread playing the item on the air now, None between plays."""
        job = self._job
        return job.thread if job is not None else None

    def wake(self) -> None:
        """Look at the schedule again now (a command changed it, or the clock was moved)."""
        with self._cond:
            self._cond.notify_all()

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(kind, data)`` after each committed ``broadcast`` or ``test`` event, and with
        ``first_sample`` when an item's first samples were written to the card (on a thread of its own,
        in order)."""
        self._observers.append(observer)

    def reconfigure(self, settings: BroadcastConfig) -> None:
        with self._cond:
            self.settings = settings
            self._cond.notify_all()

    def next_arrival(self) -> int:
        with self._cond:
            self._arrivals += 1
            return self._arrivals

    # -- reading -----------------------------------------------------------------------------------

    def items(self) -> list[Item]:
        with self._cond:
            return sorted(self._items.values(), key=lambda i: i.order)

    def get(self, broadcast_id: str) -> Item | None:
        with self._cond:
            return self._items.get(broadcast_id)

    def on_air(self) -> Item | RelayTest | None:
        """What is warming up or playing now."""
        with self._cond:
            return self._current

    def status(self) -> dict[str, Any]:
        with self._cond:
            cur = self._current
            now = self._now_ts()
            return {
                "phase": self._phase,
                "on_air": None if cur is None else _name(cur),
                "quiet": self._quiet(),
                "items": [
                    {
                        "broadcast_id": i.broadcast_id,
                        "priority": i.priority,
                        "state": i.state,
                        "kind": i.kind,
                        "due": iso(i.due, self.clock().tzinfo),
                        "overdue_s": round(now - i.due, 1) if i.due is not None and i.due < now else 0.0,
                        "ready": i.ready,
                    }
                    for i in sorted(self._items.values(), key=lambda i: i.order)
                ],
                "tests_waiting": len(self._tests),
                "counts": dict(self.counts),
            }

    # -- changes from commands (any thread) --------------------------------------------------------

    def schedule(self, item: Item) -> Item | None:
        """Add ``item``, committing its ``scheduled`` event with its row. An item with the same
        broadcast_id is replaced: its ``cancelled`` (reason replaced) is in the same transaction, or,
        when it is on the air, comes once it has been cut. Returns the replaced item."""
        with self._cond:
            old = self._items.get(item.broadcast_id)
            events: list[Mapping[str, Any]] = []
            if old is not None:
                if old is self._current and self._phase == "playing":
                    self._cut_current(Cut("cancelled", "replaced"))
                else:
                    events.append(self.event_data(old, "cancelled", reason="replaced"))
                self._release(old)
            tz = self.clock().tzinfo
            events.append(
                self.event_data(
                    item,
                    "scheduled",
                    due=iso(item.due, tz),
                    deadline=iso(item.deadline, tz),
                    replaced=old is not None,
                )
            )
            self._items[item.broadcast_id] = item
            self._commit(events, [ScheduleStore.upsert(item)])
            self._cond.notify_all()
        self._on_prepare(item)
        return old

    def cancel(self, broadcast_id: str, reason: str = "cancelled") -> Item | None:
        """Cancel one item (stopping it if it is on the air). Returns it, None if there is no such item."""
        with self._cond:
            item = self._items.pop(broadcast_id, None)
            if item is None:
                return None
            self._release(item)
            if item is self._current and self._phase == "playing":
                self._cut_current(Cut("cancelled", reason))
                self._commit([], [ScheduleStore.delete(broadcast_id)])
            else:
                self._commit([self.event_data(item, "cancelled", reason=reason)], [ScheduleStore.delete(broadcast_id)])
            self._cond.notify_all()
            return item

    def stop_all(self) -> dict[str, Any]:
        """Silence everything and open every relay now; everything queued is dropped (``cancelled``).

        Returns once the relays are open (or the board failed to answer)."""
        with self._cond:
            playing = self._current if self._phase == "playing" else None
            dropped = [i for i in sorted(self._items.values(), key=lambda i: i.order) if i is not playing]
            tests = list(self._tests)
            self._tests.clear()
            if playing is not None or self._current is not None:
                self._cut_current(Cut("cancelled", "stop_all"))
            for item in self._items.values():
                self._release(item)
            self._items.clear()
            self._cond.notify_all()
        # Silence and open relays first, then the record: the ack waits for the fsync, the horns do not.
        relays = self._all_off("stop_all")
        with self._cond:
            cancelled = [self.event_data(i, "cancelled", reason="stop_all") for i in dropped]
            self._commit(cancelled, [ScheduleStore.delete_all()])
            for test in tests:
                self._record_test(test, "cancelled", "stop_all")
        return {
            "stopped": None if playing is None else _name(playing),
            "dropped": [i.broadcast_id for i in dropped],
            "relays_off": relays is None,
            **({"relay_problem": relays} if relays else {}),
        }

    def record_live(self, item: Item, kind: str, detail: Mapping[str, Any]) -> None:
        """A live relay's stream stalled (``failover``: the fallback plays) or came back: an event."""
        if kind in ("stall", "ended"):
            return  # a stall is reported with its failover, an end by the item's finished
        state = {"failover": "failover", "resumed": "stream_resumed"}.get(kind, kind)
        with self._cond:
            data = self.event_data(item, state, started_at=item.started_at, **dict(detail))
            self._commit([data], [])

    def add_test(self, test: RelayTest) -> None:
        with self._cond:
            self._tests.append(test)
            self._cond.notify_all()

    def prepared(self, item: Item) -> None:
        """The preparer made ``item`` ready (its file fetched or rendered)."""
        with self._cond:
            item.ready = True
            self._cond.notify_all()

    def prepare_failed(self, item: Item, reason: str, detail: str) -> None:
        """The preparer gave up on ``item``'s current occurrence (or, for a lasting reason, on the item)."""
        with self._cond:
            if self._items.get(item.broadcast_id) is not item:
                return
            data = self.event_data(item, "failed", reason=reason, detail=detail)
            if reason in PERMANENT_REASONS or not item.args.is_programme:
                self._drop(item, [data])
            else:
                self._advance(item, [data])
            self._cond.notify_all()

    def on_safety_cut(self, reason: str) -> None:
        """The relay bank's watchdog opened every relay (maximum on-time): what plays has failed."""
        with self._cond:
            if self._current is not None:
                self._cut_current(Cut("failed", "max_on_time", {"detail": reason}))
            self.counts["safety_cuts"] = self.counts.get("safety_cuts", 0) + 1
            self._cond.notify_all()

    # -- loading after a restart ---------------------------------------------------------------------

    def restore(self, loaded: Iterable[tuple[Item, bool]]) -> int:
        """Take back the stored schedule. An item that was on the air when the daemon died is reported
        ``failed`` (reason ``interrupted``) and then resumed, restarted or dropped as its on_preempt says.
        Returns how many were interrupted."""
        interrupted = 0
        with self._cond:
            for item, was_playing in loaded:
                self._items[item.broadcast_id] = item
                if not was_playing:
                    continue
                interrupted += 1
                data = self.event_data(
                    item,
                    "failed",
                    reason="interrupted",
                    started_at=item.started_at,
                    position_s=round(item.position_s, 3),
                )
                self._after_cut(item, item.position_s, [data])
            self._arrivals = max([self._arrivals, *(i.arrival for i in self._items.values())])
        for item in self.items():
            self._on_prepare(item)
        return interrupted

    # -- the scheduler thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                chosen = self._choose()
                if isinstance(chosen, Item):
                    self._serve(chosen)
                elif isinstance(chosen, RelayTest):
                    self._serve_test(chosen)
            except Exception:  # the scheduler must outlive any bug in one item
                log.exception("broadcast scheduler step failed")
                self._all_off("scheduler_error")
                self._stopping.wait(1.0)
            finally:
                with self._cond:
                    if self._current is not None:
                        self._current = None
                        self._phase = "idle"
                        self._cut = None
                        self._idle_since = time.monotonic()
        self._all_off("stopping")

    def _choose(self) -> Item | RelayTest | None:
        """Wait for something to play; meanwhile expire what is late and switch the idle amplifier off."""
        with self._cond:
            now = self._now_ts()
            self._expire(now)
            best = self._best(now)
            if best is not None:
                self._current = best
                self._cut = None
                return best
            wait = min(TICK_S, self._seconds_to_next_due(now))
            idle_off = self._idle_off_in()
        if idle_off is not None and idle_off <= 0:
            self._amplifier_off_if_idle()
            idle_off = None
        with self._cond:
            if not self._stopping.is_set():
                self._cond.wait(max(0.0, min(wait, idle_off if idle_off is not None else wait)))
        return None

    def _serve(self, item: Item) -> None:
        """One play of ``item``: the relay sequence, the play, and its events."""
        try:
            player = self.hw.player()
        except AudioUnavailable as exc:
            self._fail(item, "no_audio_device", str(exc))
            return
        try:
            bank = self.hw.relays()
        except HardwareError as exc:
            self._fail(item, "relay_fault", str(exc))
            return
        start_s = max(0.0, item.position_s - self.settings.resume_rewind_s) if item.resuming else 0.0
        if item.kind == "stream":
            start_s = 0.0  # a live stream is rejoined, not rewound
        try:
            source = self.hw.open_source(item, start_s)
        except SourceFailed as exc:
            self._fail(item, exc.reason, exc.detail)
            return
        except BadAudio as exc:
            self._fail(item, "bad_audio", str(exc))
            return
        except (EdgeError, OSError) as exc:
            self._fail(item, "source_error", str(exc))
            return
        job: _PlayJob | None = None
        try:
            if not self._warm_up(item, bank):
                return
            with self._relay_lock:
                if not self._still_current(item):
                    return
                bank.set_zones(item.zones)
            meter = self.hw.meter()
            gain = gain_db(
                item.args.volume_db,
                item.zones,
                min(self.settings.max_volume_db, self.hw.speaker_cap_db()),
                self.settings.zone_max_volume_db,
            )
            with self._cond:
                if not self._still_current(item):
                    return
                bid = item.broadcast_id
                job = _PlayJob(
                    player,
                    source,
                    gain,
                    meter,
                    self.wake,
                    # For observers (edge sim, the benchmark): when sound really reached the card.
                    on_first_sample=lambda: self._notify("first_sample", {"broadcast_id": bid, "at": time.monotonic()}),
                )
                self._job = job
                self._phase = "playing"
                self._begin_play(item, start_s, gain)
            job.start()
            self._watch(item, job)
            self._zones_off(bank)  # zones off, then the proof of play (DESIGN.md §8's order)
            self._end_play(item, job, start_s)
        except HardwareError as exc:  # RelayFault: the board did not do what it was told
            log.error("relay board failed during %s: %s", item.broadcast_id, exc)
            if job is not None and not job.done.is_set():
                job.stop()
                job.join(5)
                self._end_play(item, job, start_s, fault=("relay_fault", str(exc)))
            else:
                self._fail(item, "relay_fault", str(exc))
            self._all_off("relay_fault")
        finally:
            with self._cond:
                self._job = None
            with contextlib.suppress(Exception):
                source.close()
            self._zones_off(bank)
            if job is None:
                self._report_cut_before_start(item)

    def _report_cut_before_start(self, item: Item) -> None:
        """``item`` stopped being the one to play before its first sample. A better item, a cancel and
        stop_all leave it to their own events; the safety cut is this item's failure, as it is during
        a play. It lands here when the scheduler hung after closing the zones (the watchdog opened
        them meanwhile): played later instead, the item would go out with its cut never reported."""
        with self._cond:
            cut = self._cut
            if cut is None or cut.state != "failed" or self._items.get(item.broadcast_id) is not item:
                return
            data = self.event_data(item, "failed", reason=cut.reason, **cut.extra)
            self._finish_failed(item, data, cut.reason, True)

    def _warm_up(self, item: Item | RelayTest, bank: RelayBank) -> bool:
        """Amplifier on and wait out its warm-up. False if ``item`` stopped being the one to play:
        cancelled, or a better item arrived, which then takes over the warm-up already under way."""
        with self._relay_lock:
            if not self._still_current(item):
                return False
            if bank.amp_on_since is None:
                bank.amplifier(True)
        with self._cond:
            self._phase = "warming"
            while True:
                if not self._still_current(item):
                    return False
                since = bank.amp_on_since
                if since is None:
                    if self._cut is not None or not isinstance(item, Item):
                        return False  # the safety cut opened it meanwhile
                    raise RelayFault("the amplifier relay did not stay on")
                left = since + bank.warm_up_s - time.monotonic()
                now = self._now_ts()
                better = self._best(now)
                if better is not None and better is not item and better.order < item.order:
                    log.info("%s takes over the warm-up from %s", _name(better), _name(item))
                    return False
                if left <= 0:
                    return True
                self._cond.wait(min(left, TICK_S))

    def _watch(self, item: Item, job: _PlayJob) -> None:
        """Wait for the play to end, cutting it for a higher priority or a live stream's not_after."""
        last_checkpoint = time.monotonic()
        cut_at: float | None = None
        with self._cond:
            while not job.done.is_set():
                if self._cut is not None and cut_at is None:
                    cut_at = time.monotonic()
                if cut_at is not None and time.monotonic() - cut_at > STUCK_S:
                    # The source or the device hangs (a read that never returns): the relays are off
                    # by now; give up on this play rather than hang the whole loudspeaker with it.
                    log.error("the play of %s did not stop within %.0f s; abandoning it", item.broadcast_id, STUCK_S)
                    job.error = ("stuck", f"the play did not stop within {STUCK_S:.0f} s")
                    self.hw.reset_player()
                    return
                now = self._now_ts()
                if self._cut is None:
                    better = self._best(now, exclude=item)
                    if better is not None and better.rank > item.rank:
                        self._cut_current(
                            Cut("preempted", "preempted", {"by": _name(better), "by_priority": _priority(better)})
                        )
                    elif (
                        item.kind == "stream"
                        and item.args.not_after is not None
                        and now >= item.args.not_after.timestamp()
                    ):
                        self._cut_current(Cut("finished", "not_after"))
                if time.monotonic() - last_checkpoint >= CHECKPOINT_S and self._cut is None:
                    last_checkpoint = time.monotonic()
                    position = item.position_s + job.position_s()
                    with contextlib.suppress(EdgeError):
                        self.store.checkpoint(item.broadcast_id, position)
                self._cond.wait(TICK_S)
        job.join(5)

    def _begin_play(self, item: Item, start_s: float, gain: float) -> None:
        """Commit ``started`` (or ``resumed``) with the row in state playing, before the first sample."""
        state = "resumed" if item.resuming else "started"
        item.state = "playing"
        item.started_at = now_iso()
        item.position_s = start_s
        data = self.event_data(item, state, started_at=item.started_at, volume_db=gain)
        if item.resuming:
            data["position_s"] = round(start_s, 3)
        self._commit([data], [ScheduleStore.upsert(item)])

    def _end_play(self, item: Item, job: _PlayJob, start_s: float, fault: tuple[str, str] | None = None) -> None:
        """The play has ended: report how, and move the item on (next repeat, occurrence, or gone)."""
        result = job.result
        played = result.seconds if result is not None else job.position_s()
        with self._cond:
            cut = self._cut
            error = fault or job.error
            measured: dict[str, Any] = {
                "started_at": item.started_at,
                "ended_at": now_iso(),
                "duration_s": round(played, 3),
                "level_dbfs": _round(result.rms_dbfs if result is not None else None),
                "heard_dbfs": _round(job.heard_dbfs),
            }
            if job.meter_error:
                measured["capture_problem"] = job.meter_error
            live: Any = job.source.inner
            if item.kind == "stream" and hasattr(live, "failovers"):
                measured.update(
                    failovers=live.failovers,
                    gaps_s=[round(g, 3) for g in live.gaps_s],
                    stream_s=round(live.stream_frames / live.rate, 3),
                )
            if item.resuming:
                measured["position_s"] = round(start_s, 3)
            item.state = "scheduled"
            item.started_at = None
            owned = self._items.get(item.broadcast_id) is item
            if cut is not None and cut.state == "cancelled":
                data = self.event_data(item, "cancelled", reason=cut.reason, **measured)
                self._commit([data], [])
            elif cut is not None and cut.state == "failed":  # the safety cut: its reason first
                extra = {**cut.extra, **({"detail": f"{error[0]}: {error[1]}"} if error else {})}
                data = self.event_data(item, "failed", reason=cut.reason, **extra, **measured)
                self._finish_failed(item, data, cut.reason, owned)
            elif error is not None:
                data = self.event_data(item, "failed", reason=error[0], detail=error[1], **measured)
                self._finish_failed(item, data, error[0], owned)
            elif cut is None or cut.state == "finished":
                reason = {} if cut is None else {"reason": cut.reason}
                data = self.event_data(item, "finished", **reason, **measured)
                self._finish_played(item, data, owned)
            else:
                data = self.event_data(item, "preempted", reason=cut.reason, **cut.extra, **measured)
                if owned:
                    self._after_cut(item, start_s + played, [data])
                else:
                    self._commit([data], [])
            self._cut = None
            self._phase = "idle"

    def _finish_played(self, item: Item, data: dict[str, Any], owned: bool) -> None:
        if not owned:
            self._commit([data], [])
        elif item.play < item.args.repeat:
            item.play += 1
            item.position_s = 0.0
            item.resuming = False
            item.due = self._now_ts() + item.args.gap_s
            self._commit([data], [ScheduleStore.upsert(item)])
        else:
            self._advance(item, [data])

    def _finish_failed(self, item: Item, data: dict[str, Any], reason: str, owned: bool) -> None:
        if not owned:
            self._commit([data], [])
        elif reason in PERMANENT_REASONS or not item.args.is_programme:
            self._drop(item, [data])
        else:
            self._advance(item, [data])

    def _after_cut(self, item: Item, position_s: float, events: list[Mapping[str, Any]]) -> None:
        """A play was cut (preempted, or interrupted by a restart): resume, restart or drop it."""
        policy = item.args.on_preempt
        item.state = "scheduled"
        item.started_at = None
        if policy == "drop":
            self._advance(item, events)
            return
        item.resuming = policy == "resume" and item.kind != "stream"
        item.position_s = position_s if item.resuming else 0.0
        self._commit(events, [ScheduleStore.upsert(item)])

    # -- relay.test ----------------------------------------------------------------------------------

    def _serve_test(self, test: RelayTest) -> None:
        """A tone on each zone in turn, measured; one ``test`` event with the result per zone."""
        with self._cond:
            if self._tests and self._tests[0] is test:
                self._tests.popleft()
        try:
            player = self.hw.player()
            bank = self.hw.relays()
        except (AudioUnavailable, HardwareError) as exc:
            why = "no_audio_device" if isinstance(exc, AudioUnavailable) else "relay_fault"
            self._record_test(test, "failed", why, str(exc))
            return
        state: str = "finished"
        reason: str | None = None
        detail: str | None = None
        try:
            if not self._warm_up(test, bank):
                state, reason = "preempted", "preempted"
            else:
                for zone in test.zones:
                    if test.cut is not None or not self._still_current(test):
                        test.results.append({"zone": zone, "state": "skipped"})
                        continue
                    with self._relay_lock:
                        bank.set_zones([zone])
                    test.results.append(self._test_zone(test, zone, player, bank))
                if test.cut is not None:
                    state, reason = test.cut.state, test.cut.reason
        except HardwareError as exc:
            state, reason, detail = "failed", "relay_fault", str(exc)
            self._all_off("relay_fault")
        finally:
            self._zones_off(bank)
        self._record_test(test, state, reason, detail)

    def _test_zone(self, test: RelayTest, zone: str, player: AudioPlayer, bank: RelayBank) -> dict[str, Any]:
        tone = ToneSource(TEST_TONE_HZ, test.seconds, dbfs=TEST_TONE_DBFS)
        job = _PlayJob(player, tone, 0.0, self.hw.meter(), self.wake)
        with self._cond:
            self._job = job
            self._phase = "playing"
        job.start()
        with self._cond:
            while not job.done.is_set():
                better = self._best(self._now_ts())
                if test.cut is None and better is not None and better.rank > test.rank:
                    test.cut = Cut("preempted", "preempted", {"by": _name(better)})
                if test.cut is not None:
                    job.stop()
                self._cond.wait(TICK_S)
            self._job = None
        job.join(5)
        states = bank.states()
        result = job.result
        out: dict[str, Any] = {
            "zone": zone,
            "state": "failed" if job.error else "cut" if result is not None and result.stopped else "played",
            "relay": states.get(zone),
            "amplifier": states.get("amplifier"),
            "duration_s": round(result.seconds, 3) if result is not None else 0.0,
            "level_dbfs": _round(result.rms_dbfs if result is not None else None),
            "heard_dbfs": _round(job.heard_dbfs),
        }
        if job.error:
            out["reason"], out["detail"] = job.error
        if job.meter_error:
            out["capture_problem"] = job.meter_error
        return out

    def _record_test(self, test: RelayTest, state: str, reason: str | None, detail: str | None = None) -> None:
        data = {
            "kind": "relay",
            "test_id": test.test_id,
            "cmd_id": test.cmd_id,
            "state": state,
            "reason": reason,
            "seconds": test.seconds,
            "zones": test.results or [{"zone": z, "state": "skipped"} for z in test.zones],
        }
        if detail:
            data["detail"] = detail
        try:
            self.store.outbox.append("test", data)
        except EdgeError:
            log.exception("could not record relay test %s", test.test_id)
            return
        self._notify("test", data)

    # -- arbitration helpers (under the lock) ------------------------------------------------------------

    def _now_ts(self) -> float:
        return self.clock().timestamp()

    def _quiet(self) -> bool:
        return self.settings.quiet_at(self.clock().time().replace(tzinfo=None))

    def _best(self, now: float, exclude: Item | None = None) -> Item | RelayTest | None:
        """The item to play now: due, ready, not held by quiet hours; highest priority, first come."""
        quiet = self._quiet()
        best: Item | RelayTest | None = None
        for item in self._items.values():
            if item is exclude or not item.ready or not item.is_due(now) or item.is_late(now):
                continue
            if quiet and item.priority == "normal":
                continue
            if best is None or item.order < best.order:
                best = item
        if self._tests and (best is None or self._tests[0].order < best.order):
            return self._tests[0]
        return best

    def _seconds_to_next_due(self, now: float) -> float:
        dues = [i.due - now for i in self._items.values() if i.due is not None and i.due > now]
        return min(dues, default=TICK_S)

    def _still_current(self, item: Item | RelayTest) -> bool:
        if self._current is not item or self._stopping.is_set():
            return False
        if isinstance(item, Item):
            return self._cut is None and self._items.get(item.broadcast_id) is item
        return item.cut is None

    def _cut_current(self, cut: Cut) -> None:
        current = self._current
        if current is None:
            return
        if isinstance(current, RelayTest):
            current.cut = current.cut or cut
        elif self._cut is None or cut.state == "cancelled":
            self._cut = cut  # a cancel wins over a preemption in flight: the item is gone either way
        if self._job is not None:
            self._job.stop()
        log.info("cutting %s: %s (%s)", _name(current), cut.state, cut.reason)
        self._cond.notify_all()

    def _expire(self, now: float) -> None:
        for item in sorted(self._items.values(), key=lambda i: i.order):
            guard = 0
            while (
                self._items.get(item.broadcast_id) is item
                and item is not self._current
                and item.due is not None
                and item.is_late(now)
                and guard < 500
            ):
                guard += 1
                past = item.args.not_after is not None and now > item.args.not_after.timestamp()
                data = self.event_data(item, "expired", reason="not_after" if past else "late")
                if item.priority == "normal" and self._quiet():
                    data["held_by"] = "quiet_hours"
                self._advance(item, [data])

    def _advance(self, item: Item, events: list[Mapping[str, Any]]) -> None:
        """The current occurrence is over: on to the programme's next one, or the item is done."""
        nxt = None
        if item.args.is_programme and item.occurrence is not None:
            nxt = next_occurrence(item.args, item.occurrence + timedelta(seconds=1))
        if nxt is None:
            self._drop(item, events)
            return
        item.occurrence = nxt
        item.due = nxt.timestamp()
        item.deadline = occurrence_deadline(item.args, nxt, self.settings.occurrence_grace_s)
        item.play = 1
        item.position_s = 0.0
        item.resuming = False
        item.state = "scheduled"
        self._commit(events, [ScheduleStore.upsert(item)])

    def _drop(self, item: Item, events: list[Mapping[str, Any]]) -> None:
        if self._items.get(item.broadcast_id) is item:
            del self._items[item.broadcast_id]
            self._release(item)
            self._commit(events, [ScheduleStore.delete(item.broadcast_id)])
        else:
            self._commit(events, [])

    def _release(self, item: Item) -> None:
        try:
            self.hw.release(item)
        except Exception:
            log.exception("releasing the files of %s failed", item.broadcast_id)

    def _fail(self, item: Item, reason: str, detail: str) -> None:
        """A play that could not begin: no relay was closed for it."""
        log.warning("broadcast %s failed: %s: %s", item.broadcast_id, reason, detail)
        with self._cond:
            if self._items.get(item.broadcast_id) is not item:
                return
            self._finish_failed(item, self.event_data(item, "failed", reason=reason, detail=detail), reason, True)

    def _commit(self, events: Sequence[Mapping[str, Any]], writers: Sequence[RowWriter]) -> None:
        if not events and not writers:
            return
        self.store.commit(events, writers)
        for data in events:
            state = str(data["state"])
            self.counts[state] = self.counts.get(state, 0) + 1
            log.info(
                "broadcast %s %s%s",
                data["broadcast_id"],
                state,
                f" ({data['reason']})" if data.get("reason") else "",
            )
            self._notify("broadcast", data)

    def _notify(self, kind: str, data: Mapping[str, Any]) -> None:
        # Observers run on their own thread, never under the scheduler's lock: one that is slow, or
        # that asks the scheduler something, must not hold up or deadlock the loudspeaker.
        if self._observers:
            self._notes.put((kind, data))

    def _notify_loop(self) -> None:
        while True:
            note = self._notes.get()
            if note is None:
                return
            kind, data = note
            for observer in list(self._observers):
                try:
                    observer(kind, data)
                except Exception:
                    log.exception("broadcast observer failed on %s", kind)

    def event_data(self, item: Item, state: str, **extra: Any) -> dict[str, Any]:
        """A ``broadcast`` event's data (DESIGN.md §8); fields that do not apply are null."""
        source = item.args.source
        described: dict[str, Any] = {"kind": source.kind, "sha256": item.sha256}
        if isinstance(source, UrlSource):
            described.update(sha256=source.sha256, url=source.url, bytes=source.bytes)
        elif isinstance(source, TextSource):
            described.update(chars=len(source.text), voice=source.voice)
        elif isinstance(source, StreamSource):
            described.update(url=source.stream, fallback=source.fallback.kind, stall_s=source.stall_s)
        data: dict[str, Any] = {
            "broadcast_id": item.broadcast_id,
            "state": state,
            "priority": item.priority,
            "zones": list(item.zones),
            "source": described,
            "sha256": described["sha256"],
            "started_at": None,
            "ended_at": None,
            "duration_s": None,
            "level_dbfs": None,
            "heard_dbfs": None,
            "reason": None,
            "occurrence": item.occurrence.isoformat() if item.occurrence is not None else None,
            "play": item.play,
            "repeat": item.args.repeat,
            "cmd_id": item.cmd_id,
        }
        data.update(extra)
        return data

    # -- relays ------------------------------------------------------------------------------------

    def _zones_off(self, bank: RelayBank) -> None:
        with self._relay_lock:
            try:
                bank.set_zones(())
            except HardwareError as exc:
                log.error("could not open the zone relays: %s", exc)
                # A failed all_off() is retried by the bank's watchdog until the board answers.
                with contextlib.suppress(HardwareError):
                    bank.all_off()
        with self._cond:
            self._idle_since = time.monotonic()

    def _idle_off_in(self) -> float | None:
        """Seconds until the idle amplifier goes off; None when it is off or in use."""
        try:
            bank = self.hw.relays()
        except HardwareError:
            return None
        if bank.amp_on_since is None or self._current is not None:
            return None
        idle = self.settings.idle_off_s if self.settings.idle_off_s is not None else bank.idle_off_s
        return self._idle_since + idle - time.monotonic()

    def _amplifier_off_if_idle(self) -> None:
        with self._relay_lock:
            with self._cond:
                if self._current is not None:
                    return
            try:
                bank = self.hw.relays()
                bank.set_zones(())
                bank.amplifier(False)
            except HardwareError as exc:
                log.error("could not switch the idle amplifier off: %s", exc)

    def _all_off(self, why: str) -> str | None:
        """Open every relay; the board's problem as a sentence if it did not answer."""
        with self._relay_lock:
            try:
                bank = self.hw.relays()
            except HardwareError as exc:
                return str(exc)
            try:
                bank.all_off()
            except HardwareError as exc:
                log.error("could not open every relay (%s): %s", why, exc)
                return str(exc)
        return None


class ToneSource:
    """A sine tone as a :class:`~drivers.audio.PcmSource` (relay.test, ``edge test``)."""

    def __init__(self, hz: float, seconds: float, *, dbfs: float = -20.0, rate: int = 48000) -> None:
        self.rate = rate
        self.channels = 1
        self.duration_s: float | None = seconds
        self._hz = hz
        self._amplitude = 10 ** (dbfs / 20) * 2**0.5  # a sine's RMS is its amplitude / sqrt(2)
        self._total = int(seconds * rate)
        self._done = 0

    def read(self, frames: int) -> np.ndarray:
        import numpy as np

        n = max(0, min(frames, self._total - self._done))
        t = (np.arange(self._done, self._done + n) / self.rate).astype(np.float64)
        self._done += n
        return (self._amplitude * np.sin(2 * np.pi * self._hz * t)).astype(np.float32).reshape(-1, 1)

    def close(self) -> None:
        self._done = self._total


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _name(what: Item | RelayTest) -> str:
    return what.broadcast_id if isinstance(what, Item) else f"relay.test:{what.test_id}"


def _priority(what: Item | RelayTest) -> str:
    return what.priority if isinstance(what, Item) else "priority"
