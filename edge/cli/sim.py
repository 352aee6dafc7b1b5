"""``edge sim``: a simulated device, the real daemon on simulated hardware: a counter (panel, speaker and
cameras) or a loudspeaker (relay board and sound card)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.cli.common import CliError, add_common, load, out

log = logging.getLogger(__name__)


def send_request(path: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to a running ``edge sim``'s control socket and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError as exc:
            raise CliError(f"no edge sim listening on {path}: {exc.strerror or exc}") from None
        s.sendall(json.dumps(request).encode() + b"\n")
        with s.makefile("rb") as f:
            line = f.readline()
    if not line:
        raise CliError(f"edge sim on {path} closed the connection without a reply")
    reply: dict[str, Any] = json.loads(line)
    return reply


def cmd_sim(args: argparse.Namespace) -> int:
    config = load(args)
    control = Path(args.control) if args.control else config.store.state_dir / "sim.sock"
    if args.send is not None:
        try:
            request = json.loads(args.send)
        except ValueError as exc:
            raise CliError(f"--send takes a JSON object: {exc}") from None
        reply = send_request(control, request)
        out(json.dumps(reply, ensure_ascii=False))
        return 0 if reply.get("ok") else 1

    from sim.counter import load_scenario

    steps = load_scenario(Path(args.scenario)) if args.scenario else None
    work = config.store.state_dir / "sim"
    work.mkdir(parents=True, exist_ok=True)
    loudspeaker = sim_role(args.role, config.device.roles) == "loudspeaker"
    if loudspeaker and args.camera:
        raise CliError("--camera: cameras watch a counter; simulate a counter (--role counter)")
    if loudspeaker:
        from sim.loudspeaker import format_record
    else:
        from sim.counter import format_record

    def printer(record: dict[str, Any]) -> None:
        out(json.dumps(record, ensure_ascii=False, default=str) if args.json else format_record(record))

    sim: Any
    if loudspeaker:
        from sim.loudspeaker import SimLoudspeaker

        # Its sound card is simulated in this process (paced like a DAC, recorded to speaker.wav).
        sim = SimLoudspeaker(
            config, work_dir=work, printer=printer, profile=args.profile, real_speaker=args.real_speaker
        )
    else:
        from sim.counter import SimCounter, speaker_alsa_config

        if not args.real_speaker and "ALSA_CONFIG_PATH" not in os.environ:
            # Before PortAudio loads: the speaker becomes a WAV file that shows what was said.
            os.environ["ALSA_CONFIG_PATH"] = str(speaker_alsa_config(work / "asound.conf", work / "speaker.wav"))
        sim = SimCounter(
            config, work_dir=work, printer=printer, profile=args.profile, camera=args.camera, scene=args.scene
        )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sim.start()
    try:
        sim.serve(control)
        sim.note(f"control socket {control} (JSON lines; edge sim --send '{{...}}')")
        if args.interval:
            threading.Thread(target=_test_events, args=(sim, args, stop), name="sim-test-events", daemon=True).start()
        ok = True
        if steps is not None:
            ok = sim.run_scenario(steps)
            if args.exit_after_scenario:
                stop.wait(args.settle)
                return 0 if ok else 1
        deadline_s = args.duration
        while not stop.is_set() and not sim.stopping:
            if stop.wait(min(deadline_s, 0.5) if deadline_s is not None else 0.5):
                break
            if deadline_s is not None:
                deadline_s -= 0.5
                if deadline_s <= 0:
                    break
        return 0 if ok else 1
    finally:
        sim.stop()


def sim_role(flag: str | None, roles: Sequence[str]) -> str:
    """The device ``edge sim`` runs: the flag's role, else the config's (a loudspeaker-only config runs
    a loudspeaker; anything else, including a device with both roles, a counter)."""
    if flag is not None:
        return flag
    return "loudspeaker" if "loudspeaker" in roles and "counter" not in roles else "counter"


def _test_events(sim: Any, args: argparse.Namespace, stop: threading.Event) -> None:
    """The technician's end-to-end `test` events, every ``--interval`` seconds (the demo uses them)."""
    n = 0
    while not stop.is_set() and not sim.stopping and (args.count is None or n < args.count):
        n += 1
        committed = sim.daemon.outbox.append("test", {"sim": True, "n": n, "note": "simulated device"})
        log.info("simulated test event %d committed as %s", n, committed.id)
        stop.wait(args.interval)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sim",
        help="run a simulated device (the daemon on a simulated panel, or relays and sound card)",
        description="Run the daemon of a device on simulated hardware chosen by the profile. A counter: a "
        "simulated rating panel (GPIO on gpiozero's MockFactory or a serial MCU on a pseudo-terminal), a "
        "speaker recorded to a WAV file, and for each [[camera]] (and with --camera) a simulated counter scene "
        "served on loopback (over HTTP by ffmpeg, or RTSP with --scene rtsp); it prints what the LEDs, buzzer "
        "and speaker did, and the presence, tamper and evidence events as committed. A loudspeaker: "
        "simulated relays (MockFactory pins or a serial relay board on a pseudo-terminal) and a simulated "
        "sound card recorded to STATE_DIR/sim/speaker.wav; it prints the relays as they switch and each "
        "broadcast event as committed. Drive it from a scenario file or over the control socket.",
    )
    add_common(p)
    p.add_argument(
        "--role",
        choices=("counter", "loudspeaker"),
        help="which device to simulate (default: the config's device.roles; a loudspeaker-only config "
        "runs a loudspeaker, anything else a counter)",
    )
    p.add_argument(
        "--profile",
        help="hardware profile: a counter's panel (default: [panel], else gpio-4btn-rpi) or a loudspeaker's "
        "relay board (default: [relays], else gpio-4ch-rpi)",
    )
    p.add_argument(
        "--camera",
        action="store_true",
        help="a counter: add a camera (sim-cam, profile sim-counter-640x480) on the simulated scene; every "
        "[[camera]] of the config watches a simulated scene anyway",
    )
    p.add_argument(
        "--scene",
        choices=("mjpeg", "mpegts", "rtsp"),
        default="mjpeg",
        help="how the simulated scene is served to the cameras: MJPEG over HTTP by ffmpeg (default), H.264 in "
        "MPEG-TS over HTTP by ffmpeg, or H.264 over RTSP by GStreamer's RTSP server, as most IP cameras",
    )
    p.add_argument("--scenario", metavar="FILE", help="YAML list of requests to run, e.g. - {cmd: press, button: 1}")
    p.add_argument("--exit-after-scenario", action="store_true", help="stop once the scenario has run")
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait after the scenario before exiting")
    p.add_argument("--control", metavar="PATH", help="control socket (default: STATE_DIR/sim.sock)")
    p.add_argument("--send", metavar="JSON", help="send one request to a running edge sim and print the reply")
    p.add_argument("--json", action="store_true", help="print what happened as JSON lines")
    p.add_argument(
        "--real-speaker", action="store_true", help="play on the real default audio device instead of a WAV file"
    )
    p.add_argument("--duration", type=float, default=None, help="exit after this many seconds")
    p.add_argument("--interval", type=float, default=None, help="also commit a `test` event every this many seconds")
    p.add_argument("--count", type=int, default=None, help="stop the test events after this many")
    p.set_defaults(func=cmd_sim, default_log="WARNING")
