"""The broadcast service: the loudspeaker's commands, its hardware, and the scheduler between them.

Built by :func:`edge.services.build_services` for the ``loudspeaker`` role, after the store and before
the link: its first act is to open every relay (DESIGN.md §8, "at daemon start every relay is driven
off before anything else"); then it reads the schedule back, reporting an item that was on the air
when the daemon died as ``failed`` (``interrupted``).

Commands (signed, DESIGN.md §8), all answered at once; what happens later is in ``broadcast`` events:

- ``broadcast.play``: checked (zones, hosts, sizes, text length, times), committed with its
  ``scheduled`` event, then prepared in the background (the file fetched into the cache, the text
  rendered) so that it starts without delay when its turn comes;
- ``broadcast.cancel``: the item is cancelled, cut if it is on the air;
- ``broadcast.stop_all``: everything is silenced, every relay opened (before the ack), and everything
  queued (programmes too) dropped: the operator's emergency brake; the server sends again what should
  still play;
- ``relay.test``: a tone on each zone in turn, at the rank of a ``priority`` item, reported as one
  ``test`` event with the level played and heard per zone.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.audio import AudioUnavailable, BadAudio, open_file_source, open_player
from drivers.relay import RelayFault, load_relay_profile, open_relays
from drivers.resources import Resources
from edge.commands.registry import CommandContext, CommandFailed, CommandRegistry, NoArgs
from edge.config import EdgeConfig
from edge.exceptions import ConfigError, EdgeError, HardwareError, ResourceBusy
from edge.ids import new_id
from edge.services.broadcast import HARDWARE_META
from edge.services.broadcast.cache import AudioCache, SourceRejected
from edge.services.broadcast.plan import (
    ALL_ZONES,
    CancelArgs,
    Clock,
    Item,
    PlayArgs,
    RelayTestArgs,
    StreamSource,
    TextSource,
    UrlSource,
    bind_play_args,
    bind_relay_test_args,
    first_occurrence,
    iso,
    system_clock,
)
from edge.services.broadcast.schedule import ScheduleStore
from edge.services.broadcast.scheduler import BroadcastScheduler, RelayTest, SourceFailed
from edge.store import Outbox
from edge.supervisor import Loop, thread_loop

if TYPE_CHECKING:
    from drivers.audio import AudioPlayer, PcmSource
    from drivers.audio.capture import LevelMeter
    from drivers.relay import RelayBank
    from drivers.relay.profile import RelayProfile
    from edge.services.broadcast.live import LiveRelaySource

log = logging.getLogger(__name__)

#: How often a relay board that could not be opened is tried again, and its problem re-read.
RELAY_RETRY_S = 10.0
#: How often the speaker or the capture device is tried again after it failed to open.
AUDIO_RETRY_S = 30.0
#: Waits between attempts to fetch a file that was unreachable, doubling up to the last.
FETCH_BACKOFF_S = (5.0, 10.0, 30.0, 60.0, 300.0)
#: Outbox meta key with the loudspeaker's hardware problems, for ``edge status``.
STATUS_META = HARDWARE_META
#: Source reasons worth trying again later (the network, the speech engine); others are final.
TRANSIENT_REASONS = frozenset({"unreachable", "http_error", "speech_unavailable"})
#: The threads of a live relay (edge.services.broadcast.live), watched while one runs.
LIVE_RELAY_THREADS = ("live-relay-events", "live-relay-net", "live-relay-fallback")

PlayerFactory = Callable[[str | int | None, Resources, str], "AudioPlayer"]
MeterFactory = Callable[[str | int, Resources, str], "LevelMeter"]
Observer = Callable[[str, Mapping[str, Any]], None]


def _default_player(device: str | int | None, resources: Resources, holder: str) -> AudioPlayer:
    return open_player(device, resources=resources, holder=holder)


def _default_meter(device: str | int, resources: Resources, holder: str) -> LevelMeter:
    from drivers.audio.capture import LevelMeter

    return LevelMeter(device, resources=resources, holder=holder)


def _device(value: str | None) -> str | int | None:
    """A sounddevice device from the config: an index if it is all digits, else a name (fragment)."""
    return int(value) if value is not None and value.isdigit() else value


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


class BroadcastService:
    """The loudspeaker: relays, speaker, schedule and commands. ``start()`` / ``stop()``.

    ``pin_factory`` goes to a GPIO relay board (None: gpiozero's default); ``player_factory`` and
    ``meter_factory`` open the speaker and the capture device; ``clock`` is the wall clock the
    schedule and the quiet hours are read against.
    """

    def __init__(
        self,
        config: EdgeConfig,
        outbox: Outbox,
        registry: CommandRegistry,
        resources: Resources,
        *,
        clock: Clock = system_clock,
        pin_factory: Any = None,
        player_factory: PlayerFactory = _default_player,
        meter_factory: MeterFactory = _default_meter,
    ) -> None:
        if config.relays is None:
            raise ConfigError([("relays", "the loudspeaker role needs a [relays] section (the relay board)")])
        self._config = config
        self.settings = config.broadcast
        self._outbox = outbox
        self._resources = resources
        self._pin_factory = pin_factory
        self._player_factory = player_factory
        self._meter_factory = meter_factory
        self.clock = clock
        self.profile: RelayProfile = load_relay_profile(config.relays.profile)
        self.zones: tuple[str, ...] = self.profile.zone_names
        self._observers: list[Observer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._problems: dict[str, str | None] = {"relays": None, "speaker": None, "capture": None}
        with contextlib.suppress(EdgeError):  # a note left by an earlier daemon is not this one's
            self._outbox.set_meta(STATUS_META, "{}")
        self._audio_tried: dict[str, float] = {}

        # Before anything else: every relay open (a previous process may have left them closed).
        self.bank: RelayBank | None = None
        self._open_relays()

        state = config.store.state_dir
        self.cache = AudioCache(state / "audio", self.settings.sources)
        self._tts_dir = state / "tts"
        self._engine: Any = None
        self._player: AudioPlayer | None = None
        self._meter: LevelMeter | None = None
        self._live: LiveRelaySource | None = None  # the last live relay opened, for loops()

        self.store = ScheduleStore(outbox)
        self.preparer = Preparer(self)
        self.scheduler = BroadcastScheduler(self.store, self.settings, self, clock=clock, on_prepare=self.preparer.add)
        self._restore()

        self._play_args = bind_play_args(self)
        registry.register(
            "broadcast.play", self._play_args, self._cmd_play, description="Schedule an announcement (DESIGN.md §8)."
        )
        registry.register(
            "broadcast.cancel", CancelArgs, self._cmd_cancel, description="Cancel a broadcast, stopping it if on air."
        )
        registry.register(
            "broadcast.stop_all", NoArgs, self._cmd_stop_all, description="Silence everything, open every relay."
        )
        registry.register(
            "relay.test",
            bind_relay_test_args(self),
            self._cmd_relay_test,
            description="Play a test tone on each zone in turn and report the levels.",
        )
        self._monitor: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self.preparer.start()
        self.scheduler.start()
        self._monitor = threading.Thread(target=self._monitor_loop, name="broadcast-hardware", daemon=True)
        self._monitor.start()

    def stop(self) -> None:
        self._stop.set()
        self.scheduler.stop()
        self.preparer.stop()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        with self._lock:
            player, self._player = self._player, None
            meter, self._meter = self._meter, None
        if player is not None:
            player.close()
        if meter is not None:
            meter.close()
        if self.bank is not None:
            self.bank.close()  # opens every relay
        self.cache.close()

    def loops(self) -> list[Loop]:
        """The scheduler (every decision and relay), its observers' thread, the play on the air, the
        preparer, the hardware monitor, the relay board's watchdog (the maximum on-time) and notifier,
        and a live relay's threads while one runs. A play and a live relay end with their item: only
        an exception kills them."""
        scheduler = self.scheduler
        loops = [
            thread_loop("broadcast-scheduler", lambda: scheduler.thread),
            thread_loop("broadcast-notify", lambda: scheduler.notifier_thread),
            thread_loop("broadcast-play", lambda: scheduler.play_thread, may_end=True),
            thread_loop("broadcast-prepare", lambda: self.preparer.thread),
            thread_loop("broadcast-hardware", lambda: self._monitor),
            thread_loop("relays-watchdog", lambda: self.bank.watchdog_thread if self.bank else None),
            thread_loop("relays-notify", lambda: self.bank.notifier_thread if self.bank else None),
        ]
        for name in LIVE_RELAY_THREADS:
            loops.append(thread_loop(name, functools.partial(self._live_thread, name), may_end=True))
        return loops

    def _live_thread(self, name: str) -> threading.Thread | None:
        live = self._live
        return next((t for t in live.threads if t.name == name), None) if live is not None else None

    def reconfigure(self, config: EdgeConfig) -> None:
        """Apply the live [broadcast] keys: quiet hours, volume caps, timings, the queue cap."""
        self._config = config
        self.settings = config.broadcast
        self.scheduler.reconfigure(config.broadcast)
        log.info("broadcast settings applied: %d quiet spans", len(config.broadcast.quiet_hours))

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(kind, data)`` for broadcast and test events and relay changes (``edge sim``)."""
        self._observers.append(observer)
        self.scheduler.add_observer(observer)

    def status(self) -> dict[str, Any]:
        """What a technician wants to know now."""
        bank = self.bank
        return {
            "relays": {
                "profile": self.profile.model,
                "kind": self.profile.kind,
                "open": bank is not None,
                "states": bank.states() if bank is not None and bank.problem is None else None,
                "problem": self._relay_problem(),
            },
            "speaker": {"problem": self._problems["speaker"], "capture_problem": self._problems["capture"]},
            "schedule": self.scheduler.status(),
        }

    def selftest(self) -> dict[str, Any]:
        """The ``device.selftest`` section of this service."""
        return self.status()

    # -- commands ----------------------------------------------------------------------------------

    def _cmd_play(self, args: PlayArgs, ctx: CommandContext | None) -> dict[str, Any]:
        existing = self.scheduler.get(args.broadcast_id)
        if existing is None and len(self.scheduler.items()) >= self.settings.max_items:
            raise CommandFailed(
                "queue_full", f"the schedule holds {self.settings.max_items} items (broadcast.max_items)"
            )
        now = self.clock()
        due, deadline, occurrence = first_occurrence(args, now, self.settings.occurrence_grace_s)
        if due is None:
            raise CommandFailed("nothing_to_play", "the programme has no occurrence left (times, days, until)")
        item = Item(
            args=args,
            arrival=self.scheduler.next_arrival(),
            zones=self.resolve_zones(args.zones),
            cmd_id=ctx.claims.cmd_id if ctx is not None else None,
            due=due,
            deadline=deadline,
            occurrence=occurrence,
        )
        replaced = self.scheduler.schedule(item)
        return {
            "broadcast_id": item.broadcast_id,
            "state": "scheduled",
            "zones": list(item.zones),
            "due": iso(item.due, now.tzinfo),
            "deadline": iso(item.deadline, now.tzinfo),
            "occurrence": occurrence.isoformat() if occurrence is not None else None,
            "replaced": replaced is not None,
        }

    def _cmd_cancel(self, args: CancelArgs, ctx: CommandContext | None) -> dict[str, Any]:
        was_on_air = self.scheduler.on_air()
        item = self.scheduler.cancel(args.broadcast_id)
        if item is None:
            raise CommandFailed("unknown_broadcast", f"no broadcast {args.broadcast_id!r} is scheduled")
        return {"broadcast_id": args.broadcast_id, "state": "cancelled", "was_on_air": was_on_air is item}

    def _cmd_stop_all(self, args: NoArgs, ctx: CommandContext | None) -> dict[str, Any]:
        return self.scheduler.stop_all()

    def _cmd_relay_test(self, args: RelayTestArgs, ctx: CommandContext | None) -> dict[str, Any]:
        zones = tuple(args.zones) if args.zones is not None else self.zones
        seconds = args.seconds if args.seconds is not None else self.settings.relay_test_s
        test = RelayTest(
            test_id=new_id(),
            zones=zones,
            seconds=seconds,
            arrival=self.scheduler.next_arrival(),
            cmd_id=ctx.claims.cmd_id if ctx is not None else None,
        )
        self.scheduler.add_test(test)
        return {
            "test_id": test.test_id,
            "state": "scheduled",
            "zones": list(zones),
            "seconds": seconds,
            "capture": self._capture_device() is not None,
        }

    # -- checks of broadcast.play (PlayChecks) -----------------------------------------------------

    def now(self) -> datetime:
        return self.clock()

    def check_zones(self, zones: list[str]) -> list[str]:
        unknown = [z for z in zones if z != ALL_ZONES and z not in self.zones]
        if unknown:
            raise ValueError(
                f"unknown zone {', '.join(map(repr, unknown))}; this loudspeaker has {', '.join(self.zones)} (or all)"
            )
        return zones

    def check_source(self, source: UrlSource | TextSource | StreamSource) -> None:
        try:
            if isinstance(source, StreamSource):
                self.cache.check_url(source.stream)
                self.check_source(source.fallback)
            elif isinstance(source, UrlSource):
                self.cache.check_url(source.url)
                cap = self.settings.sources.max_file_bytes
                if source.bytes > cap:
                    raise SourceRejected(
                        "too_large", f"{source.bytes} bytes; broadcast.sources.max_file_bytes is {cap}"
                    )
        except SourceRejected as exc:
            raise ValueError(f"{exc.reason}: {exc.detail}") from None
        if isinstance(source, TextSource):
            cap = self._config.speech.max_chars
            if len(source.text) > cap:
                raise ValueError(f"text_too_long: {len(source.text)} characters; speech.max_chars is {cap}")

    def resolve_zones(self, zones: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """``['all']`` → every zone; otherwise the named zones this board has, in profile order."""
        if list(zones) == [ALL_ZONES]:
            return self.zones
        return tuple(z for z in self.zones if z in zones)

    # -- the hardware the scheduler plays on (scheduler.Hardware) ------------------------------------

    def relays(self) -> RelayBank:
        bank = self.bank
        if bank is None:
            raise RelayFault(self._problems["relays"] or "the relay board is not open")
        return bank

    def player(self) -> AudioPlayer:
        with self._lock:
            if self._player is not None:
                return self._player
            speaker = self._config.speaker
            device = _device(speaker.device) if speaker is not None else None
            try:
                self._player = self._player_factory(device, self._resources, "speaker.device")
            except (AudioUnavailable, ResourceBusy) as exc:
                self._set_problem("speaker", str(exc))
                raise AudioUnavailable(str(exc)) from None
            self._set_problem("speaker", None)
            return self._player

    def meter(self) -> LevelMeter | None:
        device = self._capture_device()
        if device is None:
            return None
        with self._lock:
            if self._meter is not None:
                return self._meter
            last = self._audio_tried.get("capture")
            if last is not None and time.monotonic() - last < AUDIO_RETRY_S:
                return None
            self._audio_tried["capture"] = time.monotonic()
            try:
                self._meter = self._meter_factory(device, self._resources, "speaker.capture_device")
            except (AudioUnavailable, ResourceBusy) as exc:
                self._set_problem("capture", str(exc))
                return None
            self._set_problem("capture", None)
            return self._meter

    def open_source(self, item: Item, start_s: float) -> PcmSource:
        source = item.args.source
        if isinstance(source, StreamSource):
            from edge.services.broadcast.live import LiveRelaySource

            fallback = item.fallback_path
            if fallback is None:
                raise SourceFailed("not_ready", "the stream's fallback is not prepared")

            def on_event(kind: str, detail: dict[str, Any]) -> None:
                self.scheduler.record_live(item, kind, detail)

            try:
                live = LiveRelaySource(
                    source.stream,
                    fallback=lambda: open_file_source(fallback),
                    stall_s=source.stall_s,
                    cache=self.cache,
                    on_event=on_event,
                )
            except SourceRejected as exc:
                raise SourceFailed(exc.reason, exc.detail) from None
            self._live = live
            return live
        if item.path is None:
            raise SourceFailed("not_ready", "the audio is not prepared")
        return open_file_source(item.path, start_s=start_s)

    def speaker_cap_db(self) -> float:
        speaker = self._config.speaker
        return speaker.max_volume_db if speaker is not None else 0.0

    def release(self, item: Item) -> None:
        for sha in item.pins:
            self.cache.unpin(sha)
        item.pins.clear()

    def reset_player(self) -> None:
        with self._lock:
            player, self._player = self._player, None
        if player is not None:
            # close() waits for the hung play; it must not hold up the scheduler.
            threading.Thread(target=player.close, name="broadcast-player-close", daemon=True).start()

    def _capture_device(self) -> str | int | None:
        speaker = self._config.speaker
        return _device(speaker.capture_device) if speaker is not None else None

    # -- preparing sources (on the preparer's thread) ------------------------------------------------

    def speech_engine(self) -> Any:
        if self._engine is None:
            from edge.speech import make_engine

            self._engine = make_engine(self._config.speech)
        return self._engine

    def prepare_file(self, source: UrlSource | TextSource) -> tuple[Path, str]:
        """The file to play for ``source`` and its sha256: fetched (and checked) or rendered. Raises
        :exc:`SourceFailed` with the ``failed`` event's reason."""
        if isinstance(source, UrlSource):
            try:
                path = self.cache.fetch(source.url, source.sha256, source.bytes)
            except SourceRejected as exc:
                raise SourceFailed(exc.reason, exc.detail) from None
            sha = source.sha256
        else:
            from edge.speech import SpeechUnavailable, TextTooLong, render_cached

            try:
                path = render_cached(self.speech_engine(), source.text, voice=source.voice, cache_dir=self._tts_dir)
            except SpeechUnavailable as exc:
                raise SourceFailed("speech_unavailable", str(exc)) from None
            except TextTooLong as exc:
                raise SourceFailed("text_too_long", str(exc)) from None
            except ValueError as exc:  # nothing left to say once normalised
                raise SourceFailed("bad_text", str(exc)) from None
            sha = _file_sha256(path)
        try:
            open_file_source(path).close()  # undecodable audio fails now, before any relay closes
        except BadAudio as exc:
            raise SourceFailed("bad_audio", str(exc)) from None
        return path, sha

    # -- hardware problems ---------------------------------------------------------------------------

    def _open_relays(self) -> None:
        relays = self._config.relays
        assert relays is not None
        try:
            bank = open_relays(
                self.profile,
                port=relays.port,
                resources=self._resources,
                holder="relays",
                modbus_unit=getattr(relays, "modbus_unit", None),
                pin_factory=self._pin_factory,
            )
        except (HardwareError, ResourceBusy, ConfigError) as exc:
            self._set_problem("relays", f"cannot open the relay board ({self.profile.model}): {exc}")
            return
        try:
            bank.all_off()
        except RelayFault as exc:  # the bank's watchdog keeps trying; nothing will close meanwhile
            log.error("could not open every relay at start: %s", exc)
        bank.on_safety_cut = self._on_safety_cut
        bank.on_change = self._on_relay_change
        self.bank = bank
        # states() reads a board with readback, which may be the one not answering: the open
        # itself succeeded, and its trouble is reported as the relay problem below.
        log.info("relay board %s open, every relay off", self.profile.model)
        self._set_problem("relays", bank.problem)

    def _relay_problem(self) -> str | None:
        bank = self.bank
        return bank.problem if bank is not None else self._problems["relays"]

    def _monitor_loop(self) -> None:
        probed = time.monotonic()
        while not self._stop.wait(RELAY_RETRY_S if self.bank is None else 2.0):
            try:
                if self.bank is None:
                    self._open_relays()
                    continue
                relays = self._config.relays
                if relays is not None and time.monotonic() - probed >= relays.probe_s:
                    probed = time.monotonic()
                    self._probe(self.bank)
                self._set_problem("relays", self.bank.problem)
            except Exception:
                log.exception("checking the relay board failed")

    def _probe(self, bank: RelayBank) -> None:
        """Read a board with readback while nothing plays: a board that does not answer is then the
        bank's problem, and one that answers again clears it. Between items only: a read that times
        out holds the bank for its timeout."""
        if not bank.profile.readback:
            return
        if self.scheduler.status()["phase"] != "idle":
            return
        with contextlib.suppress(RelayFault):
            bank.states()

    def _set_problem(self, part: str, problem: str | None) -> None:
        if self._problems.get(part) == problem:
            return
        was = self._problems.get(part)
        self._problems[part] = problem
        if problem is None:
            log.info("%s works again (was: %s)", part, was)
        else:
            log.error("%s problem: %s", part, problem)
        with contextlib.suppress(EdgeError):
            self._outbox.set_meta(STATUS_META, json.dumps({k: v for k, v in self._problems.items() if v}))

    def _on_safety_cut(self, reason: str) -> None:
        log.error("relay safety cut: %s", reason)
        self.scheduler.on_safety_cut(reason)

    def _on_relay_change(self, name: str, closed: bool) -> None:
        for observer in self._observers:
            try:
                observer("relay", {"relay": name, "closed": closed})
            except Exception:
                log.exception("relay observer failed")

    # -- after a restart -----------------------------------------------------------------------------

    def _restore(self) -> None:
        loaded = []
        for entry in self.store.load():
            item = entry.item
            item.zones = self.resolve_zones(item.args.zones)
            if not item.zones:
                log.error("stored broadcast %s names no zone this board has; cancelling it", item.broadcast_id)
                item.zones = tuple(item.args.zones)
                self.store.commit(
                    [self.scheduler.event_data(item, "cancelled", reason="unknown_zone")],
                    [ScheduleStore.delete(item.broadcast_id)],
                )
                continue
            loaded.append((item, entry.was_playing))
        interrupted = self.scheduler.restore(loaded)
        log.info("schedule restored: %d items, %d interrupted by the last stop", len(loaded), interrupted)


class Preparer:
    """Fetches and renders what scheduled items will play, ahead of their turn, on its own thread.

    A file that cannot be fetched because the network is down is tried again (with a growing wait)
    until its item is due; then the occurrence fails with the reason. A file that is wrong (hash, size,
    host, undecodable) fails the item at once: it would never get better.
    """

    def __init__(self, service: BroadcastService) -> None:
        self._service = service
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, Item]] = []
        self._attempts: dict[int, int] = {}
        self._seq = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def add(self, item: Item, when: float | None = None) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._queue, (when if when is not None else time.monotonic(), self._seq, item))
            self._cond.notify_all()

    def start(self) -> None:
        with self._cond:
            self._stopping = False
        self._thread = threading.Thread(target=self._run, name="broadcast-prepare", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._queue or self._queue[0][0] > time.monotonic()):
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(wait)
                if self._stopping:
                    return
                _, _, item = heapq.heappop(self._queue)
            try:
                self._prepare(item)
            except Exception as exc:  # a bug in one item must not stop the others from being prepared
                log.exception("preparing %s failed", item.broadcast_id)
                self._service.scheduler.prepare_failed(item, "internal_error", f"{type(exc).__name__}: {exc}")

    def _prepare(self, item: Item) -> None:
        scheduler = self._service.scheduler
        if scheduler.get(item.broadcast_id) is not item or item.ready:
            return  # replaced, cancelled or already done
        source = item.args.source
        try:
            if isinstance(source, StreamSource):
                path, sha = self._service.prepare_file(source.fallback)
                item.fallback_path = path
            else:
                path, sha = self._service.prepare_file(source)
                item.path = path
        except SourceFailed as exc:
            self._failed(item, exc.reason, exc.detail)
            return
        fetched = source.fallback if isinstance(source, StreamSource) else source
        if isinstance(fetched, UrlSource):
            self._service.cache.pin(sha)
            item.pins.append(sha)
            self._service.cache.prune()
        if not isinstance(source, StreamSource):
            item.sha256 = sha
        self._attempts.pop(id(item), None)
        scheduler.prepared(item)
        log.info("broadcast %s ready (%s)", item.broadcast_id, path.name)

    def _failed(self, item: Item, reason: str, detail: str) -> None:
        scheduler = self._service.scheduler
        attempt = self._attempts.get(id(item), 0)
        wait = FETCH_BACKOFF_S[min(attempt, len(FETCH_BACKOFF_S) - 1)]
        before_due = (item.due if item.due is not None else 0.0) - self._service.clock().timestamp()
        if reason in TRANSIENT_REASONS and before_due > 0:
            # Tried again until the item is due (the last try at its time), then it fails.
            wait = min(wait, before_due)
            self._attempts[id(item)] = attempt + 1
            log.warning("broadcast %s: %s (%s); trying again in %.0f s", item.broadcast_id, reason, detail, wait)
            self.add(item, time.monotonic() + wait)
            return
        self._attempts.pop(id(item), None)
        scheduler.prepare_failed(item, reason, detail)
        if item.args.is_programme and reason in TRANSIENT_REASONS:
            self.add(item, time.monotonic() + wait)  # the next occurrence gets another chance
