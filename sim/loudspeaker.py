"""A simulated loudspeaker: the real daemon and broadcast service on simulated hardware (``edge sim --role
loudspeaker``).

Only the hardware is simulated, and it is chosen by the configuration's relay profile, as on a real
loudspeaker: a GPIO profile runs the real GPIO relay driver on gpiozero's ``MockFactory`` (installed as
gpiozero's default pin factory, so the daemon opens it exactly as it opens lgpio on a Pi); a serial
profile (LCUS, Modbus RTU) runs the real serial driver against :mod:`sim.serial_relay`'s board on a
pseudo-terminal (behind a link that moves on replug, like ``/dev/serial/by-id``). The sound goes through
the real sounddevice → PortAudio → ALSA path into ALSA's ``file`` plugin: :class:`sim.audio.SimSoundCard`
takes the samples at the card's pace, as a DAC does (so an emergency really cuts an announcement that is
still playing), and records everything into ``STATE_DIR/sim/speaker.wav``.

Nothing plays without a signed command, in the simulator too. Commands come from the commune server
through the broker as on a real device; for training, the simulator can also sign commands itself, with a
key it generates (``STATE_DIR/sim/trainer.key``) and that only the simulated device trusts (kid
``edge-sim-trainer``, added to ``[commands] trusted_keys`` in memory, never written to the config file).
Such a command is handed to the daemon's command channel as the MQTT link hands it a message, so it is
verified, journaled, acknowledged and reported like any other.

A person or a test drives it with one vocabulary of JSON requests, from a scenario file or over a Unix
socket (one JSON object per line, one JSON reply per line)::

    {"cmd": "play", "text": "Thông báo ...", "priority": "normal"}      # signed broadcast.play, spoken
    {"cmd": "play", "file": "/tmp/notice.mp3", "zones": ["zone-1"]}    # served on loopback, by sha256
    {"cmd": "play", "tone": {"hz": 1000, "seconds": 3}, "priority": "emergency"}
    {"cmd": "play", "source": {"url": "...", "sha256": "...", "bytes": 123}, "broadcast_id": "tb-1"}
    {"cmd": "cancel", "broadcast_id": "tb-1"}     {"cmd": "stop_all"}     {"cmd": "relay_test", "seconds": 1}
    {"cmd": "command", "name": "device.selftest", "args": {}}            # any command, signed
    {"cmd": "serve", "file": "/tmp/notice.mp3"}     # only serve it: the {url, sha256, bytes} to send yourself
    {"cmd": "wait", "s": 1.5}     {"cmd": "wait", "broadcast_id": "tb-1", "state": "finished", "timeout": 60}
    {"cmd": "status"}   {"cmd": "relays"}   {"cmd": "played"}   {"cmd": "outputs"}   {"cmd": "stop"}
    {"cmd": "unplug"}   {"cmd": "replug"}   {"cmd": "silence"}   {"cmd": "answer"}   # serial boards

What the relays did (seen on the pins or the board, not as the driver believes) and every ``broadcast``
event as committed are printed as they happen, as text or JSON lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from drivers.relay.profile import GpioRelayProfile, RelayProfile, load_relay_profile
from edge import keys
from edge.commands.claims import make_claims
from edge.commands.jws import sign
from edge.config import EdgeConfig, parse_config
from edge.messages import TERMINAL_STATES
from sim.control import Printer, SimControl, SimError
from sim.counter import watched_mock_factory, wav_seconds

#: The relay board when the configuration has no [relays] section.
DEFAULT_RELAYS = "gpio-4ch-rpi"
#: The key id under which the simulated device trusts the simulator's own signing key.
TRAINER_KID = "edge-sim-trainer"
#: How long a training command may live (well inside any max_life_s).
TRAINER_LIFE_S = 120
#: How long the simulator waits for a command's final outcome.
COMMAND_WAIT_S = 30.0
#: broadcast.play arguments a ``play`` request passes on as they are (DESIGN.md §8).
PLAY_ARGS = (
    "broadcast_id",
    "priority",
    "zones",
    "start_at",
    "not_after",
    "times",
    "days",
    "until",
    "repeat",
    "gap_s",
    "volume_db",
    "on_preempt",
)


def trainer_key(path: Path) -> Any:
    """The simulator's own command-signing key at ``path``, made on first use."""
    if path.exists():
        return keys.load_signing_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return keys.generate_signing_key(path)


