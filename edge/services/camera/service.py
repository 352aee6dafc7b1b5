"""The camera service: each ``[[camera]]`` watched, its presence and tamper changes committed as events.

For every camera::

    reader thread (drivers.camera.Camera)      decodes every frame, keeps the newest; feeds the
                                               evidence ring buffer (EvidenceRecorder.on_frame)
    analysis thread (CameraWatch)              at analytics_fps: the newest frame, if new, goes to the
                                               SceneAnalyzer; a tick without one counts towards "lost"
      change ──► outbox.append("presence" | "tamper", ...)    durable first (tamper is critical)
      tamper start ──► EvidenceRecorder.trigger("tamper")      a blurred clip around the moment

Events (DESIGN.md §9): ``presence`` ``{camera, counter, state, since, occupancy}`` and ``tamper``
``{camera, counter, kind, state, incident, ...}``; a ``start`` carries what was measured (and, for
``lost``, why the camera is not streaming) and the ``clip_id`` of its evidence when one is taken. Each
has a dedupe key, and an event the store cannot take right now is kept in order and committed at the
next tick: a change is never dropped.

Commands: ``camera.calibrate {"camera"}`` (take the empty-seat reference now; it is stored 0600 in
``state_dir/camera/`` and survives restarts) and, through the evidence recorders, ``snapshot.take``.
A low rating reaches the recorders through :meth:`CameraService.on_rating` (a rating service observer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from drivers.camera import Camera, CameraProfile, load_camera_profile, open_camera
from drivers.resources import Resources
from edge.commands.registry import CommandContext, CommandFailed, CommandRegistry
from edge.config import EdgeConfig
from edge.config.camera import CameraConfig, camera_counter
from edge.exceptions import EdgeError
from edge.model import EdgeModel, Slug
from edge.services.camera.analytics import (
    REFERENCE_EVERY,
    REFERENCE_FRAMES,
    AnalyticsSettings,
    Change,
    PresenceChange,
    Reference,
    SceneAnalyzer,
    TamperChange,
)
from edge.store import Outbox
from edge.supervisor import Loop, thread_loop

log = logging.getLogger(__name__)

Observer = Callable[[str, dict[str, Any]], None]

#: Events the store refused (it is full, or failing) wait here, in order, for the next tick.
MAX_PENDING_EVENTS = 1000
#: ``camera.calibrate`` waits this long beyond the frames it needs.
CALIBRATE_SLACK_S = 15.0


class CalibrateArgs(EdgeModel):
    """Arguments of ``camera.calibrate``."""

    camera: Slug = Field(description="The camera whose empty-seat reference to take now (its [[camera]] name).")


def iso(ts: float) -> str:
    """A Unix time as ISO 8601 in the device's zone, with milliseconds (as event times are)."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


