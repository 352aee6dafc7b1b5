"""Audio output: one :class:`AudioPlayer` interface, a sounddevice (PortAudio) backend.

The counter's spoken thank-you uses it now; the loudspeaker's announcements will use it too. A
player plays a :class:`Clip` (16-bit PCM samples and a rate) and blocks until it is played or
stopped, so a caller plays from its own worker thread::

    with open_player(device=None) as player:        # None: the system's default output
        player.play(Clip.from_wav(path))

Tests and the simulator use the real backend against ALSA's ``file`` plugin (``ALSA_CONFIG_PATH``
pointing at a config whose default PCM writes a WAV), so what was played can be measured.
"""

from __future__ import annotations

from drivers.audio.base import AudioPlayer, AudioUnavailable, BadAudio, Clip, PlayResult
from drivers.resources import Resources

__all__ = ["AudioPlayer", "AudioUnavailable", "BadAudio", "Clip", "PlayResult", "open_player"]


def open_player(
    device: str | int | None = None, *, resources: Resources | None = None, holder: str = "audio"
) -> AudioPlayer:
    """Open the output ``device`` (a sounddevice name, a name fragment or an index; None: default).

    Raises :exc:`AudioUnavailable` if PortAudio is missing or there is no such output device.
    """
    from drivers.audio.soundcard import SoundDevicePlayer  # PortAudio is loaded only when audio is used

    return SoundDevicePlayer(device, resources=resources, holder=holder)
