"""A simulated counter device: the real daemon and rating service on a simulated panel (``edge sim``).

The panel is chosen by the configuration's profile, like on a real counter, and only the hardware is
simulated: a GPIO profile runs the real :class:`~drivers.panel.gpio.GpioPanel` on gpiozero's
``MockFactory`` (installed as gpiozero's default pin factory, so the daemon opens it exactly as it
opens lgpio on a Pi); a serial profile runs the real :class:`~drivers.panel.serial.SerialPanel`
against :class:`~sim.serial_mcu.SerialMcu` on a pseudo-terminal (through a symlink that moves on
replug, as ``/dev/serial/by-id`` does). The speaker is the real sounddevice → PortAudio → ALSA path
into ALSA's ``file`` plugin, so what was said is a WAV file that can be measured.

Cameras: every ``[[camera]]`` of the configuration (and one more with ``camera=True``, ``edge sim
--camera``) watches a simulated counter scene drawn with the camera's own profile
(:class:`~sim.counter_camera.SimCamera`), served on loopback over HTTP by ffmpeg or, with ``scene="rtsp"``
(``edge sim --scene rtsp``), over RTSP by GStreamer, as IP cameras serve it; its ``source`` is set to
that stream. The real camera service reads it, and a low rating pressed on the simulated panel
records a blurred clip linked to it, as on a real counter.

A person or a test drives it with one vocabulary of JSON requests, from a scenario file or over a
Unix socket (one JSON object per line, one JSON reply per line)::

    {"cmd": "press", "button": 1}            {"cmd": "hold", "button": 2}   {"cmd": "release", "button": 2}
    {"cmd": "done"}                          {"cmd": "open", "case": "HS-0012"}
    {"cmd": "assign", "officer": "nv-07"}    {"cmd": "unplug"}   {"cmd": "replug"}
    {"cmd": "wait", "s": 1.5}                {"cmd": "status"}   {"cmd": "outputs"}   {"cmd": "ratings"}
    {"cmd": "stop"}

and, in front of a camera (``camera``: its name, default the first)::

    {"cmd": "seat"}   {"cmd": "leave"}   {"cmd": "still"}   {"cmd": "work"}
    {"cmd": "cover", "level": 8}   {"cmd": "uncover"}        {"cmd": "blur", "sigma": 6}   {"cmd": "unblur"}
    {"cmd": "shift", "dx": 48, "dy": 0}   {"cmd": "unshift"}  {"cmd": "freeze"}   {"cmd": "unfreeze"}
    {"cmd": "light", "factor": 0.6, "ramp_s": 5}             {"cmd": "stop_stream"}   {"cmd": "start_stream"}
    {"cmd": "calibrate"}              {"cmd": "evidence"}   (the clips and snapshots written, where they are)

What the panel, speaker and cameras did is printed as it happens (LEDs, buzzer, speaker, ratings,
windows, panel events; scene actions, presence, tamper and evidence events as committed), as text or
JSON lines.
"""

from __future__ import annotations

import json
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from drivers.profiles import GpioProfile, SerialProfile
from edge.config import EdgeConfig, parse_config
from edge.exceptions import CommandRejected
from sim.broker import free_port
from sim.control import Printer, SimControl, SimError
from sim.counter_camera import FORMAT_NAMES, SCENE_ACTIONS, STREAM_FORMATS, SimCamera, stream_url
from sim.gpio_panel import SimGpioPanel
from sim.serial_mcu import SerialMcu

#: The default panel when the configuration has no [panel] section.
DEFAULT_PROFILE = "gpio-4btn-rpi"
#: The camera ``edge sim --camera`` adds, and its profile.
SIM_CAMERA = "sim-cam"
SIM_CAMERA_PROFILE = "sim-counter-640x480"
#: How long start() waits for each camera's first picture and empty-seat reference.
CAMERA_READY_S = 60.0


def speaker_alsa_config(path: Path, wav: Path) -> Path:
    """Write an ALSA config whose default PCM records everything played into ``wav`` (DESIGN.md §7)."""
    path.write_text(
        f'</usr/share/alsa/alsa.conf>\npcm.!default {{ type file slave.pcm "null" file "{wav}" format "wav" }}\n',
        encoding="utf-8",
    )
    return path