class CameraWatch:
    """One camera, its analyser and its analysis thread."""

    def __init__(
        self,
        settings: CameraConfig,
        counter: str,
        outbox: Outbox,
        resources: Resources,
        reference_dir: Path,
        *,
        recorder: Any = None,
        notify: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.counter = counter
        self.outbox = outbox
        self.recorder = recorder
        self._notify = notify or (lambda kind, detail: None)
        self.profile: CameraProfile = load_camera_profile(settings.profile)
        self.reference_path = reference_dir / f"{settings.name}.reference.npz"
        reference = Reference.load(self.reference_path)
        if reference is None:
            log.warning(
                "camera %s has no empty-seat reference: it is learned from the first seconds of video, which "
                "assumes the seat is empty then; run camera.calibrate with the seat empty",
                self.name,
            )
        self.analyzer = SceneAnalyzer(
            self.profile,
            AnalyticsSettings(settings.presence_on_s, settings.presence_hold_off_s, settings.tamper_frames),
            reference,
        )
        self.camera: Camera = open_camera(settings, resources=resources)
        self.errors = 0
        self._pending: deque[tuple[str, dict[str, Any], str]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_seq = 0
        self._started = 0.0
        self._calibrate = threading.Event()
        self._calibrated = threading.Condition()
        self._calibrations = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self.recorder is not None:
            self.camera.subscribe(self.recorder.on_frame)
        self.camera.start()
        self._stop.clear()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=f"camera-analysis-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.camera.close()
        self._flush()

    def loops(self) -> list[Loop]:
        """The analysis thread and the camera's reader (which reopens a lost stream itself)."""
        return [
            thread_loop(f"camera-analysis-{self.name}", lambda: self._thread),
            thread_loop(f"camera-{self.name}", lambda: self.camera.reader_thread),
        ]

    # -- analysis ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        period = 1.0 / self.settings.analytics_fps
        due = time.monotonic()
        while not self._stop.is_set():
            due += period
            now = time.monotonic()
            if due < now - period:
                due = now + period  # fell behind (a loaded machine): skip ticks rather than rush
            if self._stop.wait(max(0.0, due - now)):
                break
            try:
                self._tick()
            except Exception:
                # One bad frame or a store hiccup must not end the camera's analysis.
                self.errors += 1
                log.exception("camera %s: analysis failed", self.name)

    def _tick(self) -> None:
        if self._calibrate.is_set():
            self._calibrate.clear()
            self.analyzer.calibrate()
        frame = self.camera.latest()
        if frame is None or frame.seq == self._last_seq:
            changes = self._missed()
        else:
            self._last_seq = frame.seq
            changes = self.analyzer.feed(frame)
        reference = self.analyzer.new_reference
        if reference is not None:
            self.analyzer.new_reference = None
            self._store_reference(reference)
        self._flush()
        for change in changes:
            self._record(change)

    def _missed(self) -> list[Change]:
        stats = self.camera.stats
        # A stream takes a moment to open: before the first frame, only a camera that failed to open
        # (or took longer than its timeout) counts as lost.
        grace = stats.error is None and stats.frames == 0 and time.monotonic() - self._started < self.settings.timeout_s
        return [] if grace else self.analyzer.missed(time.time())

    def _store_reference(self, reference: Reference) -> None:
        try:
            self.reference_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            reference.save(self.reference_path)
        except OSError as exc:
            log.error("camera %s: cannot store the reference in %s: %s", self.name, self.reference_path, exc)
        log.info("camera %s: %s empty-seat reference taken", self.name, reference.how)
        self._notify("reference", {"camera": self.name, "how": reference.how, "taken": iso(reference.taken)})
        if reference.how == "calibrated":
            with self._calibrated:
                self._calibrations += 1
                self._calibrated.notify_all()

    def calibrate(self, timeout: float | None = None) -> Reference:
        """Take the empty-seat reference from the next frames; returns it once stored. Raises
        :exc:`CommandFailed` when the camera gives no usable frames in time."""
        needed = REFERENCE_FRAMES * REFERENCE_EVERY / self.settings.analytics_fps
        timeout = needed + CALIBRATE_SLACK_S if timeout is None else timeout
        with self._calibrated:
            before = self._calibrations
        self._calibrate.set()
        with self._calibrated:
            done = self._calibrated.wait_for(lambda: self._calibrations > before, timeout)
        if not done or self.analyzer.reference is None:
            stats = self.camera.stats
            why = stats.error or f"no usable frames (camera {stats.state}; a covered or frozen picture is not taken)"
            raise CommandFailed("calibration_failed", f"camera {self.name}: {why}", {"camera": self.name})
        return self.analyzer.reference

    # -- events ------------------------------------------------------------------------------------

    def _record(self, change: Change) -> None:
        if isinstance(change, PresenceChange):
            data: dict[str, Any] = {
                "camera": self.name,
                "counter": self.counter,
                "state": change.state,
                "since": iso(change.since),
                "occupancy": change.occupancy,
            }
            self._append("presence", data, f"presence:{self.name}:{change.state}:{change.since:.3f}")
            log.info("camera %s: officer %s since %s", self.name, change.state, data["since"])
            return
        assert isinstance(change, TamperChange)
        data = {
            "camera": self.name,
            "counter": self.counter,
            "kind": change.kind,
            "state": change.state,
            "incident": change.incident,
        }
        if change.state == "start":
            data.update(change.detail)
            if change.kind == "lost":
                data["error"] = self.camera.stats.error or "no frames"
            clip_id = self._evidence()
            if clip_id is not None:
                data["clip_id"] = clip_id
        self._append("tamper", data, f"tamper:{self.name}:{change.incident}:{change.state}")
        log.warning("camera %s: tamper %s %s (incident %s)", self.name, change.kind, change.state, change.incident)

    def _evidence(self) -> str | None:
        """A clip around a tamper start, if the recorder can take one (it says why not, and counts it)."""
        if self.recorder is None:
            return None
        try:
            return str(self.recorder.trigger("tamper"))
        except EdgeError as exc:
            log.info("camera %s: no evidence for the tamper start: %s", self.name, exc)
            return None

    def _append(self, event_type: str, data: dict[str, Any], key: str) -> None:
        if len(self._pending) >= MAX_PENDING_EVENTS:
            dropped = self._pending.popleft()
            log.error("camera %s: the store refuses events; the oldest waiting %s is dropped", self.name, dropped[0])
        self._pending.append((event_type, data, key))
        self._flush()

    def _flush(self) -> None:
        while self._pending:
            event_type, data, key = self._pending[0]
            try:
                committed = self.outbox.append(event_type, data, dedupe_key=key)
            except EdgeError as exc:
                log.error("camera %s: %s event not committed yet (%s); trying again", self.name, event_type, exc)
                return
            self._pending.popleft()
            self._notify(event_type, {"seq": committed.seq, "id": committed.id, **data})

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        stats = self.camera.stats
        ref = self.analyzer.reference
        return {
            "camera": self.name,
            "counter": self.counter,
            "source": self.camera.backend.description,
            "profile": self.profile.model,
            "state": stats.state,
            "error": stats.error,
            "frames": stats.frames,
            "drops": stats.drops,
            "reconnects": stats.reconnects,
            "fps": stats.fps,
            "size": None if stats.width is None else f"{stats.width}x{stats.height}",
            "analysed": self.analyzer.frames,
            "presence": self.analyzer.presence,
            "occupancy": self.analyzer.occupancy,
            "tamper": self.analyzer.tamper_active(),
            "reference": None if ref is None else {"how": ref.how, "taken": iso(ref.taken)},
            "errors": self.errors,
            "pending_events": len(self._pending),
        }


class CameraService:
    """Watches every ``[[camera]]`` of a counter. ``start()`` opens the cameras; ``stop()`` closes them.

    ``evidence=False`` builds no evidence recorders (the analytics alone: benchmarks, ``edge test``).
    """

    def __init__(
        self,
        config: EdgeConfig,
        outbox: Outbox,
        registry: CommandRegistry,
        resources: Resources,
        *,
        evidence: bool = True,
    ) -> None:
        self._observers: list[Observer] = []
        self.recorders: dict[str, Any] = {}
        self.watches: dict[str, CameraWatch] = {}
        state_dir = config.store.state_dir
        for cam in config.camera:
            counter = camera_counter(cam, config)
            recorder = None
            if evidence:
                from edge.services.camera.blur import PrivacyMask
                from edge.services.camera.evidence import EvidenceRecorder

                profile = load_camera_profile(cam.profile)
                recorder = EvidenceRecorder(
                    cam.name,
                    counter,
                    cam.evidence,
                    state_dir / "media",
                    outbox,
                    None,
                    PrivacyMask.from_profile(profile),
                )
                self.recorders[cam.name] = recorder
            self.watches[cam.name] = CameraWatch(
                cam, counter, outbox, resources, state_dir / "camera", recorder=recorder, notify=self._notify_all
            )
        registry.register(
            "camera.calibrate",
            CalibrateArgs,
            self._cmd_calibrate,
            description="Take a camera's empty-seat reference now (the seat must be empty).",
        )
        if evidence:
            from edge.services.camera.evidence import register_snapshot_command

            register_snapshot_command(registry, self.recorders)

    def start(self) -> None:
        for recorder in self.recorders.values():
            recorder.start()
        for watch in self.watches.values():
            watch.start()

    def stop(self) -> None:
        for watch in reversed(list(self.watches.values())):
            watch.stop()
        for recorder in self.recorders.values():
            recorder.close()

    def loops(self) -> list[Loop]:
        """Each camera's analysis thread and reader, and its evidence recorder's pruner."""
        loops = [loop for watch in self.watches.values() for loop in watch.loops()]
        return loops + [loop for recorder in self.recorders.values() for loop in recorder.loops()]

    def reconfigure(self, config: EdgeConfig) -> None:
        """[[camera]] changes restart the daemon; only the counter a camera falls back to
        (``rating.counter``) can change live."""
        for cam in config.camera:
            watch = self.watches.get(cam.name)
            if watch is not None:
                watch.counter = camera_counter(cam, config)

    def on_rating(self, kind: str, detail: Mapping[str, Any]) -> None:
        """A rating service observer: a committed low rating records evidence on its counter's cameras."""
        for recorder in self.recorders.values():
            recorder.on_rating(kind, detail)

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(kind, detail)`` for every event committed and reference taken (``edge sim``)."""
        self._observers.append(observer)

    def status(self) -> dict[str, Any]:
        out = {}
        for name, watch in self.watches.items():
            out[name] = watch.status()
            recorder = self.recorders.get(name)
            if recorder is not None:
                out[name]["evidence"] = recorder.status()
        return out

    def _cmd_calibrate(self, args: CalibrateArgs, ctx: CommandContext | None) -> dict[str, Any]:
        watch = self.watches.get(args.camera)
        if watch is None:
            have = ", ".join(sorted(self.watches)) or "none"
            raise CommandFailed("unknown_camera", f"this device has no camera {args.camera!r} (it has: {have})")
        reference = watch.calibrate()
        return {
            "camera": args.camera,
            "taken": iso(reference.taken),
            "frames": REFERENCE_FRAMES,
            "presence": watch.analyzer.presence,
        }

    def _notify_all(self, kind: str, detail: dict[str, Any]) -> None:
        for observer in self._observers:
            try:
                observer(kind, detail)
            except Exception:
                log.exception("camera observer failed on %s", kind)