class SimLoudspeaker(SimControl):
    """The daemon of a loudspeaker on simulated relays and a simulated sound card. ``start()``, then ``stop()``.

    ``profile`` overrides the configuration's relay profile; ``real_speaker`` plays on the machine's
    default audio device instead of the simulated card.
    """

    # A file to serve that cannot be read fails its request, not the simulator.
    request_errors = (*SimControl.request_errors, OSError)

    def __init__(
        self,
        config: EdgeConfig,
        *,
        work_dir: Path,
        printer: Printer,
        profile: str | None = None,
        real_speaker: bool = False,
    ) -> None:
        self.work_dir = work_dir
        self.speaker_wav = work_dir / "speaker.wav"
        self.real_speaker = real_speaker
        self._base_config = config
        self._profile_name = profile or (config.relays.profile if config.relays is not None else DEFAULT_RELAYS)
        self.profile: RelayProfile = load_relay_profile(self._profile_name)
        self.config: EdgeConfig = config
        super().__init__(printer)
        self._events = threading.Condition()
        self._broadcasts: list[dict[str, Any]] = []
        self._key: Any = None
        self._media: Any = None
        self._media_files: dict[str, dict[str, Any]] = {}
        self._played_ids = 0
        self.card: Any = None
        self.board: Any = None
        self.factory: Any = None
        self._relay_pins: dict[int, tuple[str, bool]] = {}
        self._board_seen: dict[str, bool] = {}
        self.daemon: Any = None
        self.service: Any = None
        self._watch: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> SimLoudspeaker:
        try:
            return self._start()
        except BaseException:
            self.stop()  # the card's FIFOs, the media server and the board must not outlive a failed start
            raise

    def _start(self) -> SimLoudspeaker:
        from edge.daemon import Daemon
        from edge.services.broadcast.service import BroadcastService
        from sim.media_server import MediaServer

        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._key = trainer_key(self.work_dir / "trainer.key")
        self._media = MediaServer()
        port: str | None = None
        if isinstance(self.profile, GpioRelayProfile):
            from gpiozero import Device

            self.factory = watched_mock_factory(self._on_gpio_output)
            self._relay_pins = {
                spec.pin.number: (name, self.profile.relay_active_high(spec)) for name, _, spec in self.profile.relays()
            }
            Device.pin_factory = self.factory  # gpiozero's own mechanism: the daemon opens the pins as on a Pi
        else:
            from sim.serial_relay import simulated_board

            self.board = simulated_board(self.profile, link=self.work_dir / "relay-tty").start()
            port = self.board.path
        if not self.real_speaker:
            self._start_card()
        self.config = self._sim_config(port)
        self.daemon = Daemon(self.config)
        services = [s for s in self.daemon.services if isinstance(s, BroadcastService)]
        self.service = services[0]
        self.service.add_observer(self._on_service)
        self.daemon.start()
        if self.board is not None:
            self._watch = threading.Thread(target=self._watch_board, name="sim-watch", daemon=True)
            self._watch.start()
        if isinstance(self.profile, GpioRelayProfile):
            kind = "GPIO on gpiozero MockFactory"
        else:
            kind = f"{self.profile.kind} board on {self.board.pty_path} ({self.board.path})"
        self._emit(
            "sim",
            {
                "text": f"loudspeaker {self.config.device.id} with relays {self.profile.model} ({kind}), "
                f"zones {', '.join(self.profile.zone_names)}, warm-up {self.profile.warm_up_s:g} s"
            },
        )
        self._emit(
            "sim",
            {
                "text": "speaker: the default audio device (--real-speaker)"
                if self.card is None
                else f"speaker: simulated sound card recording to {self.speaker_wav}"
            },
        )
        self._emit(
            "sim",
            {"text": f"training commands are signed with the simulator's own key {TRAINER_KID} ({self._key_path})"},
        )
        return self

    @property
    def _key_path(self) -> Path:
        return self.work_dir / "trainer.key"

    def _start_card(self) -> None:
        from sim.audio import SimSoundCard

        self.card = SimSoundCard(self.work_dir / "card").start()
        # Before the daemon opens its player: PortAudio must see the card as the default device.
        self.card.activate()
        with contextlib.suppress(FileNotFoundError):
            self.speaker_wav.unlink()
        self.speaker_wav.symlink_to(self.card.wav)

    def _sim_config(self, port: str | None) -> EdgeConfig:
        """The configuration the simulated device runs: the loudspeaker role on the chosen relay board,
        trusting the simulator's key and fetching from its loopback media server."""
        data = self._base_config.model_dump(mode="json")
        data["device"]["roles"] = ["loudspeaker"]
        data["panel"] = None
        relays: dict[str, Any] = {"profile": self._profile_name, "port": port}
        unit = (data.get("relays") or {}).get("modbus_unit")
        if unit is not None and port is not None:
            relays["modbus_unit"] = unit
        data["relays"] = relays
        trusted = dict(data["commands"]["trusted_keys"])
        trusted[TRAINER_KID] = keys.public_key_b64(self._key)
        data["commands"]["trusted_keys"] = trusted
        sources = data["broadcast"]["sources"]
        media = f"{self._media.host}:{self._media.port}"
        sources["allow_http_hosts"] = [*sources.get("allow_http_hosts", []), media]
        return parse_config(data, "edge sim")

    def _shut_down(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()  # the broadcast service opens every relay on its way out
        if self._watch is not None:
            self._watch.join(timeout=2)
        if self.board is not None:
            self._print_board_changes()
            self.board.close()
        if self.card is not None:
            self.card.close()
        if self._media is not None:
            self._media.close()

    # -- requests ----------------------------------------------------------------------------------

    def _handle(self, req: dict[str, Any]) -> dict[str, Any] | None:
        cmd = req.pop("cmd", None)
        if cmd == "play":
            return self.signed("broadcast.play", self._play_args(req))
        if cmd == "cancel":
            return self.signed("broadcast.cancel", {"broadcast_id": req["broadcast_id"]})
        if cmd == "stop_all":
            return self.signed("broadcast.stop_all", {})
        if cmd == "relay_test":
            return self.signed("relay.test", {k: v for k, v in req.items() if k in ("zones", "seconds")})
        if cmd == "command":
            return self.signed(str(req["name"]), dict(req.get("args") or {}))
        if cmd == "serve":
            return {"source": self.serve_file(Path(str(req["file"])).expanduser())}
        if cmd == "wait":
            if "broadcast_id" in req:
                return self._wait_broadcast(
                    str(req["broadcast_id"]), str(req.get("state", "finished")), float(req.get("timeout", 60))
                )
            self._stopped.wait(float(req.get("s", 1.0)))
            return None
        if cmd == "status":
            return self.status()
        if cmd == "relays":
            return {"relays": self.relay_states()}
        if cmd == "played":
            return self.played()
        if cmd == "outputs":
            return self._outputs_reply(req)
        if cmd in ("unplug", "replug", "silence", "answer"):
            return self._board_trouble(cmd)
        if cmd == "stop":
            self._stop_soon()
            return None
        raise SimError(f"unknown cmd {cmd!r}")

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "broadcast": self.service.status(),
            "relays": self.relay_states(),
            "speaker_wav": None if self.card is None else str(self.speaker_wav),
            "trainer_kid": TRAINER_KID,
            "link": "up" if self.daemon.link.connected.is_set() else "down",
        }
        if self.board is not None:
            out["board"] = {"pty": self.board.pty_path, "path": self.board.path, "switches": len(self.board.switch_log)}
        return out

    def relay_states(self) -> dict[str, bool]:
        """Every relay as the hardware has it now (closed: True): the pins' levels or the board's relays."""
        if self.board is not None:
            return dict(self.board.named_states(self.profile))
        from sim.gpio_relays import SimGpioRelays

        assert isinstance(self.profile, GpioRelayProfile)
        return SimGpioRelays(self.profile, self.factory).states()

    def played(self) -> dict[str, Any]:
        """The proof of play committed so far, and what the simulated card heard."""
        events = self.daemon.outbox.list_events(type="broadcast", limit=10_000)
        out: dict[str, Any] = {"broadcasts": [{"seq": e.seq, "id": e.id, **e.data} for e in reversed(events)]}
        if self.card is not None:
            out["card"] = [
                {
                    "seconds": round(item.seconds, 3),
                    "rms_dbfs": None if item.rms_dbfs is None else round(item.rms_dbfs, 2),
                    "playing": item.ended_at is None,
                }
                for item in self.card.items
            ]
            out["speaker_wav"] = str(self.speaker_wav)
            out["recorded_s"] = wav_seconds(self.card.wav)
        return out

    # -- signed commands -----------------------------------------------------------------------------

    def signed(self, name: str, args: Mapping[str, Any], timeout: float = COMMAND_WAIT_S) -> dict[str, Any]:
        """Sign a command with the simulator's key, hand it to the daemon's command channel, and wait
        for its outcome. A rejected or failed command is a :exc:`SimError` with its reason."""
        claims = make_claims(
            device=self.config.device.id,
            commune=self.config.device.commune,
            name=name,
            args=args,
            life_s=TRAINER_LIFE_S,
        )
        token = sign(claims, self._key, TRAINER_KID)
        cmd_id = str(claims["cmd_id"])
        self._emit("command", {"name": name, "cmd_id": cmd_id, "state": "signed", "args": dict(args)})
        # Exactly what the MQTT link does with a message on cmd/<name>: the channel verifies the
        # signature and the claims, journals the command and runs it; the acks go to the server.
        self.daemon.channel.deliver(self.daemon.topics.cmd(name), token.encode())
        deadline = time.monotonic() + timeout
        outcome = self.daemon.journal.get(cmd_id)
        while outcome is None or outcome.state not in TERMINAL_STATES:
            if time.monotonic() > deadline or self.stopping:
                raise SimError(f"{name} {cmd_id} has no outcome after {timeout:.0f} s")
            time.sleep(0.02)
            outcome = self.daemon.journal.get(cmd_id)
        record = {"name": name, "cmd_id": cmd_id, "state": outcome.state}
        if outcome.reason:
            record["reason"] = outcome.reason
        self._emit("command", {**record, "result": outcome.result})
        if outcome.state != "succeeded":
            detail = outcome.result.get("detail") if isinstance(outcome.result, dict) else None
            raise SimError(f"{name} {outcome.state}: {outcome.reason}" + (f": {detail}" if detail else ""))
        return {"cmd_id": cmd_id, "state": outcome.state, "result": outcome.result}

    def _play_args(self, req: dict[str, Any]) -> dict[str, Any]:
        """broadcast.play arguments from a ``play`` request (see the module docstring)."""
        sources = [k for k in ("text", "file", "tone", "source") if k in req]
        if len(sources) != 1:
            raise SimError("play takes one of text, file, tone or source")
        kind = sources[0]
        if kind == "text":
            source: dict[str, Any] = {"text": str(req["text"])}
            if req.get("voice"):
                source["voice"] = str(req["voice"])
        elif kind == "file":
            source = self.serve_file(Path(str(req["file"])).expanduser())
        elif kind == "tone":
            tone = dict(req["tone"]) if isinstance(req["tone"], dict) else {"seconds": float(req["tone"])}
            source = self.serve_tone(float(tone.get("hz", 1000.0)), float(tone.get("seconds", 3.0)))
        else:
            source = dict(req["source"])
        args: dict[str, Any] = {k: req[k] for k in PLAY_ARGS if k in req}
        if "broadcast_id" not in args:
            with self._lock:
                self._played_ids += 1
                args["broadcast_id"] = f"sim-{datetime.now():%H%M%S}-{self._played_ids}"
        args.setdefault("priority", "normal")
        args.setdefault("zones", ["all"])
        args["source"] = source
        return args

    def serve_file(self, path: Path) -> dict[str, Any]:
        """Serve a local audio file on the simulator's loopback media server; its broadcast.play source."""
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._media_files.get(sha)
        if known is None:
            url = self._media.add_file(f"/files/{sha[:16]}-{path.name}", data)
            known = {"url": url, "sha256": sha, "bytes": len(data)}
            with self._lock:
                self._media_files[sha] = known
        return dict(known)

    def serve_tone(self, hz: float, seconds: float) -> dict[str, Any]:
        """A test tone written as WAV and served (the simulator's stand-in for a recorded notice)."""
        from sim.audio import write_tone

        path = self.work_dir / "media" / f"tone-{hz:g}hz-{seconds:g}s.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            write_tone(path, hz=hz, seconds=seconds, rms_dbfs=-12.0)
        return self.serve_file(path)

    def _wait_broadcast(self, broadcast_id: str, state: str, timeout: float) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next(
                (e for e in self._broadcasts if e["broadcast_id"] == broadcast_id and e["state"] == state), None
            )

        with self._events:
            if not self._events.wait_for(lambda: found() is not None or self.stopping, timeout) or self.stopping:
                raise SimError(f"broadcast {broadcast_id} was not {state} within {timeout:g} s")
            return {"event": found()}

    # -- the serial board's cable --------------------------------------------------------------------

    def _board_trouble(self, cmd: str) -> dict[str, Any] | None:
        if self.board is None:
            raise SimError("GPIO relays have no cable to pull; use a serial relay profile (lcus-4ch, modbus-8ch)")
        if cmd == "unplug":
            self.board.unplug()
            self._emit("cable", {"state": "unplugged"})
            return None
        if cmd == "replug":
            path = self.board.replug()
            self._emit("cable", {"state": "replugged", "pty": path})
            return {"pty": path}
        self.board.silence(cmd == "silence")
        self._emit("board", {"state": "not answering" if cmd == "silence" else "answering"})
        return None

    # -- what the hardware did ---------------------------------------------------------------------

    def _on_gpio_output(self, bcm: int, level: bool) -> None:
        found = self._relay_pins.get(bcm)
        if found is not None:
            name, active_high = found
            self._emit("relay", {"relay": name, "state": "on" if level == active_high else "off", "gpio": bcm})

    def _watch_board(self) -> None:
        """The simulated board records each switch it made; show the changes as they happen."""
        while not self.stopping:
            self.board.wait_for(lambda b: b.named_states(self.profile) != self._board_seen, timeout=0.5)
            self._print_board_changes()

    def _print_board_changes(self) -> None:
        with self._lock:
            states = self.board.named_states(self.profile)
            changed = [(name, on) for name, on in states.items() if self._board_seen.get(name) != on]
            self._board_seen = dict(states)
        for name, on in changed:
            self._emit("relay", {"relay": name, "state": "on" if on else "off"})

    def _on_service(self, kind: str, data: Mapping[str, Any]) -> None:
        if kind == "broadcast":
            with self._events:
                self._broadcasts.append(dict(data))
                self._events.notify_all()
            self._emit("broadcast", dict(data))
        elif kind == "test":
            self._emit("test", dict(data))


