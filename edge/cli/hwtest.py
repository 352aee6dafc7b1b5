"""``edge test panel``, ``relays``, ``speaker`` and ``camera``: a technician exercises one piece of hardware.

``edge test panel`` opens the panel the config (or ``--profile``/``--port``) names, lights each LED in
turn, beeps, then reports every button pressed until each has been pressed once (or ``--listen``
seconds pass). Nothing is recorded: these presses are not ratings. Stop ``edge run`` first; the
panel has one user at a time. ``--sim`` runs the same test on a simulated panel, with a simulated
technician pressing each button.

``edge test relays`` opens the relay board the config's [relays] (or ``--profile``/``--port``) names,
which opens every relay, then closes and opens each relay in turn (the amplifier first, then each
zone) and prints what it did and, when the board can tell, what the board reports. ``--sim`` runs it
on simulated GPIO pins or a simulated serial board.

``edge test camera`` reads the configured (or ``--source``/``--profile``, or ``--sim``) camera for a few
seconds, prints the frame rate it measured, and saves one snapshot for the technician with every face
blurred and the privacy mask black (mode 0600; no face model, no snapshot).

``edge test speaker`` plays a tone on the output the config's [speaker] (or, on a counter,
``rating.feedback.audio_device``) names, then, on a loudspeaker, the Vietnamese test sentence as the
[speech] engine says it, and prints for each the seconds played and the level sent (RMS and peak
dBFS, after the gain and ``speaker.max_volume_db``) and, with a capture device, the level heard.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any

from edge.cli.common import CliError, out, print_json
from edge.config import load_config


def _panel_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The profile and port to test: the flags, else the config's [panel]."""
    if args.profile:
        return args.profile, args.port
    config = load_config(args.config)
    if config.panel is None:
        raise CliError("no [panel] in the config; name one with --profile")
    return config.panel.profile, args.port or config.panel.port


def cmd_test_panel(args: argparse.Namespace) -> int:
    from drivers.panel import PanelEvent, Press, open_panel
    from drivers.profiles import GpioProfile, load_profile
    from drivers.resources import Resources

    profile_name, port = _panel_target(args)
    profile = load_profile(profile_name)
    report: dict[str, Any] = {"profile": profile.model, "kind": profile.kind, "leds": [], "pressed": [], "events": []}
    say = (lambda text: None) if args.json else out
    inbox: queue.SimpleQueue[Press | PanelEvent] = queue.SimpleQueue()

    with ExitStack() as stack:
        pin_factory = None
        technician: Any = None
        if args.sim:
            if isinstance(profile, GpioProfile):
                from gpiozero.pins.mock import MockFactory

                from sim.gpio_panel import SimGpioPanel

                pin_factory = MockFactory()
                technician = SimGpioPanel(profile, pin_factory)
            else:
                from sim.serial_mcu import SerialMcu

                technician = stack.enter_context(
                    SerialMcu(buttons=profile.button_count, model=profile.model, hb_ms=profile.heartbeat_ms)
                )
                port = technician.path
        panel = stack.enter_context(open_panel(profile, port=port, pin_factory=pin_factory, resources=Resources()))

        def on_press(press: Press) -> None:
            panel.acknowledge(press)  # a test press is not a rating: nothing to commit first
            inbox.put(press)

        panel.start(on_press, inbox.put)
        say(f"panel {profile.model} ({profile.kind}{', port ' + str(port) if port else ''})")
        if not _wait_connected(panel, args.connect_timeout):
            raise CliError(f"panel {profile.model} did not answer within {args.connect_timeout:.0f} s")
        hello = getattr(panel, "hello", None)
        if hello is not None:
            say(f"connected: firmware {hello.fw}, model {hello.model}, {hello.buttons} buttons")
            report["firmware"] = hello.fw

        for number, spec in enumerate(profile.buttons, start=1):
            panel.set_led(number, "on")
            say(f"LED {number} on   ({spec.text})")
            report["leds"].append(number)
            time.sleep(args.led_s)
            panel.set_led(number, "off")
        panel.beep(200)
        say("beep (200 ms)")

        n = profile.button_count
        say(f"press each of the {n} buttons now (up to {args.listen:.0f} s)")
        if technician is not None:
            threading.Thread(target=_simulated_technician, args=(technician, n), daemon=True).start()
        pressed: set[int] = set()
        deadline = time.monotonic() + args.listen
        while len(pressed) < n and (remaining := deadline - time.monotonic()) > 0:
            try:
                item = inbox.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if isinstance(item, Press):
                spec = profile.button(item.button)
                pressed.add(item.button)
                panel.set_led(item.button, "thanks")
                report["pressed"].append(item.button)
                say(f"button {item.button} pressed: {spec.text} (score {spec.score}, {spec.label})")
            else:
                _note_event(item, report, say)
        report["missing"] = [b for b in range(1, n + 1) if b not in pressed]
        report["ok"] = not report["missing"]
        report["stats"] = {"presses": panel.stats.presses, "bad_frames": panel.stats.frames.dropped}
    if args.json:
        print_json(report)
    elif report["missing"]:
        out(f"not pressed: {', '.join(map(str, report['missing']))}")
    else:
        out(f"all {n} buttons work")
    return 0 if report["ok"] else 1


