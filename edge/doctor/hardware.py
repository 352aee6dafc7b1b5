"""The doctor's hardware checks: serial ports, GPIO, cameras, audio output and capture, espeak-ng.

Only what the configuration uses is checked, and nothing is driven: ports and devices are looked up
and their permissions compared with the daemon's groups, never opened for writing (the daemon may
hold them). Audio devices are looked up through PortAudio as the daemon does.
"""

from __future__ import annotations

import glob
import os
import socket
from urllib.parse import urlsplit

from edge.doctor.local import SERVICE_USER, Context, group_access
from edge.doctor.report import Finding


def _serial_users(ctx: Context) -> list[tuple[str, str | None, object]]:
    """``(section, configured port, profile's USB id)`` of every serial device the config uses."""
    assert ctx.config is not None
    from drivers.profiles import SerialProfile, load_profile
    from drivers.relay.profile import GpioRelayProfile, load_relay_profile
    from edge.exceptions import BadProfile

    users: list[tuple[str, str | None, object]] = []
    if ctx.config.panel is not None:
        try:
            prof = load_profile(ctx.config.panel.profile)
        except BadProfile:
            prof = None
        if isinstance(prof, SerialProfile):
            users.append(("panel", ctx.config.panel.port, prof.usb))
    if ctx.config.relays is not None:
        try:
            relays = load_relay_profile(ctx.config.relays.profile)
        except BadProfile:
            relays = None
        if relays is not None and not isinstance(relays, GpioRelayProfile):
            users.append(("relays", ctx.config.relays.port, getattr(relays, "usb", None)))
    return users


def check_serial(ctx: Context) -> list[Finding]:
    if ctx.config is None:
        return [Finding("serial", "skip", "not checked: the configuration cannot be read")]
    from drivers.panel.serial import find_port

    users = _serial_users(ctx)
    if not users:
        return [Finding("serial", "skip", "no serial panel or relay board configured")]
    found = []
    for section, port, usb in users:
        path = find_port(port, usb)  # type: ignore[arg-type]
        wanted = port or f"usb:{usb}"
        if path is None:
            found.append(
                Finding(
                    f"serial.{section}",
                    "fail",
                    f"{section}: the serial port {wanted} is not there",
                    "plug in the USB cable of the board (ls /dev/serial/by-id/ shows what is connected), and set "
                    f"{section}.port to its /dev/serial/by-id/... name",
                )
            )
            continue
        denied = group_access(path)
        if denied:
            found.append(
                Finding(
                    f"serial.{section}",
                    "fail",
                    f"{section}: {denied}",
                    f"usermod -a -G dialout {SERVICE_USER}, then restart the daemon",
                )
            )
        else:
            found.append(
                Finding(
                    f"serial.{section}", "ok", f"{section}: {path}" + (f" (for {wanted})" if path != wanted else "")
                )
            )
    return found


def _gpio_pins(ctx: Context) -> dict[int, str]:
    """BCM pin -> what uses it, for every GPIO the configured panel and relay profiles name."""
    assert ctx.config is not None
    from drivers.profiles import GpioProfile, load_profile
    from drivers.relay.profile import GpioRelayProfile, load_relay_profile
    from edge.exceptions import BadProfile

    pins: dict[int, str] = {}
    if ctx.config.panel is not None:
        try:
            prof = load_profile(ctx.config.panel.profile)
        except BadProfile:
            prof = None
        if isinstance(prof, GpioProfile):
            for key, spec in prof.pins():
                pins.setdefault(spec.number, f"panel.{key}")
    if ctx.config.relays is not None:
        try:
            relays = load_relay_profile(ctx.config.relays.profile)
        except BadProfile:
            relays = None
        if isinstance(relays, GpioRelayProfile):
            pins.setdefault(relays.amplifier.pin.number, "relays.amplifier")
            for i, zone in enumerate(relays.zones):
                pins.setdefault(zone.pin.number, f"relays.zones[{i}]")
    return pins


def check_gpio(ctx: Context) -> list[Finding]:
    if ctx.config is None:
        return [Finding("gpio", "skip", "not checked: the configuration cannot be read")]
    pins = _gpio_pins(ctx)
    if not pins:
        return [Finding("gpio", "skip", "no GPIO panel or relay board configured")]
    chips = sorted(glob.glob("/dev/gpiochip*"))
    used = ", ".join(str(p) for p in sorted(pins))
    if not chips:
        return [
            Finding(
                "gpio",
                "fail",
                f"no /dev/gpiochip*: the configured GPIO pins ({used}) cannot be driven on this machine",
                "run on the Raspberry Pi the panel is wired to; on a Pi, the kernel's GPIO driver is missing "
                "(update Raspberry Pi OS)",
            )
        ]
    denied = [d for d in (group_access(c) for c in chips) if d]
    if denied:
        return [Finding("gpio", "fail", denied[0], f"usermod -a -G gpio {SERVICE_USER}, then restart the daemon")]
    return [Finding("gpio", "ok", f"{', '.join(chips)}; pins {used} (no clash in the configuration)")]


