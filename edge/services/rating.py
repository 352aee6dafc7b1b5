"""The rating service: presses become exactly one committed ``rating`` each, then the citizen is thanked.

For every press the panel delivers (on the panel's dispatcher thread, one at a time)::

    verdict = rules.classify(press)           # window, misuse (flagged, never dropped)
    outbox.append("rating", ..., dedupe_key)  # durable first: group commit, synchronous=FULL
    panel.acknowledge(press)                  # serial: ACK <mseq>, the MCU stops repeating
    thank-you LED, beep, spoken thank-you     # only now does the citizen see and hear thanks

If the commit raises, nothing after it happens: the press is not acknowledged and a serial panel
delivers it again. The dedupe key is the press's own identity (:attr:`Press.key`), so a BTN repeated
by the MCU, or delivered again after the host restarted, is one rating.

Panel trouble (connected, disconnected, stuck, firmware mismatch, speaker problems) becomes ``panel``
events. A panel that cannot be opened (no GPIO chip, a pin another process holds, a port the service
user may not open, or any error of its driver) is a fault, not a dead daemon: it is reported once as
``disconnected`` with ``reason`` ``open_failed`` and kept as the panel's problem for ``edge status``
while the opener tries again, waiting longer each time up to :data:`PANEL_RETRY_MAX_S`. Ratings wait
for the panel; commands, health and sync go on.

Commands: ``rating.open`` (open a window, with an optional case code from a queue system) and
``officer.assign`` (who serves at the counter now, overriding the roster).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import Field

from drivers.panel import Panel, PanelEvent, Press, open_panel
from drivers.panel.protocol import LedMode
from drivers.profiles import GpioProfile, Profile, SerialProfile, load_profile
from drivers.resources import Resources
from edge.commands.registry import CommandContext, CommandFailed, CommandRegistry
from edge.config import EdgeConfig, PanelConfig, RatingConfig
from edge.exceptions import ConfigError, EdgeError, HardwareError, ResourceBusy
from edge.model import EdgeModel, Slug
from edge.retry import Backoff
from edge.services import RATING_HARDWARE_META
from edge.services.rating_rules import RatingRules, RatingWindow, Verdict, officer_on_shift
from edge.services.speech import PlayerFactory, SpokenThanks, _default_player
from edge.store import Outbox
from edge.supervisor import Loop, thread_loop

log = logging.getLogger(__name__)

#: Waits between attempts to open a panel that could not be opened (absent GPIO chip, busy pin):
#: the first, doubling after each failure, up to the last. A pin freed by a technician's stray
#: script is taken within seconds; a panel that is not wired costs one attempt every half minute.
PANEL_RETRY_MIN_S = 1.0
PANEL_RETRY_MAX_S = 30.0
#: Outbox meta key under which an officer.assign survives a restart.
ASSIGN_META = "rating.officer_assigned"
CASE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,63}$"

#: PanelEvent kinds → the ``kind`` of the ``panel`` event (DESIGN.md §4 names a firmware mismatch "firmware").
_PANEL_KINDS = {
    "connected": "connected",
    "disconnected": "disconnected",
    "stuck": "stuck",
    "released": "released",
    "firmware_mismatch": "firmware",
    "error": "error",
}

Observer = Callable[[str, dict[str, Any]], None]


class OpenArgs(EdgeModel):
    """Arguments of ``rating.open``."""

    case: str | None = Field(
        default=None, pattern=CASE_PATTERN, description="Case code from the queue system, recorded with the rating."
    )


class AssignArgs(EdgeModel):
    """Arguments of ``officer.assign``."""

    officer: Slug | None = Field(description="Officer now serving at this counter; null: back to the roster.")
    hours: float | None = Field(
        default=None, gt=0, le=24, description="The assignment ends after this many hours; null: until replaced."
    )


def panel_profile(panel: PanelConfig, rating: RatingConfig) -> Profile:
    """The panel's profile with the [rating] overrides applied (stuck time)."""
    profile = load_profile(panel.profile)
    stuck = rating.stuck_after_s
    if stuck is None:
        return profile
    if isinstance(profile, GpioProfile):
        return profile.model_copy(update={"stuck_after_s": stuck})
    assert isinstance(profile, SerialProfile)
    cfg = {**profile.mcu_config, "stuck_ms": int(stuck * 1000)}
    return profile.model_copy(update={"mcu_config": cfg})


