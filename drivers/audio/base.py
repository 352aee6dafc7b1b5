"""The audio player interface and the clip it plays."""

from __future__ import annotations

import threading
import wave
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from edge.exceptions import EdgeError, HardwareError

if TYPE_CHECKING:
    import numpy as np


class AudioUnavailable(HardwareError):
    """No way to play sound: PortAudio is missing, or the output device is not there."""


class BadAudio(EdgeError, ValueError):
    """A file that is not audio this player can play (16-bit PCM WAV)."""


@dataclass(frozen=True)
class Clip:
    """Sound to play: 16-bit samples shaped ``(frames, channels)`` at ``rate`` frames per second."""

    samples: np.ndarray
    rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate

    @classmethod
    def from_wav(cls, path: str | Path) -> Clip:
        """Read a 16-bit PCM WAV file (what espeak-ng and sox write). Raises :exc:`BadAudio`."""
        import numpy as np

        try:
            with wave.open(str(path), "rb") as w:
                if w.getsampwidth() != 2:
                    raise BadAudio(f"{path}: {8 * w.getsampwidth()}-bit samples; only 16-bit PCM is played")
                channels, rate = w.getnchannels(), w.getframerate()
                raw = w.readframes(w.getnframes())
        except (wave.Error, EOFError) as exc:
            raise BadAudio(f"{path}: not a PCM WAV file: {exc}") from None
        samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)
        return cls(samples, rate)

    @classmethod
    def tone(cls, hz: float = 440.0, seconds: float = 1.0, *, rate: int = 16000, level: float = 0.5) -> Clip:
        """A sine tone (for ``edge test speaker``)."""
        import numpy as np

        t = np.arange(int(seconds * rate)) / rate
        samples = (level * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").reshape(-1, 1)
        return cls(samples, rate)


@dataclass(frozen=True)
class PlayResult:
    """What :meth:`AudioPlayer.play` did."""

    frames: int
    """Frames handed to the device."""
    rate: int
    stopped: bool
    """True if :meth:`AudioPlayer.stop` cut the clip short."""

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


class AudioPlayer(ABC):
    """Plays clips on one output device, one at a time. A context manager; ``close()`` is idempotent."""

    def __init__(self) -> None:
        self._play_lock = threading.Lock()  # one clip at a time on one device
        self._stop = threading.Event()
        self._closed = False

    @property
    @abstractmethod
    def device_name(self) -> str:
        """The output device's name, as the audio system calls it."""

    def play(self, clip: Clip) -> PlayResult:
        """Play ``clip`` to the end (or until :meth:`stop`); blocks meanwhile. Raises :exc:`AudioUnavailable`."""
        if self._closed:
            raise AudioUnavailable("the audio player is closed")
        with self._play_lock:
            self._stop.clear()
            return self._play(clip)

    def stop(self) -> None:
        """Cut the clip being played short (from another thread); harmless when idle."""
        self._stop.set()

    def close(self) -> None:
        """Stop playing and release the device. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        with self._play_lock:
            self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @abstractmethod
    def _play(self, clip: Clip) -> PlayResult:
        """Play under the play lock, checking ``self._stop`` between blocks."""

    @abstractmethod
    def _close(self) -> None:
        """Release the device."""