def wav_seconds(path: Path) -> float | None:
    """Duration of a WAV file, None if there is none (yet)."""
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() / w.getframerate()
    except (OSError, wave.Error, EOFError):
        return None


def load_scenario(path: Path) -> list[dict[str, Any]]:
    """A scenario file: a YAML (or JSON) list of requests, or ``{steps: [...]}``."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("steps")
    if not isinstance(data, list) or not all(isinstance(s, dict) and "cmd" in s for s in data):
        raise SimError(f"{path}: a scenario is a list of requests such as {{cmd: press, button: 1}}")
    return data


def watched_mock_factory(on_output: Callable[[int, bool], None]) -> Any:
    """A gpiozero ``MockFactory`` whose output pins report every change to ``on_output(bcm, state)``."""
    from gpiozero.pins.mock import MockFactory, MockPin

    class WatchedPin(MockPin):  # type: ignore[misc]
        def _change_state(self, value: bool) -> bool:
            changed = bool(super()._change_state(value))
            if changed and self._function == "output":
                on_output(int(self.info.name.removeprefix("GPIO")), bool(value))
            return changed

    return MockFactory(pin_class=WatchedPin)


class SimCounter(SimControl):
    """The daemon of a counter device with a simulated panel, speaker and cameras. ``start()``, then ``stop()``."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        work_dir: Path,
        printer: Printer,
        profile: str | None = None,
        camera: bool = False,
        scene: str = "mjpeg",
    ) -> None:
        panel = {"profile": profile or (config.panel.profile if config.panel else DEFAULT_PROFILE)}
        data = config.model_dump(mode="json")
        data["panel"] = panel
        if "counter" not in data["device"]["roles"]:
            data["device"]["roles"].append("counter")
        if scene not in STREAM_FORMATS:
            raise SimError(f"the scene is served as one of {', '.join(STREAM_FORMATS)}, not {scene!r}")
        cameras = data.get("camera") or []
        if camera:
            if any(c["name"] == SIM_CAMERA for c in cameras):
                raise SimError(f"the configuration already has a camera named {SIM_CAMERA}")
            cameras.append({"name": SIM_CAMERA, "source": "0", "profile": SIM_CAMERA_PROFILE})
        ports: dict[str, int] = {}
        for cam in cameras:
            ports[cam["name"]] = free_port()
            # The camera reads the scene's stream, as it reads an IP camera's.
            cam["source"] = stream_url(ports[cam["name"]], scene)
        data["camera"] = cameras
        self.config = parse_config(data, "edge sim")
        #: The simulated scene in front of each camera, by camera name.
        self.cameras: dict[str, SimCamera] = {
            cam.name: SimCamera(cam.profile, work_dir=work_dir, fmt=scene, port=ports[cam.name], name=cam.name)
            for cam in self.config.camera
        }
        self.work_dir = work_dir
        self.speaker_wav = work_dir / "speaker.wav"
        super().__init__(printer)
        self._ratings = threading.Condition()
        self._ratings_seen = 0
        self._rating_seqs: dict[str, int] = {}  # rating id -> seq, so an evidence line names the rating's seq
        self.gpio: SimGpioPanel | None = None
        self.mcu: SerialMcu | None = None
        self.daemon: Any = None
        self.service: Any = None
        self.camera_service: Any = None
        self._evidence_seen = 0
        self._references: set[str] = set()  # cameras that took an empty-seat reference in this run
        self._watch: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> SimCounter:
        """Start the simulated hardware and the daemon; returns once the panel is up and every camera
        has its empty-seat reference. What did start is stopped again if anything fails."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> SimCounter:
        from drivers.panel.base import Panel  # noqa: F401 - the panel drivers load before the daemon
        from edge.daemon import Daemon
        from edge.services.rating import RatingService, panel_profile

        assert self.config.panel is not None
        self.work_dir.mkdir(parents=True, exist_ok=True)
        profile = panel_profile(self.config.panel, self.config.rating)
        if isinstance(profile, GpioProfile):
            from gpiozero import Device

            factory = watched_mock_factory(self._on_gpio_output)
            Device.pin_factory = factory  # gpiozero's own mechanism: the daemon opens the panel as on a Pi
            self.gpio = SimGpioPanel(profile, factory)
        else:
            assert isinstance(profile, SerialProfile)
            self.mcu = SerialMcu(
                buttons=profile.button_count,
                model=profile.model,
                hb_ms=profile.heartbeat_ms,
                repeat_ms=int(profile.mcu_config.get("repeat_ms", 500)),
                link=self.work_dir / "panel-tty",
            ).start()
            assert self.config.panel is not None
            port = self.config.panel.model_copy(update={"port": self.mcu.path})
            self.config = self.config.model_copy(update={"panel": port})
        for name, sim_camera in self.cameras.items():
            # Before the daemon: the camera finds its stream at once, as a powered IP camera's.
            try:
                sim_camera.start()
            except RuntimeError as exc:  # no ffmpeg (or RTSP server), or it would not listen
                raise SimError(f"camera {name}: the simulated scene cannot be served: {exc}") from None
            how = FORMAT_NAMES[sim_camera.fmt]
            self._emit("camera", {"camera": name, "url": sim_camera.url, "format": how, "fps": sim_camera.fps})
        self.daemon = Daemon(self.config)
        stored: set[str] = set()
        services = [s for s in self.daemon.services if isinstance(s, RatingService)]
        self.service = services[0]
        self.service.add_observer(self._on_service)
        if self.cameras:
            from edge.services.camera.service import CameraService

            self.camera_service = next(s for s in self.daemon.services if isinstance(s, CameraService))
            self.camera_service.add_observer(self._on_camera)
            stored = {name for name, w in self.camera_service.watches.items() if w.analyzer.reference is not None}
            self._evidence_seen = self.daemon.outbox.last_seq()
            self.daemon.outbox.add_listener(self._on_commit)
        self.daemon.start()
        if not _wait_until(lambda: self.service.panel is not None and self.service.panel.connected, 15.0):
            self._emit("error", {"error": "the simulated panel did not come up", **self.service.status()["panel"]})
        if self.mcu is not None:
            self._watch = threading.Thread(target=self._watch_mcu, name="sim-watch", daemon=True)
            self._watch.start()
        kind = "GPIO on gpiozero MockFactory" if self.gpio else f"serial MCU on {self.mcu.path if self.mcu else ''}"
        self._emit("sim", {"text": f"counter {self.service.counter} with panel {profile.model} ({kind})"})
        self._wait_cameras(stored)
        return self

    def _wait_cameras(self, stored: set[str]) -> None:
        """Wait until every camera streams and has its empty-seat reference (``stored``: the cameras
        that had one from an earlier run): an officer seated before the reference is taken would be
        learned as part of the empty seat."""
        if self.camera_service is None:
            return
        watches = self.camera_service.watches

        def ready(name: str) -> bool:
            with self._lock:
                referenced = name in stored or name in self._references
            return referenced and watches[name].camera.stats.frames > 0

        if not _wait_until(lambda: all(ready(name) for name in watches), CAMERA_READY_S):
            for name, watch in watches.items():
                if not ready(name):
                    stats = watch.camera.stats
                    why = stats.error or f"camera {stats.state}, {stats.frames} frames"
                    self._emit("error", {"error": f"camera {name} is not ready: no empty-seat reference yet ({why})"})
            return
        for name in watches:
            how = "stored by an earlier run" if name in stored else "learned from the first seconds"
            self._emit("sim", {"text": f"camera {name} ready: the empty seat is its reference, {how}"})

    def _shut_down(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        # After the daemon: a scene gone first would be reported as a lost camera.
        for sim_camera in self.cameras.values():
            sim_camera.close()
        if self.mcu is not None:
            self.mcu.close()
        if self._watch is not None:
            self._watch.join(timeout=2)

    # -- requests ----------------------------------------------------------------------------------

    def _handle(self, req: dict[str, Any]) -> dict[str, Any] | None:
        cmd = req.pop("cmd", None)
        if cmd == "press":
            button = int(req["button"])
            for i in range(int(req.get("times", 1))):
                if i:
                    time.sleep(float(req.get("gap_s", 0.05)))
                self._press(button)
            return None
        if cmd in ("hold", "release"):
            button = int(req["button"])
            self._check_button(button)
            if self.gpio is not None:
                (self.gpio.hold if cmd == "hold" else self.gpio.release)(button)
            else:
                raise SimError("the serial MCU debounces and reports a held button itself (ERR STUCK)")
            self._emit("press", {"button": button, "action": cmd})
            return None
        if cmd == "done":
            if self.gpio is None or self.gpio.profile.done_button is None:
                raise SimError("this panel has no officer done button; use {cmd: open}")
            self._emit("press", {"button": "done"})
            self.gpio.press_done()
            return None
        if cmd == "open":
            return self._command("rating.open", {k: v for k, v in req.items() if k == "case"})
        if cmd == "assign":
            return self._command("officer.assign", {"officer": req.get("officer"), "hours": req.get("hours")})
        if cmd in ("unplug", "replug"):
            if self.mcu is None:
                raise SimError("a GPIO panel cannot be unplugged; use a serial profile")
            if cmd == "unplug":
                self.mcu.unplug()
                self._emit("cable", {"state": "unplugged"})
                return None
            path = self.mcu.replug()
            self._emit("cable", {"state": "replugged", "pty": path})
            return {"pty": path}
        if cmd == "wait":
            self._stopped.wait(float(req.get("s", 1.0)))
            return None
        if cmd == "status":
            return self.status()
        if cmd == "outputs":
            return self._outputs_reply(req)
        if cmd == "ratings":
            events = self.daemon.outbox.list_events(type="rating", limit=int(req.get("limit", 100)))
            return {"ratings": [{"seq": e.seq, "id": e.id, **e.data} for e in events]}
        if cmd == "stop":
            self._stop_soon()
            return None
        if cmd in SCENE_ACTIONS:
            name, sim_camera = self._camera(req.pop("camera", None))
            try:
                t = sim_camera.act(cmd, req)
            except ValueError as exc:
                raise SimError(str(exc)) from None
            self._emit("scene", {"camera": name, "action": cmd, **req, "t": round(t, 2)})
            return {"camera": name, "t": round(t, 2)}
        if cmd in ("stop_stream", "start_stream"):
            name, sim_camera = self._camera(req.pop("camera", None))
            if cmd == "stop_stream":
                sim_camera.stop_stream()
            else:
                sim_camera.start_stream()
            self._emit("stream", {"camera": name, "state": "stopped" if cmd == "stop_stream" else "serving"})
            return {"camera": name, "streaming": sim_camera.streaming}
        if cmd == "calibrate":
            name, _ = self._camera(req.pop("camera", None))
            return self._command("camera.calibrate", {"camera": name})
        if cmd == "evidence":
            return {"evidence": self.evidence(limit=int(req.get("limit", 100)))}
        raise SimError(f"unknown cmd {cmd!r}")

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rating": self.service.status(), "speaker_wav": str(self.speaker_wav)}
        if self.mcu is not None:
            out["mcu"] = {"pty": self.mcu.pty_path, "unacked": self.mcu.unacked, "acks": len(self.mcu.acked)}
        if self.camera_service is not None:
            cameras = self.camera_service.status()
            for name, sim_camera in self.cameras.items():
                cameras[name]["scene"] = {
                    "url": sim_camera.url,
                    "streaming": sim_camera.streaming,
                    "t": round(sim_camera.now(), 2),
                    "officer_seated": sim_camera.officer_seated(),
                }
            out["cameras"] = cameras
        return out

    def evidence(self, limit: int = 100) -> list[dict[str, Any]]:
        """The clips and snapshots written, oldest first: their events, and where each file is on the
        device (``path``; ``on_disk`` false once retention or the byte budget has deleted it)."""
        events = reversed(self.daemon.outbox.list_events(type="evidence", limit=limit))
        return [self._evidence_record(e.seq, e.id, e.data) for e in events]

    def _evidence_record(self, seq: int, event_id: str, data: dict[str, Any]) -> dict[str, Any]:
        path = self.config.store.state_dir / "media" / str(data.get("file", ""))
        record = {"seq": seq, "id": event_id, **data, "path": str(path), "on_disk": path.is_file()}
        with self._ratings:
            rating_seq = self._rating_seqs.get(str(data.get("rating_id")))
        if rating_seq is not None:
            record["rating_seq"] = rating_seq
        return record

    def _camera(self, name: Any) -> tuple[str, SimCamera]:
        """The camera an action is for: the one named, else the first."""
        if not self.cameras:
            raise SimError("this counter has no camera: add a [[camera]] section, or run edge sim --camera")
        if name is None:
            name = next(iter(self.cameras))
        if name not in self.cameras:
            raise SimError(f"no camera {name!r} (this counter has: {', '.join(self.cameras)})")
        return str(name), self.cameras[name]

    def _press(self, button: int, timeout: float = 15.0) -> None:
        """Press, and return once the service has committed the press (as a person waits for the light)."""
        self._check_button(button)
        self._emit("press", {"button": button})
        with self._ratings:
            before = self._ratings_seen
        if self.gpio is not None:
            self.gpio.press(button)
        else:
            assert self.mcu is not None
            self.mcu.press(button)
        with self._ratings:
            if not self._ratings.wait_for(lambda: self._ratings_seen > before, timeout):
                raise SimError(f"the press of button {button} was not committed within {timeout:.0f} s")

    def _check_button(self, button: int) -> None:
        n = self.service.profile.button_count
        if not 1 <= button <= n:
            raise SimError(f"button must be 1..{n}, got {button}")

    def _command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run a command handler as the command channel would after verifying a signed command."""
        reg = self.daemon.registry.get(name)
        try:
            parsed = reg.parse_args(args)
        except CommandRejected as exc:
            raise SimError(str(exc)) from None
        result = reg.handler(parsed, None)
        return {"result": dict(result or {})}

    # -- what the hardware did ---------------------------------------------------------------------

    def _on_gpio_output(self, bcm: int, on: bool) -> None:
        assert self.gpio is not None
        prof = self.gpio.profile
        if prof.buzzer is not None and prof.buzzer.number == bcm:
            self._emit("buzzer", {"state": "on" if on == prof.buzzer.active_high else "off"})
            return
        for number, b in enumerate(prof.buttons, start=1):
            if b.led is not None and b.led.number == bcm:
                self._emit("led", {"led": number, "gpio": bcm, "state": "on" if on == b.led.active_high else "off"})
                return
        if prof.ring is not None and prof.ring.number == bcm:
            self._emit("led", {"led": "ring", "gpio": bcm, "state": "on" if on == prof.ring.active_high else "off"})

    def _watch_mcu(self) -> None:
        """The serial MCU records what the host told it; show it as it arrives."""
        assert self.mcu is not None
        seen_leds = seen_beeps = 0
        while not self.stopping:
            leds, beeps = list(self.mcu.led_log), list(self.mcu.beeps)
            for target, mode in leds[seen_leds:]:
                self._emit("led", {"led": target, "state": mode})
            for ms in beeps[seen_beeps:]:
                self._emit("buzzer", {"state": "beep", "ms": ms})
            seen_leds, seen_beeps = len(leds), len(beeps)
            self._stopped.wait(0.02)

    def _on_camera(self, kind: str, detail: dict[str, Any]) -> None:
        """The camera service's presence and tamper events (as committed) and references taken."""
        if kind == "reference":
            with self._lock:
                self._references.add(str(detail.get("camera")))
        self._emit(kind, detail)

    def _on_commit(self, last_seq: int) -> None:
        """An outbox listener (on the store's writer thread, after each commit that appended): print
        the evidence events among what was just committed. The recorders write them from their own
        threads, and reading the rows just appended costs a range scan of a few rows."""
        rows = self.daemon.outbox.query(
            "SELECT seq, id, data FROM events WHERE seq > ? AND seq <= ? AND type = 'evidence' ORDER BY seq",
            (self._evidence_seen, last_seq),
        )
        self._evidence_seen = max(self._evidence_seen, last_seq)
        for seq, event_id, data in rows:
            self._emit("evidence", self._evidence_record(int(seq), str(event_id), json.loads(data)))

    def _on_service(self, kind: str, detail: dict[str, Any]) -> None:
        if kind == "rating":
            with self._ratings:
                self._ratings_seen += 1
                self._rating_seqs[str(detail.get("id"))] = int(detail.get("seq") or 0)
                while len(self._rating_seqs) > 1000:
                    del self._rating_seqs[next(iter(self._rating_seqs))]
                self._ratings.notify_all()
        if kind == "speech":
            wav_s = wav_seconds(self.speaker_wav)
            self._emit("speaker", {**detail, "wav_s": None if wav_s is None else round(wav_s, 3)})
        elif kind != "thanks":
            self._emit(kind, detail)


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def format_record(record: dict[str, Any]) -> str:
    """One output record as a line for a person."""
    r = dict(record)
    t = str(r.pop("t", ""))[11:23]
    what = str(r.pop("what", ""))
    if what == "rating":
        text = (
            f"seq {r['seq']}: button {r['button']} = {r['score']} {r['label']} ({r['text']}), counter {r['counter']}, "
            f"officer {r['officer'] or '-'}, window {r['window'] or '-'}, case {r['case'] or '-'}, "
            f"misuse {r['misuse'] or '-'}" + (" [duplicate]" if r.get("duplicate") else "")
        )
    elif what == "speaker":
        text = f"said {r['text']!r} ({r['seconds']} s played; recorded {r.get('wav_s')} s)"
    elif what == "led":
        text = f"LED {r['led']} {r['state']}"
    elif what == "sim":
        text = str(r["text"])
    elif what in CAMERA_FORMATS:
        text = CAMERA_FORMATS[what](r)
    else:
        text = " ".join(f"{k}={v}" for k, v in r.items())
    return f"{t} {what:<8} {text}"


