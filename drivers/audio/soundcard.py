"""The real audio backend: sounddevice → PortAudio → ALSA (or whatever host API PortAudio has).

A stream is opened per item and closed after it, so the device is not held open between
announcements (ALSA's ``dmix`` is not always there on a Pi; an idle open stream would block others).
The device is reserved in :mod:`drivers.resources` for the player's lifetime: one writer per device.

Samples go out as 16-bit integers (what every sound card takes; the gain is applied in float first)
in blocks of at most :data:`MAX_BLOCK_S`; between blocks the player looks at its stop flag, so
``stop()`` is noticed within one block. A stopped stream is aborted (what the device still buffers
is dropped), a finished one is drained (the last block is heard whole).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from drivers.audio.base import AudioPlayer, AudioUnavailable, PcmSource, PlayResult, SignalLevel
from drivers.resources import Resources, process_resources

log = logging.getLogger(__name__)

#: The longest block written at once: ``stop()`` waits for at most one block.
MAX_BLOCK_S = 0.05
#: The block length when the caller does not choose.
DEFAULT_BLOCK_S = 0.02


def load_sounddevice() -> Any:
    """The sounddevice module; :exc:`AudioUnavailable` if it or PortAudio is missing."""
    try:
        import sounddevice
    except OSError as exc:  # the Python module is there but libportaudio2 is not
        raise AudioUnavailable(f"PortAudio is not installed ({exc}); apt-get install libportaudio2") from None
    except ImportError as exc:
        raise AudioUnavailable(f"the sounddevice module is missing: {exc}") from None
    return sounddevice


def find_device(sd: Any, device: str | int | None, kind: str) -> tuple[int, str]:
    """The PortAudio index and name of an ``"input"`` or ``"output"`` device.

    ``device`` is a name, a unique name fragment, an index (an int or a string of digits) or None (the
    system default). Raises :exc:`AudioUnavailable` naming what was looked for.
    """
    wanted: str | int | None = int(device) if isinstance(device, str) and device.isdigit() else device
    try:
        info = sd.query_devices(wanted, kind)
    except (ValueError, sd.PortAudioError) as exc:
        what = f"default {kind} device" if wanted is None else f"{kind} device {device!r}"
        raise AudioUnavailable(f"no {what}: {exc}") from None
    return int(info["index"]), str(info["name"])


def block_frames(rate: int, block_s: float = DEFAULT_BLOCK_S) -> int:
    """Frames per block at ``rate``: ``block_s`` long, never longer than :data:`MAX_BLOCK_S`."""
    return max(16, int(rate * min(block_s, MAX_BLOCK_S)))


class SoundDevicePlayer(AudioPlayer):
    """Plays on a PortAudio output device: ``device`` is a name, a name fragment, an index or None."""

    def __init__(
        self,
        device: str | int | None = None,
        *,
        resources: Resources | None = None,
        holder: str = "audio",
        block_s: float = DEFAULT_BLOCK_S,
    ):
        super().__init__()
        self._sd = load_sounddevice()
        self._device_index, self._name = find_device(self._sd, device, "output")
        self._block_s = block_s
        self._holder = holder
        self._resources = resources if resources is not None else process_resources()
        self._resources.reserve("audio", self._name, holder)

    @property
    def device_name(self) -> str:
        return self._name

    def _play_source(self, src: PcmSource, gain: float, on_start: Callable[[], None] | None) -> PlayResult:
        import numpy as np

        rate, channels = int(src.rate), int(src.channels)
        frames = block_frames(rate, self._block_s)
        level = SignalLevel()
        stopped = False
        try:
            stream = self._sd.OutputStream(samplerate=rate, channels=channels, dtype="int16", device=self._device_index)
        except (self._sd.PortAudioError, ValueError) as exc:
            raise AudioUnavailable(
                f"cannot open {self._name} for {channels} channel(s) at {rate} Hz: {exc} "
                "(a 'default' or plughw device converts rates and channels)"
            ) from None
        try:
            stream.start()
            while True:
                block = src.read(frames)
                # Checked after the read too: a read that blocked (a stalled stream) must not be
                # followed by a write once stop() was asked for meanwhile.
                if self._stop.is_set():
                    stopped = True
                    break
                if block.shape[0] == 0:
                    break
                block = np.clip(block * np.float32(gain) if gain != 1.0 else block, -1.0, 1.0)
                stream.write(np.rint(block * 32767.0).astype(np.int16))  # underflows are reported, not raised
                first = level.frames == 0
                level.add(block)
                if first and on_start is not None:
                    on_start()
            if stopped:
                stream.abort()  # drop what the device still buffers: a stop is a cut
            else:
                stream.stop()  # let the last block be heard
        except self._sd.PortAudioError as exc:
            raise AudioUnavailable(f"playing on {self._name} failed: {exc}") from None
        finally:
            stream.close(ignore_errors=True)
        log.debug("played %s frames at %s Hz on %s (stopped: %s)", level.frames, rate, self._name, stopped)
        return PlayResult(level.frames, rate, stopped, level.rms_dbfs, level.peak_dbfs)

    def _close(self) -> None:
        self._resources.release("audio", self._name, self._holder)