def _wait_connected(panel: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not panel.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(panel.connected)


def _note_event(event: Any, report: dict[str, Any], say: Any) -> None:
    report["events"].append({"kind": event.kind, **event.detail})
    if event.kind == "done":
        say("officer done button pressed")
    elif event.kind in ("stuck", "released", "disconnected", "firmware_mismatch", "error"):
        say(f"panel {event.kind}: {event.detail}")


def _simulated_technician(technician: Any, buttons: int) -> None:
    for number in range(1, buttons + 1):
        time.sleep(0.1)
        technician.press(number)


#: What ``edge test speaker`` says on a loudspeaker after the tone: plain Vietnamese a passer-by
#: recognises as a test, with numbers to hear each word clearly.
TEST_SENTENCE = "Alô, alô. Đây là loa truyền thanh thông minh của khu phố, đang thử loa. Một, hai, ba, bốn, năm."


def cmd_test_speaker(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from drivers.audio import Clip, PcmSource, PlayResult, open_file_source, open_player
    from drivers.audio.capture import LevelMeter
    from drivers.resources import Resources
    from edge.config import config_path
    from edge.config.speech import SpeechConfig

    # The config is read when one is named or installed; a bare `edge test speaker` works without.
    config = load_config(args.config) if args.config or config_path().exists() else None
    speaker = config.speaker if config is not None else None
    device: str | None = args.device
    if device is None and config is not None:
        device = speaker.device if speaker is not None else config.rating.feedback.audio_device
    capture = args.capture or (speaker.capture_device if speaker is not None else None)
    gain_db = min(args.gain_db, speaker.max_volume_db if speaker is not None else 0.0)
    sentence = args.sentence if args.sentence is not None else speaker is not None and args.text is None

    items: list[tuple[str, Callable[[], PcmSource]]] = []
    if args.text is None:
        items.append((f"tone {args.tone:g} Hz", lambda: Clip.tone(args.tone, args.seconds).source()))
    text = args.text if args.text is not None else TEST_SENTENCE if sentence else None
    if text is not None:
        from edge.speech import make_engine, render_cached

        engine = make_engine(config.speech if config is not None else SpeechConfig())
        wav = render_cached(engine, text, voice=args.voice, cache_dir=Path(tempfile.mkdtemp(prefix="edge-tts-")))
        items.append((f"speech: {text}", partial(open_file_source, wav)))

    resources = Resources()
    report: dict[str, Any] = {"items": []}
    with ExitStack() as stack:
        player = stack.enter_context(open_player(device, resources=resources, holder="test"))
        meter = stack.enter_context(LevelMeter(capture, resources=resources, holder="test")) if capture else None
        report["device"] = player.device_name
        if meter is not None:
            report["capture_device"] = meter.device_name
        for what, open_source in items:
            src = open_source()
            try:
                if meter is not None:
                    meter.start()
                result: PlayResult = player.play_source(src, gain_db=gain_db)
            finally:
                heard = meter.stop() if meter is not None else None
                src.close()
            entry = {
                "what": what,
                "seconds": round(result.seconds, 3),
                "rate": result.rate,
                "stopped": result.stopped,
                "level_dbfs": result.rms_dbfs,
                "peak_dbfs": result.peak_dbfs,
            }
            if meter is not None:
                entry["heard_dbfs"] = heard
            report["items"].append(entry)
            if not args.json:
                heard_text = f", heard at {heard} dBFS" if meter is not None else ""
                out(
                    f"{what}: {entry['seconds']} s at {result.rate} Hz on {player.device_name}, "
                    f"level {result.rms_dbfs} dBFS (peak {result.peak_dbfs}){heard_text}"
                )
    report["seconds"] = round(sum(i["seconds"] for i in report["items"]), 3)
    report["gain_db"] = gain_db
    if args.json:
        print_json(report)
    return 0


def cmd_test_relays(args: argparse.Namespace) -> int:
    from drivers.relay import AMPLIFIER, RelayFault, load_relay_profile, open_relays
    from drivers.relay.profile import GpioRelayProfile
    from drivers.resources import Resources

    if args.profile:
        profile_name, port, unit = args.profile, args.port, args.modbus_unit
    else:
        config = load_config(args.config)
        if config.relays is None:
            raise CliError("no [relays] in the config; name a relay profile with --profile")
        profile_name = config.relays.profile
        port = args.port or config.relays.port
        unit = args.modbus_unit if args.modbus_unit is not None else config.relays.modbus_unit
    profile = load_relay_profile(profile_name)
    say = (lambda text: None) if args.json else out
    report: dict[str, Any] = {"profile": profile.model, "kind": profile.kind, "readback": profile.readback}
    clicked: list[str] = []
    report["clicked"] = clicked

    with ExitStack() as stack:
        pin_factory = None
        look: Callable[[], dict[str, bool]] | None = None  # --sim: the simulated hardware, seen from outside
        if args.sim:
            if isinstance(profile, GpioRelayProfile):
                from gpiozero.pins.mock import MockFactory

                from sim.gpio_relays import SimGpioRelays

                pin_factory = MockFactory()
                look = SimGpioRelays(profile, pin_factory).states
            else:
                from sim.serial_relay import simulated_board

                board = stack.enter_context(simulated_board(profile))
                port, unit = board.path, None
                look = partial(board.named_states, profile)
        try:
            bank = stack.enter_context(
                open_relays(profile, port=port, modbus_unit=unit, pin_factory=pin_factory, resources=Resources())
            )
        except RelayFault as exc:
            raise CliError(str(exc)) from None
        report["where"] = bank.where
        say(
            f"relay board {profile.model} ({profile.kind} on {bank.where}): amplifier and {len(bank.zones)} zones; "
            f"readback {'on' if profile.readback else 'off'}"
        )
        if bank.problem:
            raise CliError(bank.problem)
        say("every relay open")

        def board_says(relay: str) -> str:
            notes = []
            if profile.readback:
                notes.append(f"the board reads {'closed' if bank.states()[relay] else 'open'}")
            if look is not None:
                seen = [name for name, on in look().items() if on]
                report.setdefault("seen", []).append(seen)
                notes.append(f"simulated board: {', '.join(seen) + ' closed' if seen else 'all open'}")
            return f" ({'; '.join(notes)})" if notes else ""

        try:
            for relay in (AMPLIFIER, *bank.zones):
                label = "amplifier" if relay == AMPLIFIER else f"zone {relay}"
                if relay == AMPLIFIER:
                    bank.amplifier(True)
                else:
                    bank.set_zones([relay])
                say(f"{label}: closed{board_says(relay)}")
                time.sleep(args.click_s)
                if relay == AMPLIFIER:
                    bank.amplifier(False)
                else:
                    bank.set_zones([])
                say(f"{label}: open{board_says(relay)}")
                clicked.append(relay)
        except RelayFault as exc:
            report["problem"] = str(exc)
        report["ok"] = "problem" not in report
    if args.json:
        print_json(report)
    elif not report["ok"]:
        raise CliError(f"stopped after {len(clicked)} relays: {report['problem']}")
    else:
        out(f"all {len(clicked)} relays clicked; every relay open")
    return 0 if report["ok"] else 1


def cmd_test_camera(args: argparse.Namespace) -> int:
    """Read a camera for a few seconds, print the measured frame rate, and save one blurred snapshot."""
    import os
    import tempfile
    from pathlib import Path

    import cv2

    from drivers.camera import load_camera_profile, open_camera
    from drivers.resources import Resources
    from edge.config.camera import CameraConfig
    from edge.services.camera.blur import FaceBlurrer, PrivacyMask

    if args.sim:
        from sim.camera_scene import CounterScene

        video = Path(tempfile.mkdtemp(prefix="edge-camera-")) / "counter.avi"
        CounterScene([(0, "seat")], duration_s=max(10.0, args.seconds + 2), walkers_every_s=4).write(video)
        settings = CameraConfig(name="sim", source=str(video), profile=args.profile or "sim-counter-640x480")
    elif args.source is not None:
        if not args.profile:
            raise CliError("--source needs --profile (e.g. usb-640x480)")
        settings = CameraConfig(name="test", source=args.source, profile=args.profile)
    else:
        config = load_config(args.config)
        if not config.camera:
            raise CliError("no [[camera]] in the config; name one with --source and --profile, or use --sim")
        named = [c for c in config.camera if args.camera in (None, c.name)]
        if not named:
            raise CliError(
                f"no camera {args.camera!r} in the config (it has: {', '.join(c.name for c in config.camera)})"
            )
        settings = named[0]
    profile = load_camera_profile(settings.profile)
    # The blurrer first: without a face model no picture may be written, so do not even read one.
    blurrer = FaceBlurrer(settings.evidence.face_model, settings.evidence.face_threshold)
    say = (lambda text: None) if args.json else out
    report: dict[str, Any] = {"camera": settings.name, "profile": profile.model}
    with open_camera(settings, resources=Resources()) as cam:
        report["source"] = cam.backend.description
        say(f"camera {settings.name}: {cam.backend.description} (profile {profile.model}), reading {args.seconds:g} s")
        cam.start()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            time.sleep(0.1)
        stats = cam.stats
        frame = cam.latest()
    report.update(
        frames=stats.frames,
        fps=stats.fps,
        drops=stats.drops,
        state=stats.state,
        error=stats.error,
        size=None if stats.width is None else f"{stats.width}x{stats.height}",
    )
    if frame is None:
        if args.json:
            print_json({**report, "ok": False})
        raise CliError(f"no picture from {report['source']}: {stats.error or 'nothing within the time'}")
    picture, faces = blurrer.blur(frame.image, PrivacyMask.from_profile(profile))
    path = Path(args.out or f"camera-{settings.name}.jpg")
    ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, settings.evidence.jpeg_quality])
    if not ok:
        raise CliError("the snapshot could not be encoded")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a picture of people: private
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # also when an earlier file of that name was readable by others
        f.write(jpeg.tobytes())
    report.update(snapshot=str(path), blurred_faces=faces, ok=True)
    if args.json:
        print_json(report)
    else:
        out(f"{stats.frames} frames at {stats.fps:g} fps measured ({report['size']})")
        out(f"snapshot: {path} ({faces} face(s) blurred, privacy mask black)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("test", help="exercise one piece of hardware (panel, relays, speaker, camera)")
    tsub = p.add_subparsers(dest="part", metavar="PART", required=True)

    q = tsub.add_parser("panel", help="light each LED in turn, then report each button pressed")
    q.add_argument("--config", metavar="FILE", help="config file whose [panel] to test")
    q.add_argument("--profile", help="test this profile instead of the config's")
    q.add_argument("--port", help="serial port (serial panels)")
    q.add_argument("--sim", action="store_true", help="test a simulated panel, pressed by a simulated technician")
    q.add_argument("--led-s", type=float, default=0.5, help="seconds each LED stays lit")
    q.add_argument("--listen", type=float, default=60.0, help="seconds to wait for the presses")
    q.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the panel")
    q.add_argument("--json", action="store_true", help="print a JSON report at the end")
    q.set_defaults(func=cmd_test_panel)

    q = tsub.add_parser("relays", help="click each relay in turn (amplifier, then each zone)")
    q.add_argument("--config", metavar="FILE", help="config file whose [relays] to test")
    q.add_argument("--profile", help="test this relay profile instead of the config's")
    q.add_argument("--port", help="serial port (LCUS and Modbus boards)")
    q.add_argument("--modbus-unit", type=int, help="Modbus unit id instead of the profile's")
    q.add_argument("--sim", action="store_true", help="test simulated relays (GPIO pins or a serial board)")
    q.add_argument("--click-s", type=float, default=1.0, help="seconds each relay stays closed")
    q.add_argument("--json", action="store_true", help="print a JSON report at the end")
    q.set_defaults(func=cmd_test_relays)

    q = tsub.add_parser("speaker", help="play a tone, then the Vietnamese test sentence (loudspeakers), and measure")
    q.add_argument("--config", metavar="FILE", help="config whose [speaker] (or rating.feedback.audio_device) to use")
    q.add_argument("--device", help="output device (name or index; default: the config's, else the system default)")
    q.add_argument("--capture", metavar="DEVICE", help="also measure what this input hears (default: the config's)")
    q.add_argument("--tone", type=float, default=440.0, help="tone frequency in Hz")
    q.add_argument("--seconds", type=float, default=1.0, help="tone length")
    q.add_argument(
        "--sentence",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="say the Vietnamese test sentence after the tone (default: yes with a [speaker] section)",
    )
    q.add_argument("--text", help="speak this text (as the [speech] engine says it) instead of the tone")
    q.add_argument("--voice", help="voice for the speech (default: the [speech] voice)")
    q.add_argument("--gain-db", type=float, default=0.0, help="gain in dB (capped by speaker.max_volume_db)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_test_speaker)

    q = tsub.add_parser("camera", help="read a camera, print its measured fps, save one blurred snapshot")
    q.add_argument("--config", metavar="FILE", help="config file whose [[camera]] to test")
    q.add_argument("--camera", metavar="NAME", help="which [[camera]] (default: the first)")
    q.add_argument("--source", help="test this source (index, /dev/video path, URL, file) instead of the config's")
    q.add_argument("--profile", help="camera profile for --source or --sim")
    q.add_argument("--sim", action="store_true", help="test on the simulated counter scene")
    q.add_argument("--seconds", type=float, default=5.0, help="seconds to read before the snapshot")
    q.add_argument("--out", metavar="FILE", help="where to save the snapshot (default: camera-NAME.jpg)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_test_camera)
