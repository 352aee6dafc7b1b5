"""What the capture device hears: the loudspeaker's self-test (issue 8, point 7).

A microphone near a horn, or the amplifier's line-out wired into the sound card's input, is a
PortAudio input device. A :class:`LevelMeter` opens it while an item plays and reports the RMS level
heard, so the server sees a zone whose horn is silent although the player sent sound::

    meter = LevelMeter("default")
    meter.start()
    ...                                  # play the item, or click a relay and play the test tone
    heard_dbfs = meter.stop()            # e.g. -23.5; SILENCE_DBFS for digital silence

Like the player, the meter opens its stream in ``start()`` and closes it in ``stop()``, so the input
is not held between items. Levels are computed in PortAudio's callback as a running sum of squares;
no samples are kept.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from drivers.audio.base import AudioUnavailable, SignalLevel
from drivers.audio.soundcard import find_device, load_sounddevice
from drivers.resources import Resources, process_resources

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class LevelMeter:
    """Measures the RMS level on a capture ``device`` (name, name fragment, index or None: the default).

    Raises :exc:`AudioUnavailable` at construction if there is no such input device, and from
    :meth:`start` if it cannot be opened. The device is reserved (as ``"<name> (input)"``) until
    :meth:`close`.
    """

    def __init__(
        self,
        device: str | int | None,
        *,
        resources: Resources | None = None,
        holder: str = "speaker.capture_device",
        channels: int = 1,
    ) -> None:
        self._sd = load_sounddevice()
        self._index, self._name = find_device(self._sd, device, "input")
        info = self._sd.query_devices(self._index)
        self.rate = int(info["default_samplerate"])
        self._channels = max(1, min(channels, int(info["max_input_channels"])))
        self._holder = holder
        self._resources = resources if resources is not None else process_resources()
        self._resources.reserve("audio", self.resource_name, holder)
        self._lock = threading.Lock()
        self._level = SignalLevel()
        self._stream: Any = None
        self._overflows = 0
        self._closed = False

    @property
    def device_name(self) -> str:
        """The capture device's name, as the audio system calls it."""
        return self._name

    @property
    def resource_name(self) -> str:
        return f"{self._name} (input)"

    @property
    def running(self) -> bool:
        return self._stream is not None

    @property
    def frames(self) -> int:
        """Frames heard since :meth:`start`."""
        with self._lock:
            return self._level.frames

    def start(self) -> None:
        """Open the input and start listening; what was heard before is forgotten."""
        if self._closed:
            raise AudioUnavailable("the level meter is closed")
        if self._stream is not None:
            self.stop()
        with self._lock:
            self._level = SignalLevel()
            self._overflows = 0
        try:
            stream = self._sd.InputStream(
                samplerate=self.rate,
                channels=self._channels,
                dtype="float32",
                device=self._index,
                callback=self._on_block,
                dither_off=True,
            )
            stream.start()
        except (self._sd.PortAudioError, ValueError) as exc:
            raise AudioUnavailable(f"cannot listen on {self._name}: {exc}") from None
        self._stream = stream

    def stop(self) -> float | None:
        """Stop listening; the RMS level heard since :meth:`start` in dBFS, None if nothing was heard."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
            except self._sd.PortAudioError as exc:
                log.warning("stopping the capture stream on %s failed: %s", self._name, exc)
            finally:
                stream.close(ignore_errors=True)
        with self._lock:
            if self._overflows:
                log.info("capture on %s overflowed %s times (level of what was read)", self._name, self._overflows)
            return self._level.rms_dbfs

    def close(self) -> None:
        """Stop listening and release the device. Idempotent."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        self._resources.release("audio", self.resource_name, self._holder)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _on_block(self, data: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's callback thread: cheap work only, never raise.
        with self._lock:
            if status.input_overflow:
                self._overflows += 1
            self._level.add(data)
