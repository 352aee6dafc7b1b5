"""A loudspeaker on real parts, in this process: the broadcast service over a GPIO relay profile on
gpiozero's MockFactory pins, the real sounddevice → PortAudio → ALSA path into a simulated sound card
(sim/audio.py, paced in real time so a cut is a cut), a real media server on loopback for the files,
and the real outbox. Commands go through the registry exactly as the command channel calls them once a
signature has checked out.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from drivers.relay.profile import GpioRelayProfile, load_relay_profile
from drivers.resources import Resources
from edge.commands.registry import CommandRegistry
from edge.config import EdgeConfig, parse_config
from edge.exceptions import CommandRejected
from edge.services.broadcast.service import BroadcastService
from edge.store import Outbox
from sim.audio import SimSoundCard, write_tone
from sim.gpio_relays import SimGpioRelays
from sim.media_server import MediaServer

#: Generous: the machine running the suite may be loaded.
WAIT = 20.0
ZONES = ("zone-1", "zone-2", "zone-3")


def relay_profile(path: Path, *, warm_up_s: float = 0.3, idle_off_s: float = 1.0, max_on_s: float = 600) -> Path:
    """The shipped 4-channel GPIO relay profile with test timings, written to ``path``."""
    text = (Path(__file__).parent.parent / "firmware_config" / "relays" / "gpio-4ch-rpi.yaml").read_text()
    text = text.replace("warm_up_s: 2", f"warm_up_s: {warm_up_s}").replace(
        "idle_off_s: 10", f"idle_off_s: {idle_off_s}"
    )
    path.write_text(text.replace("max_on_s: 7200", f"max_on_s: {max_on_s}"), encoding="utf-8")
    return path


def loudspeaker_config(
    state_dir: Path, profile: Path, speaker: dict[str, Any] | None = None, **broadcast: Any
) -> EdgeConfig:
    broadcast.setdefault("sources", {"allow_http_hosts": ["127.0.0.1"]})
    broadcast.setdefault("resume_rewind_s", 0.0)
    return parse_config(
        {
            "device": {"id": "loa-01", "commune": "gia-ray", "roles": ["loudspeaker"]},
            "mqtt": {"broker": "mqtt://127.0.0.1:1"},  # no link here: the outbox is what counts
            "store": {"state_dir": str(state_dir)},
            "relays": {"profile": str(profile)},
            "speaker": speaker or {},
            "broadcast": broadcast,
        }
    )


class SettableClock:
    """A wall clock that runs at the real pace from a chosen time; :meth:`set` moves it."""

    def __init__(self, start: datetime) -> None:
        self.set(start)

    def set(self, when: datetime) -> None:
        self._base = when
        self._t0 = time.monotonic()

    def __call__(self) -> datetime:
        return self._base + timedelta(seconds=time.monotonic() - self._t0)


def stepped_tone(path: Path, freqs: list[float], step_s: float, *, rms_dbfs: float = -14.0, rate: int = 48000) -> Path:
    """A WAV made of ``step_s`` of each frequency in turn: where it is cut and resumed can be heard."""
    amplitude = np.sqrt(2.0) * 10.0 ** (rms_dbfs / 20.0)
    n = round(step_s * rate)
    t = np.arange(n) / rate
    parts = [amplitude * np.sin(2 * np.pi * f * t) for f in freqs]
    soundfile.write(str(path), np.concatenate(parts).astype(np.float32), rate, subtype="PCM_16")
    return path


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency in a stretch of samples."""
    x = samples.reshape(samples.shape[0], -1).mean(axis=1) * np.hanning(samples.shape[0])
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(x.shape[0], 1 / rate)[int(np.argmax(spectrum))])