def _clock(iso_time: Any) -> str:
    """``2026-12-01T08:15:30.104+07:00`` → ``08:15:30.104``."""
    return str(iso_time or "-")[11:23] or "-"


def format_presence(r: dict[str, Any]) -> str:
    """A committed ``presence`` event, e.g. ``seq 7: q1-cam officer present since 08:15:30.104 ...``."""
    return (
        f"seq {r['seq']}: {r['camera']} officer {r['state']} since {_clock(r['since'])}, counter {r['counter']}, "
        f"occupancy {r['occupancy']}"
    )


def format_tamper(r: dict[str, Any]) -> str:
    """A committed ``tamper`` event: the kind, start or end, the incident, and the clip of a start."""
    text = f"seq {r['seq']}: {r['camera']} {r['kind']} {r['state']}, incident {r['incident']}"
    if r.get("error"):
        text += f", {r['error']}"
    if r.get("clip_id"):
        text += f", clip {r['clip_id']}"
    return text


def format_evidence(r: dict[str, Any], *, file: bool = True) -> str:
    """A committed ``evidence`` event: what was written, why, linked to what, and (``file``) its sha256
    and where the file is (``r["path"]``)."""
    text = f"seq {r['seq']}: {r['camera']} {r['kind']} {r['clip_id']} for {r['reason']}"
    if r.get("rating_id"):
        seq = f"seq {r['rating_seq']}, " if r.get("rating_seq") else ""
        text += f" (rating {seq}id {r['rating_id']}, window {r.get('window_id') or '-'})"
    pictures = f"{r['frames']} frames" if r.get("kind") == "clip" else "1 picture"
    text += (
        f": {pictures} {r.get('width')}x{r.get('height')}, {r['blurred_faces']} face(s) blurred"
        f"{', mask black' if r.get('masked') else ''}, {r['bytes']} bytes"
    )
    return text + (f", sha256 {r['sha256']}, file {r['path']}" if file else "")


def _format_scene(r: dict[str, Any]) -> str:
    params = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("camera", "action", "t"))
    return f"{r['camera']}: {r['action']}{f' ({params})' if params else ''} at scene {r['t']:.1f} s"


CAMERA_FORMATS: dict[str, Callable[[dict[str, Any]], str]] = {
    "presence": format_presence,
    "tamper": format_tamper,
    "evidence": format_evidence,
    "scene": _format_scene,
    "stream": lambda r: f"{r['camera']}: stream {r['state']}",
    "camera": lambda r: f"{r['camera']}: simulated counter scene, {r['format']} at {r['url']}",
    "reference": lambda r: f"{r['camera']}: empty-seat reference {r['how']} at {_clock(r['taken'])}",
}
