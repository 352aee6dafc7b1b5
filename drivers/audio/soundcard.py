"""The real audio backend: sounddevice → PortAudio → ALSA (or whatever host API PortAudio has).

A stream is opened per clip and closed after it, so the device is not held open between
announcements (ALSA's ``dmix`` is not always there on a Pi; an idle open stream would block others).
The device is reserved in :mod:`drivers.resources` for the player's lifetime: one writer per device.
"""

from __future__ import annotations

import logging
from typing import Any

from drivers.audio.base import AudioPlayer, AudioUnavailable, Clip, PlayResult
from drivers.resources import Resources, process_resources

log = logging.getLogger(__name__)

#: Frames written per block; between blocks ``stop()`` is noticed (about 0.1 s at 22 kHz).
BLOCK_FRAMES = 2048


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the Python module is there but libportaudio2 is not
        raise AudioUnavailable(f"PortAudio is not installed ({exc}); apt-get install libportaudio2") from None
    except ImportError as exc:
        raise AudioUnavailable(f"the sounddevice module is missing: {exc}") from None
    return sounddevice


class SoundDevicePlayer(AudioPlayer):
    """Plays on a PortAudio output device: ``device`` is a name, a name fragment, an index or None."""

    def __init__(self, device: str | int | None = None, *, resources: Resources | None = None, holder: str = "audio"):
        super().__init__()
        self._sd = _sounddevice()
        try:
            info = self._sd.query_devices(device, "output")
        except (ValueError, self._sd.PortAudioError) as exc:
            wanted = "default output device" if device is None else f"output device {device!r}"
            raise AudioUnavailable(f"no {wanted}: {exc}") from None
        self._device_index = int(info["index"])
        self._name = str(info["name"])
        self._holder = holder
        self._resources = resources if resources is not None else process_resources()
        self._resources.reserve("audio", self._name, holder)

    @property
    def device_name(self) -> str:
        return self._name

    def _play(self, clip: Clip) -> PlayResult:
        written = 0
        try:
            with self._sd.OutputStream(
                samplerate=clip.rate, channels=clip.channels, dtype="int16", device=self._device_index
            ) as stream:
                while written < clip.frames and not self._stop.is_set():
                    block = clip.samples[written : written + BLOCK_FRAMES]
                    stream.write(block)  # underflows are reported, not raised; the sound goes on
                    written += len(block)
        except self._sd.PortAudioError as exc:
            raise AudioUnavailable(f"playing on {self._name} failed: {exc}") from None
        return PlayResult(written, clip.rate, stopped=written < clip.frames)

    def _close(self) -> None:
        self._resources.release("audio", self._name, self._holder)