@dataclass
class Loudspeaker:
    """A running broadcast service and what it did."""

    service: BroadcastService
    outbox: Outbox
    registry: CommandRegistry
    card: SimSoundCard
    media: MediaServer
    relays: SimGpioRelays
    clock: SettableClock
    tmp: Path
    relay_log: list[tuple[float, str, bool]] = field(default_factory=list)
    notes: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def observe(self, kind: str, data: Any) -> None:
        with self.cond:
            now = time.monotonic()
            if kind == "relay":
                self.relay_log.append((now, data["relay"], data["closed"]))
            self.notes.append((now, kind, dict(data)))
            self.cond.notify_all()

    # -- commands --------------------------------------------------------------------------------

    def command(self, name: str, args: dict[str, Any]) -> Any:
        """Run a command as the command channel does once the signature and claims have checked out."""
        reg = self.registry.get(name)
        return reg.handler(reg.parse_args(args), None)  # type: ignore[arg-type]

    def rejected(self, name: str, args: dict[str, Any]) -> CommandRejected:
        """The rejection of a command whose arguments do not fit (asserts that it is rejected)."""
        with pytest.raises(CommandRejected) as caught:
            self.command(name, args)
        return caught.value

    def play(self, broadcast_id: str, source: dict[str, Any], priority: str = "normal", **args: Any) -> Any:
        args.setdefault("zones", ["all"])
        return self.command(
            "broadcast.play", {"broadcast_id": broadcast_id, "priority": priority, "source": source, **args}
        )

    def serve(self, path: Path, name: str | None = None) -> dict[str, Any]:
        """Put a file on the media server; the source of a broadcast.play that fetches it."""
        data = path.read_bytes()
        url = self.media.add_file(f"/files/{name or path.name}", data)
        return {"url": url, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    def tone_source(self, seconds: float = 1.0, hz: float = 1000.0, *, name: str | None = None) -> dict[str, Any]:
        path = self.tmp / (name or f"tone-{hz:g}-{seconds:g}.wav")
        return self.serve(write_tone(path, hz=hz, seconds=seconds, rms_dbfs=-12.0))

    # -- what happened ---------------------------------------------------------------------------

    def events(self, broadcast_id: str | None = None) -> list[dict[str, Any]]:
        """``broadcast`` events on disk, oldest first."""
        found = [e.data for e in reversed(self.outbox.list_events(type="broadcast", limit=10_000))]
        return [d for d in found if broadcast_id is None or d["broadcast_id"] == broadcast_id]

    def states(self, broadcast_id: str) -> list[str]:
        return [d["state"] for d in self.events(broadcast_id)]

    def wait_state(self, broadcast_id: str, state: str, count: int = 1, timeout: float = WAIT) -> bool:
        return self.wait_until(lambda: self.states(broadcast_id).count(state) >= count, timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        """Wait for ``predicate`` (evaluated without holding the notes' lock: it may ask the service)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self.cond:
                self.cond.wait(min(left, 0.1))
        return True

    def wait_idle(self, timeout: float = WAIT) -> bool:
        """Nothing scheduled or on the air, and the card has finished playing."""
        return self.wait_until(
            lambda: (
                self.service.scheduler.on_air() is None
                and not self.service.scheduler.items()
                and all(i.ended_at is not None for i in self.card.items)
            ),
            timeout,
        )

    def closed_relays(self) -> list[str]:
        return [name for name, closed in self.relays.states().items() if closed]

    def played(self) -> list[tuple[float, float, float]]:
        """Each stream the card played: ``(seconds, Hz at its start, Hz at its end)``."""
        out = []
        rate = self.card.rate
        for item in self.card.items:
            samples = self.card.samples(item)
            window = min(len(samples), int(0.08 * rate))
            if window < int(0.02 * rate):
                out.append((item.seconds, 0.0, 0.0))
                continue
            out.append(
                (item.seconds, dominant_hz(samples[:window], rate), dominant_hz(samples[len(samples) - window :], rate))
            )
        return out


@pytest.fixture
def card(tmp_path: Path) -> Iterator[SimSoundCard]:
    """The simulated sound card, made this process's default ALSA device."""
    with SimSoundCard(tmp_path / "card") as sim:
        sim.activate()
        yield sim


@pytest.fixture
def media() -> Iterator[MediaServer]:
    with MediaServer() as server:
        yield server


@pytest.fixture
def make_loudspeaker(tmp_path: Path, card: SimSoundCard, media: MediaServer) -> Iterator[Callable[..., Loudspeaker]]:
    from gpiozero.pins.mock import MockFactory

    made: list[Loudspeaker] = []

    def make(
        *,
        warm_up_s: float = 0.3,
        idle_off_s: float = 1.0,
        max_on_s: float = 600,
        clock: SettableClock | None = None,
        state_dir: Path | None = None,
        factory: Any = None,
        speaker: dict[str, Any] | None = None,
        **broadcast: Any,
    ) -> Loudspeaker:
        profile = relay_profile(tmp_path / "relays.yaml", warm_up_s=warm_up_s, idle_off_s=idle_off_s, max_on_s=max_on_s)
        config = loudspeaker_config(state_dir or tmp_path / "state", profile, speaker, **broadcast)
        pins = factory or MockFactory()
        gpio_profile = load_relay_profile(profile)
        assert isinstance(gpio_profile, GpioRelayProfile)
        sim = SimGpioRelays(gpio_profile, pins)
        outbox = Outbox(config.db_path)
        registry = CommandRegistry()
        wall = clock or SettableClock(datetime.now().astimezone())
        service = BroadcastService(config, outbox, registry, Resources(), clock=wall, pin_factory=pins)
        rig = Loudspeaker(service, outbox, registry, card, media, sim, wall, tmp_path)
        service.add_observer(rig.observe)
        service.start()
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.service.stop()
        rig.outbox.close()
