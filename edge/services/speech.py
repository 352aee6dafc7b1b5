"""The spoken thank-you: espeak-ng renders the Vietnamese text once to a cached WAV, a player plays it.

Rendering and playing happen on this module's own worker thread, never on the panel's: a slow or
missing speaker must never delay the next rating. A thank-you asked for while one is still playing
is dropped (and counted): a citizen pressing twice gets one thank-you, not a queue of them.

At start (and after a change) the worker renders the text and looks for the speaker, so problems
show at boot; but it looks for the speaker in a child process and keeps the WAV on disk, so the idle
daemon does not load numpy, sounddevice or PortAudio before the first thank-you is spoken.

Problems (espeak-ng not installed, no audio device, a failed play) are reported through
``on_problem`` once per distinct problem, and ``on_problem`` is told again when speech works; the
rating service turns both into ``panel`` events.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.audio import AudioPlayer, AudioUnavailable, BadAudio, Clip, open_player
from drivers.audio.probe import probe_output
from drivers.resources import Resources
from edge.config import RatingFeedbackConfig
from edge.exceptions import ResourceBusy
from edge.speech import EspeakEngine, SpeechUnavailable, render_cached

log = logging.getLogger(__name__)

#: A speaker that could not be opened is tried again at the next thank-you, at most this often.
RETRY_S = 30.0

ProblemCallback = Callable[[dict[str, Any]], None]
PlayedCallback = Callable[[str, float], None]
PlayerFactory = Callable[[str | int | None, Resources, str], AudioPlayer]
#: Looks for the output device without opening it; returns its name, raises AudioUnavailable.
SpeakerProbe = Callable[[str | int | None], str]


def render_tts(text: str, voice: str, speed_wpm: int, cache_dir: Path) -> Path:
    """The WAV of ``text`` spoken by espeak-ng ``voice``, normalised, rendered once and cached by content."""
    engine = EspeakEngine(voice=voice, speed_wpm=speed_wpm)
    return render_cached(engine, text, voice=voice, speed_wpm=speed_wpm, cache_dir=cache_dir)


@dataclass
class SpeechStats:
    played: int = 0
    dropped_busy: int = 0
    """Thank-yous not spoken because one was still playing."""
    failed: int = 0
    """Thank-yous not spoken because of a problem (reported through ``on_problem``)."""


def _default_player(device: str | int | None, resources: Resources, holder: str) -> AudioPlayer:
    return open_player(device, resources=resources, holder=holder)


class SpokenThanks:
    """Says the thank-you text on the counter speaker. ``say()`` never blocks and never raises."""

    def __init__(
        self,
        settings: RatingFeedbackConfig,
        cache_dir: Path,
        resources: Resources,
        *,
        on_problem: ProblemCallback,
        on_played: PlayedCallback | None = None,
        player_factory: PlayerFactory = _default_player,
        probe: SpeakerProbe = probe_output,
        holder: str = "rating.feedback.audio_device",
    ) -> None:
        self.stats = SpeechStats()
        self._settings = settings
        self._cache_dir = cache_dir
        self._resources = resources
        self._on_problem = on_problem
        self._on_played = on_played
        self._player_factory = player_factory
        self._probe = probe
        self._probed: str | None = None  # the speaker found by the probe, reserved for this holder
        self._holder = holder
        self._requests: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._player: AudioPlayer | None = None
        self._clip: Clip | None = None
        self._clip_key: tuple[str, str, int] | None = None
        self._wav: Path | None = None
        self._wav_key: tuple[str, str, int] | None = None
        self._last_attempt = -RETRY_S
        self._problem: str | None = None  # the problem last reported, None when all is well
        self._pending_or_playing = threading.Event()  # a thank-you is queued or being played

    @property
    def problem(self) -> str | None:
        """The current problem, in a sentence; None when speech works (or was not tried yet)."""
        return self._problem

    @property
    def thread(self) -> threading.Thread | None:
        """The worker that renders and plays every thank-you (None while speech is off), for the
        rating service's :meth:`~edge.services.rating.RatingService.loops`."""
        return self._thread

    def start(self) -> None:
        """Start the worker; it prepares the voice and the speaker at once, so problems show at boot."""
        if not self._settings.speak:
            return
        self._thread = threading.Thread(target=self._run, name="rating-speech", daemon=True)
        self._thread.start()
        self._requests.put("prepare")

    def say(self) -> bool:
        """Speak the thank-you soon; False if speech is off, busy or unavailable (nothing raised)."""
        if not self._settings.speak or self._thread is None:
            return False
        if self._pending_or_playing.is_set():
            self.stats.dropped_busy += 1
            return False
        self._pending_or_playing.set()
        self._requests.put("say")
        return True

    def reconfigure(self, settings: RatingFeedbackConfig) -> None:
        """New text, voice, speed or device apply to the next thank-you."""
        device_changed = settings.audio_device != self._settings.audio_device
        self._settings = settings
        if self._thread is None and settings.speak:
            self.start()
            return
        if device_changed:
            self._requests.put("reopen")
        self._requests.put("prepare")

    def stop(self) -> None:
        if self._thread is not None:
            if self._player is not None:
                self._player.stop()
            self._requests.put(None)
            self._thread.join(timeout=10)
            self._thread = None
        if self._player is not None:
            self._player.close()
            self._player = None
        self._release_probed()

    # -- the worker --------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            try:
                if request == "reopen":
                    self._reopen()
                self._serve(request == "say")
            except Exception as exc:  # a bug here must not end speech for good
                log.exception("thank-you speech failed")
                self._report(f"internal error: {exc!r}", "audio")
            finally:
                if request == "say":
                    self._pending_or_playing.clear()

    def _reopen(self) -> None:
        """Let the speaker go (another device was configured): the next thank-you opens the new one."""
        player, self._player = self._player, None
        self._last_attempt = -RETRY_S
        try:
            if player is not None:
                player.close()
        finally:
            self._release_probed()

    def _serve(self, speak: bool) -> None:
        if not self._settings.speak:
            return
        try:
            if not speak:
                self._ready_wav()
                if self._check_speaker():
                    self._report(None, "audio")
                return
            clip = self._ready_clip()
            player = self._ready_player(force=True)
        except AudioUnavailable as exc:
            if speak:
                self.stats.failed += 1
            self._report(str(exc), "tts" if isinstance(exc, SpeechUnavailable) else "audio")
            return
        if player is None:  # not retried yet (RETRY_S)
            self.stats.failed += 1
            return
        try:
            result = player.play(clip)
        except AudioUnavailable as exc:
            self.stats.failed += 1
            player.close()
            self._player = None
            self._report(str(exc), "audio")
            return
        self.stats.played += 1
        self._report(None, "audio")
        if self._on_played is not None:
            self._on_played(self._settings.text, result.seconds)

    def _ready_wav(self) -> Path:
        """The rendered thank-you on disk (rendered once per text, voice and speed)."""
        s = self._settings
        key = (s.text, s.voice, s.speed_wpm)
        if self._wav is None or self._wav_key != key or not self._wav.is_file():
            self._wav = render_tts(s.text, s.voice, s.speed_wpm, self._cache_dir)
            self._wav_key = key
        return self._wav

    def _ready_clip(self) -> Clip:
        s = self._settings
        key = (s.text, s.voice, s.speed_wpm)
        if self._clip is None or self._clip_key != key:
            path = self._ready_wav()
            try:
                self._clip = Clip.from_wav(path)
            except BadAudio as exc:
                with contextlib.suppress(OSError):
                    path.unlink()  # render again next time
                raise SpeechUnavailable(str(exc)) from None
            self._clip_key = key
        return self._clip

    def _ready_player(self, *, force: bool) -> AudioPlayer | None:
        if self._player is not None:
            return self._player
        now = time.monotonic()
        if not force and now - self._last_attempt < RETRY_S:
            return None
        if force and self._problem is not None and now - self._last_attempt < RETRY_S:
            return None  # known missing: do not probe the audio system at every press
        self._last_attempt = now
        self._player = self._player_factory(self._device(), self._resources, self._holder)
        return self._player

    def _check_speaker(self) -> bool:
        """Look for the speaker without opening it (True: found and reserved; False: not tried yet,
        RETRY_S). Reserving it now makes a clash with another part show at start, as opening it would."""
        if self._player is not None:
            return True
        now = time.monotonic()
        if now - self._last_attempt < RETRY_S:
            return False
        self._last_attempt = now
        name = self._probe(self._device())
        if name != self._probed:
            self._release_probed()
            try:
                self._resources.reserve("audio", name, self._holder)
            except ResourceBusy as exc:
                raise AudioUnavailable(str(exc)) from None
            self._probed = name
        return True

    def _release_probed(self) -> None:
        if self._probed is not None:
            self._resources.release("audio", self._probed, self._holder)
            self._probed = None

    def _device(self) -> str | int | None:
        device = self._settings.audio_device
        return int(device) if device is not None and device.isdigit() else device

    def _report(self, problem: str | None, part: str) -> None:
        if problem == self._problem:
            return
        was = self._problem
        self._problem = problem
        if problem is None:
            log.info("thank-you speech works again")
            self._on_problem({"state": "ok", "was": was})
        else:
            log.warning("thank-you speech unavailable (%s): %s", part, problem)
            self._on_problem({"state": "unavailable", "part": part, "error": problem})