def check_cameras(ctx: Context) -> list[Finding]:
    if ctx.config is None:
        return [Finding("camera", "skip", "not checked: the configuration cannot be read")]
    cameras = list(ctx.config.camera)
    if not cameras:
        return [Finding("camera", "skip", "no [[camera]] configured")]
    from drivers.camera.source import parse_source

    found = []
    for cam in cameras:
        name = f"camera.{cam.name}"
        src = parse_source(cam.source)
        if src.kind in ("usb", "v4l2"):
            path = src.resource or str(src.target)
            if not os.path.exists(str(src.target) if src.kind == "v4l2" else path):
                found.append(
                    Finding(
                        name,
                        "fail",
                        f"{src.display} is not there",
                        "plug in the camera's USB cable (ls /dev/v4l/by-id/ lists cameras) and name it by its "
                        "/dev/v4l/by-id/... path in source",
                    )
                )
                continue
            denied = group_access(path)
            if denied:
                found.append(
                    Finding(name, "fail", denied, f"usermod -a -G video {SERVICE_USER}, then restart the daemon")
                )
            else:
                found.append(Finding(name, "ok", f"{src.display} is there"))
        elif src.kind == "url":
            if ctx.quick:
                found.append(Finding(name, "skip", f"{src.display}: not checked (--quick)"))
                continue
            parts = urlsplit(str(src.target))
            port = parts.port or {"rtsp": 554, "http": 80, "https": 443}.get(parts.scheme, 554)
            try:
                with socket.create_connection((parts.hostname or "", port), timeout=ctx.timeout_s):
                    pass
            except OSError as exc:
                found.append(
                    Finding(
                        name,
                        "fail",
                        f"{src.display}: cannot connect to {parts.hostname}:{port}: {exc}",
                        "check the camera's power and network cable, and its address in source",
                    )
                )
            else:
                found.append(Finding(name, "ok", f"{src.display} answers on port {port}"))
        elif not os.path.isfile(str(src.target)):
            found.append(Finding(name, "fail", f"{src.display}: no such video file", "correct source"))
        else:
            found.append(Finding(name, "ok", f"{src.display} (a video file)"))
    return found


def _audio_wanted(ctx: Context) -> list[tuple[str, str, str | None]]:
    """``(key, "output"|"input", device)`` for every sound device the roles use."""
    assert ctx.config is not None
    c = ctx.config
    wanted: list[tuple[str, str, str | None]] = []
    if "counter" in c.device.roles and c.panel is not None and c.rating.feedback.speak:
        wanted.append(("rating.feedback.audio_device", "output", c.rating.feedback.audio_device))
    if c.speaker is not None:
        wanted.append(("speaker.device", "output", c.speaker.device))
        if c.speaker.capture_device is not None:
            wanted.append(("speaker.capture_device", "input", c.speaker.capture_device))
    elif "loudspeaker" in c.device.roles:
        wanted.append(("speaker.device", "output", None))
    return wanted


def check_audio(ctx: Context) -> list[Finding]:
    if ctx.config is None:
        return [Finding("audio", "skip", "not checked: the configuration cannot be read")]
    wanted = _audio_wanted(ctx)
    if not wanted:
        return [Finding("audio", "skip", "no speaker or microphone configured")]
    from drivers.audio.base import AudioUnavailable
    from drivers.audio.soundcard import find_device, load_sounddevice

    try:
        sd = load_sounddevice()
    except AudioUnavailable as exc:
        return [Finding("audio", "fail", str(exc), "apt-get install libportaudio2")]
    found = []
    for key, kind, device in wanted:
        try:
            index, name = find_device(sd, device, kind)
        except AudioUnavailable as exc:
            cards = sorted(os.listdir("/dev/snd")) if os.path.isdir("/dev/snd") else []
            hint = "aplay -l" if kind == "output" else "arecord -l"
            found.append(
                Finding(
                    f"audio.{kind}",
                    "fail",
                    f"{key}: {exc}" + ("" if cards else " (no sound card at all: /dev/snd is empty)"),
                    f"plug in the sound card (USB) and check it is listed by `{hint}`; then set {key} to its name "
                    "(python3 -m sounddevice lists the names), or leave it empty for the system default",
                )
            )
            continue
        found.append(Finding(f"audio.{kind}", "ok", f"{key}: {name} (device {index})"))
    return found


def check_speech(ctx: Context) -> list[Finding]:
    if ctx.config is None:
        return [Finding("speech", "skip", "not checked: the configuration cannot be read")]
    c = ctx.config
    voices: list[tuple[str, str]] = []
    if "counter" in c.device.roles and c.panel is not None and c.rating.feedback.speak:
        voices.append(("rating.feedback.voice", c.rating.feedback.voice))
    if "loudspeaker" in c.device.roles and c.speech.engine == "espeak-ng":
        voices.append(("speech.voice", c.speech.voice))
    if not voices:
        return [Finding("speech", "skip", "nothing is spoken with espeak-ng on this device")]
    from edge.speech.engine import SpeechUnavailable
    from edge.speech.espeak import EspeakEngine

    engine = EspeakEngine()
    try:
        version = engine.identity()
    except SpeechUnavailable as exc:
        return [Finding("speech", "fail", str(exc), "apt-get install espeak-ng")]
    found = []
    for key, voice in dict.fromkeys(voices):
        try:
            engine.check(voice)
        except SpeechUnavailable as exc:
            found.append(
                Finding("speech", "fail", f"{key}: {exc}", "apt-get install --reinstall espeak-ng espeak-ng-data")
            )
        else:
            found.append(Finding("speech", "ok", f"{key}: {version}, voice {voice}"))
    return found