def _db(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} dBFS"


def _describe_source(source: Mapping[str, Any]) -> str:
    kind = str(source.get("kind", "?"))
    if kind == "text":
        return f"text ({source.get('chars')} characters)"
    if kind == "stream":
        return f"stream {source.get('url')}"
    sha = source.get("sha256")
    return f"file {str(sha)[:12]}…" if sha else "file"


def format_broadcast(r: Mapping[str, Any]) -> str:
    """One ``broadcast`` event as a person reads it."""
    state = str(r.get("state"))
    head = f"{r.get('broadcast_id')} {state}"
    zones = " ".join(r.get("zones") or []) or "-"
    if state == "scheduled":
        return f"{head}: {r.get('priority')}, {_describe_source(r.get('source') or {})}, zones {zones}"
    if state in ("started", "resumed"):
        at = f" from {r['position_s']:g} s" if state == "resumed" and r.get("position_s") is not None else ""
        return f"{head}{at}: {r.get('priority')} on {zones}, volume {r.get('volume_db', 0):g} dB"
    measured = ""
    if r.get("duration_s") is not None:
        measured = f", {r['duration_s']:.2f} s played at {_db(r.get('level_dbfs'))}"
        if r.get("heard_dbfs") is not None:
            measured += f", heard {_db(r.get('heard_dbfs'))}"
    if state == "preempted":
        return f"{head} by {r.get('by', '?')} ({r.get('by_priority', '?')}){measured}"
    if state == "finished":
        sha = f", sha256 {str(r['sha256'])[:12]}…" if r.get("sha256") else ""
        return f"{head}{measured}{sha}"
    reason = f" ({r['reason']})" if r.get("reason") else ""
    detail = f": {r['detail']}" if r.get("detail") else ""
    return f"{head}{reason}{measured}{detail}"


def format_record(record: dict[str, Any]) -> str:
    """One output record as a line for a person."""
    r = dict(record)
    t = str(r.pop("t", ""))[11:23]
    what = str(r.pop("what", ""))
    if what == "relay":
        text = f"{r['relay']} {r['state']}"
    elif what == "broadcast":
        text = format_broadcast(r)
    elif what == "command":
        text = f"{r['name']} {str(r['cmd_id'])[:8]}… {r['state']}"
        if r.get("reason"):
            text += f" ({r['reason']})"
        if r["state"] == "signed":
            text += f" with the simulator's key {TRAINER_KID}"
    elif what == "test":
        zones = ", ".join(f"{z.get('zone')} {z.get('state')} {_db(z.get('level_dbfs'))}" for z in r.get("zones") or [])
        text = f"relay.test {r.get('state')}" + (f" ({r['reason']})" if r.get("reason") else "") + f": {zones}"
    elif what == "sim":
        text = str(r["text"])
    else:
        text = " ".join(f"{k}={v}" for k, v in r.items())
    return f"{t} {what:<9} {text}"
