"""The audio interfaces: a :class:`PcmSource` of samples, an :class:`AudioPlayer` that plays one, and levels.

Levels are in dBFS as ``20·log10(RMS)`` of float samples in [-1, 1]: a full-scale square wave is
0 dBFS and a full-scale sine −3 dBFS. Digital silence reads :data:`SILENCE_DBFS` (a number, not
−∞, because levels go into JSON events).
"""

from __future__ import annotations

import math
import threading
import wave
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from edge.exceptions import EdgeError, HardwareError

if TYPE_CHECKING:
    import numpy as np

#: The level reported for digital silence: below anything 16- or 24-bit audio can carry.
SILENCE_DBFS = -120.0


class AudioUnavailable(HardwareError):
    """No way to play or capture sound: PortAudio is missing, or the device is not there or failed."""


class BadAudio(EdgeError, ValueError):
    """A file (or stream) that cannot be played: not audio, an unsupported format, empty, truncated or corrupt."""


@runtime_checkable
class PcmSource(Protocol):
    """Float samples in blocks, from a file, a stream or memory. Read by one thread at a time."""

    # Read-only in the protocol, so plain attributes and properties both satisfy it.
    @property
    def rate(self) -> int:
        """Frames per second."""
        ...

    @property
    def channels(self) -> int: ...

    @property
    def duration_s(self) -> float | None:
        """Length from the current start; None for a live stream."""
        ...

    def read(self, frames: int) -> np.ndarray:
        """Up to ``frames`` frames as float32 shaped ``(n, channels)`` in [-1, 1].

        ``n < frames`` only at the end; ``n == 0``: the source has ended. Raises :exc:`BadAudio` if the
        rest cannot be decoded.
        """
        ...

    def close(self) -> None:
        """Release the file or connection. Idempotent."""
        ...


def db_to_gain(gain_db: float) -> float:
    """The linear factor of a gain in dB (−6 dB → 0.501). Raises ValueError for NaN or ±∞."""
    if not math.isfinite(gain_db):
        raise ValueError(f"gain must be a finite number of dB, got {gain_db!r}")
    return float(10.0 ** (gain_db / 20.0))


def level_dbfs(mean_square: float) -> float:
    """dBFS of a mean square (``10·log10``), :data:`SILENCE_DBFS` at or below the floor."""
    if mean_square <= 10.0 ** (SILENCE_DBFS / 10.0):
        return SILENCE_DBFS
    return round(10.0 * math.log10(mean_square), 2)


class SignalLevel:
    """RMS and peak of everything added so far, kept as a running sum of squares (no samples kept)."""

    def __init__(self) -> None:
        self.frames = 0
        self._samples = 0
        self._sum_sq = 0.0
        self._peak = 0.0

    def add(self, block: np.ndarray) -> None:
        """Count a ``(frames, channels)`` block (any channel count; all channels are averaged)."""
        if block.size == 0:
            return
        import numpy as np

        as64 = block.astype(np.float64, copy=False)
        self._sum_sq += float(np.dot(as64.ravel(), as64.ravel()))
        self._peak = max(self._peak, float(np.max(np.abs(as64))))
        self._samples += int(block.size)
        self.frames += int(block.shape[0])

    @property
    def rms_dbfs(self) -> float | None:
        """RMS level in dBFS; None if nothing was added."""
        return None if self._samples == 0 else level_dbfs(self._sum_sq / self._samples)

    @property
    def peak_dbfs(self) -> float | None:
        """Largest absolute sample in dBFS; None if nothing was added."""
        return None if self._samples == 0 else level_dbfs(self._peak * self._peak)


class ArraySource:
    """A :class:`PcmSource` over samples in memory: int16 (scaled by 1/32768) or float in [-1, 1]."""

    def __init__(self, samples: np.ndarray, rate: int) -> None:
        import numpy as np

        if samples.ndim == 1:
            samples = samples.reshape(-1, 1)
        if samples.dtype == np.int16:
            self._samples = samples
            self._scale = 1.0 / 32768.0
        else:
            self._samples = samples.astype(np.float32, copy=False)
            self._scale = 1.0
        self.rate = rate
        self.channels = int(samples.shape[1])
        self._pos = 0

    @property
    def duration_s(self) -> float:
        return (self._samples.shape[0] - self._pos) / self.rate

    def read(self, frames: int) -> np.ndarray:
        import numpy as np

        block = self._samples[self._pos : self._pos + frames]
        self._pos += int(block.shape[0])
        if self._scale != 1.0:
            return block.astype(np.float32) * np.float32(self._scale)
        return block

    def close(self) -> None:
        self._pos = int(self._samples.shape[0])


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

    def source(self) -> ArraySource:
        """The clip as a :class:`PcmSource`, from its start."""
        return ArraySource(self.samples, self.rate)

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
        """A sine tone of peak amplitude ``level`` (for ``edge test speaker``)."""
        import numpy as np

        t = np.arange(int(seconds * rate)) / rate
        samples = (level * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").reshape(-1, 1)
        return cls(samples, rate)


@dataclass(frozen=True)
class PlayResult:
    """What :meth:`AudioPlayer.play_source` did, measured from the samples that went to the device."""

    frames: int
    """Frames handed to the device."""
    rate: int
    stopped: bool
    """True if :meth:`AudioPlayer.stop` cut the source short."""
    rms_dbfs: float | None = None
    """RMS level of the samples written, after gain; None if none were written."""
    peak_dbfs: float | None = None
    """Largest absolute sample written, after gain; None if none were written."""

    @property
    def seconds(self) -> float:
        """How long the written samples last."""
        return self.frames / self.rate


class AudioPlayer(ABC):
    """Plays sources on one output device, one at a time. A context manager; ``close()`` is idempotent."""

    def __init__(self) -> None:
        self._play_lock = threading.Lock()  # one source at a time on one device
        self._stop = threading.Event()
        self._closed = False

    @property
    @abstractmethod
    def device_name(self) -> str:
        """The output device's name, as the audio system calls it."""

    def play_source(
        self, src: PcmSource, *, gain_db: float = 0.0, on_start: Callable[[], None] | None = None
    ) -> PlayResult:
        """Play ``src`` to its end or until :meth:`stop`; blocks meanwhile, so call it from a worker thread.

        ``gain_db`` is applied in software (samples clipped to [-1, 1]); a volume cap is the caller's
        arithmetic: ``gain_db = min(requested, caps)``. ``on_start()`` is called right after the first
        block was written to the device. The caller keeps ownership of ``src`` (it is not closed), so
        an interrupted item can be resumed from ``result.frames``. Raises :exc:`AudioUnavailable` if the
        device fails, :exc:`BadAudio` if the source cannot be decoded further, ValueError for a gain that
        is not a finite number.
        """
        gain = db_to_gain(gain_db)
        if self._closed:
            raise AudioUnavailable("the audio player is closed")
        with self._play_lock:
            self._stop.clear()
            return self._play_source(src, gain, on_start)

    def play(self, clip: Clip) -> PlayResult:
        """Play ``clip`` to the end (or until :meth:`stop`); blocks meanwhile. Raises :exc:`AudioUnavailable`."""
        return self.play_source(clip.source())

    def stop(self) -> None:
        """Cut the source being played short (from any thread); harmless when idle.

        Only what is playing now is cut: a :meth:`play_source` that starts afterwards plays.
        """
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
    def _play_source(self, src: PcmSource, gain: float, on_start: Callable[[], None] | None) -> PlayResult:
        """Play under the play lock with linear ``gain``, checking ``self._stop`` before each block."""

    @abstractmethod
    def _close(self) -> None:
        """Release the device."""
