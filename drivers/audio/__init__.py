"""Audio: sources of samples, one :class:`AudioPlayer` interface over a sounddevice (PortAudio) backend,
and a :class:`~drivers.audio.capture.LevelMeter` that listens on a capture device.

A player plays a :class:`PcmSource` (a decoded file, a live stream, samples in memory) and blocks
until it has ended or is stopped, so a caller plays from its own worker thread::

    with open_player(device=None) as player:        # None: the system's default output
        src = open_file_source("/var/lib/commune-edge/audio/ab12….mp3")
        try:
            result = player.play_source(src, gain_db=-6.0, on_start=started)
        finally:
            src.close()
        result.seconds, result.rms_dbfs                # what really went out, after the gain

The counter's spoken thank-you plays a :class:`Clip` (16-bit samples in memory) with ``play()``.

Tests and the simulator use the real backend against ALSA's ``file`` plugin (``ALSA_CONFIG_PATH``
pointing at a config whose default PCM writes what is played to a file; see :mod:`sim.audio`), so what
was played can be measured.
"""

from __future__ import annotations

from drivers.audio.base import (
    SILENCE_DBFS,
    ArraySource,
    AudioPlayer,
    AudioUnavailable,
    BadAudio,
    Clip,
    PcmSource,
    PlayResult,
    SignalLevel,
    db_to_gain,
)
from drivers.audio.decode import FileSource, open_file_source
from drivers.resources import Resources

__all__ = [
    "SILENCE_DBFS",
    "ArraySource",
    "AudioPlayer",
    "AudioUnavailable",
    "BadAudio",
    "Clip",
    "FileSource",
    "PcmSource",
    "PlayResult",
    "SignalLevel",
    "db_to_gain",
    "open_file_source",
    "open_player",
]


def open_player(
    device: str | int | None = None,
    *,
    resources: Resources | None = None,
    holder: str = "audio",
    block_s: float | None = None,
) -> AudioPlayer:
    """Open the output ``device`` (a sounddevice name, a name fragment or an index; None: default).

    ``block_s`` is the length of the blocks written (at most 0.05 s; default 0.02 s): ``stop()`` is
    noticed within one block. Raises :exc:`AudioUnavailable` if PortAudio is missing or there is no
    such output device.
    """
    from drivers.audio.soundcard import DEFAULT_BLOCK_S, SoundDevicePlayer  # PortAudio is loaded only when used

    return SoundDevicePlayer(
        device, resources=resources, holder=holder, block_s=DEFAULT_BLOCK_S if block_s is None else block_s
    )