class RatingService:
    """Takes ratings at one counter. ``start()`` opens the panel; ``stop()`` closes it.

    ``pin_factory`` is passed to a GPIO panel (None: gpiozero's default, e.g. lgpio on a Pi, or the
    ``MockFactory`` the simulator installs); ``player_factory`` opens the speaker.
    """

    def __init__(
        self,
        config: EdgeConfig,
        outbox: Outbox,
        registry: CommandRegistry,
        resources: Resources,
        *,
        pin_factory: Any = None,
        player_factory: PlayerFactory = _default_player,
    ) -> None:
        if config.panel is None:
            raise ConfigError([("panel", "the rating service needs a [panel] section")])
        self._panel_config = config.panel
        self._outbox = outbox
        self._resources = resources
        self._pin_factory = pin_factory
        self._lock = threading.RLock()
        self._feedback_lock = threading.Lock()
        self._apply(config)
        self.rules = RatingRules(config.rating)
        self.profile: Profile = panel_profile(config.panel, config.rating)
        self.panel: Panel | None = None
        self.counts: Counter[str] = Counter()
        self._observers: list[Observer] = []
        self._stop = threading.Event()
        self._opener: threading.Thread | None = None
        self._window_timer: threading.Timer | None = None
        self._leds_inviting = False
        self._panel_problem: str | None = None
        self._assigned: tuple[str, float | None] | None = self._load_assignment()
        self.speech = SpokenThanks(
            config.rating.feedback,
            config.store.state_dir / "tts",
            resources,
            on_problem=self._on_speech_problem,
            on_played=self._on_speech_played,
            player_factory=player_factory,
        )
        registry.register("rating.open", OpenArgs, self._cmd_open, description="Open a rating window (officer mode).")
        registry.register(
            "officer.assign", AssignArgs, self._cmd_assign, description="Set the officer serving at this counter."
        )

    def _apply(self, config: EdgeConfig) -> None:
        self.settings: RatingConfig = config.rating
        self.counter: str = config.rating.counter or config.device.id

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._set_panel_problem(None, force=True)  # a previous daemon's problem says nothing of now
        self.speech.start()
        self._opener = threading.Thread(target=self._open_panel_loop, name="rating-panel-open", daemon=True)
        self._opener.start()

    def stop(self) -> None:
        self._stop.set()
        if self._opener is not None:
            self._opener.join(timeout=10)
        self._cancel_timer()
        panel = self.panel
        if panel is not None:
            panel.close()
        self.speech.stop()

    def reconfigure(self, config: EdgeConfig) -> None:
        """Apply [rating] changes live (windows, misuse rules, roster, counter id, feedback)."""
        with self._lock:
            self._apply(config)
            self.rules.reconfigure(config.rating)
            if self.rules.window(time.monotonic()) is None:
                self._cancel_timer()
        self.speech.reconfigure(config.rating.feedback)
        log.info("rating settings applied: counter %s, mode %s", self.counter, self.settings.mode)

    def loops(self) -> list[Loop]:
        """The opener (its job ends once the panel is open), then the panel's dispatcher, through which
        every press reaches the store, and a serial panel's reader, which owns the port and opens it
        again when it comes back: as long as these run, presses become ratings. Then the speech
        worker, which says every thank-you (none while speech is off)."""
        return [
            thread_loop("rating-panel-open", lambda: self._opener, may_end=True),
            thread_loop("panel-dispatch", lambda: self.panel.dispatcher_thread if self.panel else None),
            # Only a serial panel has a reader of its own (a GPIO panel's edges come on gpiozero's threads).
            thread_loop("panel-serial", lambda: getattr(self.panel, "reader_thread", None)),
            thread_loop("rating-speech", lambda: self.speech.thread),
        ]

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(kind, detail)`` for ratings, windows, feedback and panel events (``edge sim``, a
        camera's evidence recorder). Observers run on the panel's thread after the commit: keep them quick."""
        self._observers.append(observer)

    def status(self) -> dict[str, Any]:
        """What a technician wants to know now."""
        now = time.monotonic()
        with self._lock:
            window = self.rules.window(now)
            officer, source = self._officer()
            return {
                "counter": self.counter,
                "mode": self.settings.mode,
                "panel": {
                    "profile": self.profile.model,
                    "kind": self.profile.kind,
                    "connected": bool(self.panel and self.panel.connected),
                    "problem": self._panel_problem,
                },
                "window": None
                if window is None
                else {"id": window.id, "case": window.case, "remaining_s": round(window.remaining(now), 1)},
                "cooldown_left_s": round(self.rules.cooldown_left(now), 1),
                "officer": officer,
                "officer_from": source,
                "counts": dict(self.counts),
                "speech": {"problem": self.speech.problem, **vars(self.speech.stats)},
            }

    def _open_panel_loop(self) -> None:
        backoff = Backoff(PANEL_RETRY_MIN_S, PANEL_RETRY_MAX_S)
        while not self._stop.is_set():
            problem = self._try_open_panel()
            if problem is None:
                return
            if problem != self._panel_problem:
                log.error("cannot open the rating panel (%s): %s", self.profile.model, problem)
                self._set_panel_problem(problem)
                self._record_panel("disconnected", {"reason": "open_failed", "error": problem})
            self._stop.wait(backoff.next())

    def _try_open_panel(self) -> str | None:
        """Open and start the panel; None once it runs, else why not (in a sentence)."""
        try:
            panel = open_panel(
                self.profile,
                port=self._panel_config.port,
                pin_factory=self._pin_factory,
                resources=self._resources,
                holder="panel",
            )
        except (HardwareError, ResourceBusy, ConfigError) as exc:
            return str(exc)
        except Exception as exc:
            # Whatever the driver's layers let through (lgpio.error "GPIO busy" is neither an OSError
            # nor gpiozero's; a PermissionError on /dev/ttyUSB0) is still a panel that did not open:
            # the fault is the panel's, and the rest of the daemon must go on without it.
            problem = f"cannot open the panel ({self.profile.model}): {type(exc).__name__}: {exc}"
            if problem != self._panel_problem:  # the driver's own words, once, for whoever reads the journal
                log.warning("the panel driver raised %s", type(exc).__name__, exc_info=True)
            return problem
        self.panel = panel  # before start(): its first event may be a press
        try:
            panel.start(self._on_press, self._on_panel_event)
        except Exception as exc:
            log.warning("the panel driver raised %s as it started", type(exc).__name__, exc_info=True)
            self.panel = None
            with contextlib.suppress(Exception):
                panel.close()
            return f"cannot start the panel ({self.profile.model}): {type(exc).__name__}: {exc}"
        if self._panel_problem is not None:
            log.info("rating panel %s open (was: %s)", self.profile.model, self._panel_problem)
        self._set_panel_problem(None)
        return None

    def _set_panel_problem(self, problem: str | None, *, force: bool = False) -> None:
        """Keep the panel's problem, and write it where ``edge status`` reads it."""
        if problem == self._panel_problem and not force:
            return
        self._panel_problem = problem
        with contextlib.suppress(EdgeError):  # the store's own trouble is reported by the store
            self._outbox.set_meta(RATING_HARDWARE_META, json.dumps({"panel": problem} if problem else {}))

    # -- presses -----------------------------------------------------------------------------------

    def _on_press(self, press: Press) -> None:
        panel = self.panel
        assert panel is not None
        button = self.profile.button(press.button)
        now = press.received_at  # when the citizen pressed, not when we got round to it
        with self._lock:
            verdict = self.rules.classify(now)
            officer, source = self._officer()
            data = {
                "counter": self.counter,
                "officer": officer,
                "officer_from": source,
                "score": button.score,
                "label": button.label,
                "text": button.text,
                "button": press.button,
                "window": verdict.window,
                "window_id": verdict.window_id,
                "case": verdict.case,
                "misuse": verdict.misuse,
                "panel": self.profile.model,
            }
        key = f"rating:{self.profile.model}:{press.key}" if press.key is not None else None
        committed = self._outbox.append("rating", data, dedupe_key=key)  # raises: no ACK, no thanks
        if not committed.duplicate:
            with self._lock:
                self.rules.record(now, verdict)
                if verdict.window_id is not None:
                    self._cancel_timer()
                self.counts["ratings"] += 1
                if verdict.misuse:
                    self.counts[verdict.misuse] += 1
        panel.acknowledge(press)
        # pressed_mono (time.monotonic() of the press): a camera's evidence clip is centred on the press,
        # not on the commit, which a busy disk can hold up.
        note = {"seq": committed.seq, "id": committed.id, "duplicate": committed.duplicate, "pressed_mono": now}
        self._notify("rating", {**note, **data})
        if committed.duplicate:
            return  # thanked when it was first committed
        self._thank(panel, press.button, verdict)

    def _thank(self, panel: Panel, button: int, verdict: Verdict) -> None:
        fb = self.settings.feedback
        leds: list[tuple[int | str, LedMode]] = []
        if self._leds_inviting:
            self._leds_inviting = False
            leds.append(("all", "off"))
        if fb.led:
            leds.append((button, "thanks"))
        self._feedback(panel, leds, beep_ms=fb.beep_ms)
        # Flagged presses get the light and the beep (the button works) but not the voice: a child
        # drumming on the panel should not make the counter speaker talk over the officer.
        spoken = verdict.misuse is None and self.speech.say()
        self._notify("thanks", {"button": button, "led": fb.led, "beep_ms": fb.beep_ms, "speech": spoken})

    def _feedback(self, panel: Panel, leds: list[tuple[int | str, LedMode]], beep_ms: int = 0) -> None:
        """Drive LEDs and the buzzer, one caller at a time: presses (the panel's thread), commands and
        window timers all light LEDs, and a gpiozero device must not be driven from two threads at
        once. Best effort: the rating is already safe, so a failure here is logged, never raised."""
        with self._feedback_lock:
            try:
                for target, mode in leds:
                    panel.set_led(target, mode)  # type: ignore[arg-type]
                if beep_ms:
                    panel.beep(beep_ms)
            except Exception:
                log.exception("panel feedback failed")

    # -- windows -----------------------------------------------------------------------------------

    def open_window(self, *, opened_by: str, case: str | None = None) -> RatingWindow:
        """Open a rating window now (officer mode) and invite a rating with the LEDs."""
        with self._lock:
            if self.settings.mode != "officer":
                raise CommandFailed("wrong_mode", f"counter {self.counter} takes ratings in always mode")
            window = self.rules.open_window(time.monotonic(), opened_by=opened_by, case=case)  # type: ignore[arg-type]
            self._cancel_timer()
            self._window_timer = threading.Timer(self.settings.window_s, self._on_window_timeout, (window.id,))
            self._window_timer.daemon = True
            self._window_timer.start()
            panel = self.panel
        if panel is not None:
            self._leds_inviting = True
            self._feedback(panel, [("all", "on")])
        log.info("rating window %s opened by %s (case %s)", window.id, opened_by, case)
        self._notify("window", {"state": "opened", "id": window.id, "by": opened_by, "case": case})
        return window

    def _on_window_timeout(self, window_id: str) -> None:
        with self._lock:
            closed = self.rules.close_window(window_id)
            panel = self.panel
        if not closed:
            return
        self.counts["windows_expired"] += 1
        if panel is not None and self._leds_inviting:
            self._leds_inviting = False
            self._feedback(panel, [("all", "off")])
        log.info("rating window %s closed without a rating", window_id)
        self._notify("window", {"state": "expired", "id": window_id})

    def _cancel_timer(self) -> None:
        if self._window_timer is not None:
            self._window_timer.cancel()
            self._window_timer = None

    # -- officers ----------------------------------------------------------------------------------

    def _officer(self) -> tuple[str | None, str | None]:
        if self._assigned is not None:
            officer, until = self._assigned
            if until is None or time.time() < until:
                return officer, "assigned"
            self._assigned = None
        on_shift = officer_on_shift(self.settings.roster, datetime.now().astimezone())
        return on_shift, "roster" if on_shift else None

    def _load_assignment(self) -> tuple[str, float | None] | None:
        raw = self._outbox.get_meta(ASSIGN_META)
        if not raw:
            return None
        try:
            saved = json.loads(raw)
            return (str(saved["officer"]), saved.get("until")) if saved.get("officer") else None
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable officer assignment: %r", raw)
            return None

    # -- commands ----------------------------------------------------------------------------------

    def _cmd_open(self, args: OpenArgs, ctx: CommandContext | None) -> dict[str, Any]:
        window = self.open_window(opened_by="command", case=args.case)
        return {
            "counter": self.counter,
            "window_id": window.id,
            "case": window.case,
            "window_s": self.settings.window_s,
            "panel_connected": bool(self.panel and self.panel.connected),
        }

    def _cmd_assign(self, args: AssignArgs, ctx: CommandContext | None) -> dict[str, Any]:
        until = time.time() + args.hours * 3600 if args.officer and args.hours else None
        # Durable before acknowledged: the assignment survives a restart of the daemon.
        self._outbox.set_meta(ASSIGN_META, json.dumps({"officer": args.officer, "until": until}))
        with self._lock:
            self._assigned = (args.officer, until) if args.officer else None
            officer, source = self._officer()
        log.info("officer at counter %s: %s (%s)", self.counter, officer, source)
        return {"counter": self.counter, "officer": officer, "officer_from": source, "until": until}

    # -- panel events ------------------------------------------------------------------------------

    def _on_panel_event(self, event: PanelEvent) -> None:
        if event.kind == "done":
            if self.settings.mode == "officer":
                self.open_window(opened_by="done")
            else:
                log.info("done button ignored: counter %s is in always mode", self.counter)
            return
        kind = _PANEL_KINDS.get(event.kind)
        if kind is None:
            return
        self._record_panel(kind, dict(event.detail))
        if kind == "connected" and self._leds_inviting and self.panel is not None:
            self._feedback(self.panel, [("all", "on")])  # a replugged MCU lost its LED state

    def _on_speech_problem(self, detail: dict[str, Any]) -> None:
        self._record_panel("speaker", detail)

    def _on_speech_played(self, text: str, seconds: float) -> None:
        self._notify("speech", {"text": text, "seconds": round(seconds, 3)})

    def _record_panel(self, kind: str, detail: dict[str, Any]) -> None:
        data = {"kind": kind, "counter": self.counter, "profile": self.profile.model, **detail}
        self.counts[f"panel_{kind}"] += 1
        try:
            self._outbox.append("panel", data)
        except EdgeError:
            log.exception("could not record panel event %s", kind)
        self._notify("panel", data)

    def _notify(self, kind: str, detail: dict[str, Any]) -> None:
        for observer in self._observers:
            try:
                observer(kind, detail)
            except Exception:
                log.exception("rating observer failed on %s", kind)
