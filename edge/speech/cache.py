"""Rendered speech, cached by content: the same announcement is rendered once and replayed from disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import soundfile as sf

from edge.speech.engine import SpeechEngine, SpeechUnavailable, TextTooLong
from edge.speech.normalise import normalise_vi

log = logging.getLogger(__name__)


def speech_text(engine: SpeechEngine, text: str, *, voice: str | None = None) -> str:
    """The words ``engine`` is given for ``text``: normalised with the number style of ``voice``.

    Raises :exc:`TextTooLong` over ``max_chars`` and ``ValueError`` when nothing is left to say.
    """
    if len(text) > engine.max_chars:
        raise TextTooLong(f"the text has {len(text)} characters; speech.max_chars allows {engine.max_chars}")
    spoken = normalise_vi(text, style=engine.number_style(voice))
    if not any(c.isalnum() for c in spoken):
        raise ValueError("the text has nothing to say")
    return spoken


def cache_key(engine: SpeechEngine, spoken: str, voice: str, speed_wpm: int) -> str:
    """The render's name: a hash of everything that decides the sound."""
    material = json.dumps([engine.name, engine.identity(), voice, speed_wpm, spoken], ensure_ascii=False)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def render_cached(
    engine: SpeechEngine,
    text: str,
    *,
    voice: str | None = None,
    speed_wpm: int | None = None,
    cache_dir: Path,
) -> Path:
    """The WAV of ``text`` said by ``engine``: normalised, rendered once, kept as ``cache_dir/<hash>.wav``.

    The hash covers the engine's name and identity (its version or model file), the voice, the speed
    and the normalised text, so any change renders anew and an unchanged text never renders twice.
    The file is written under a temporary name, flushed and renamed, so a power cut never leaves a
    half-written WAV under a cached name.

    Raises :exc:`TextTooLong`, ``ValueError`` (nothing to say) or :exc:`SpeechUnavailable`.
    """
    chosen_voice = voice or engine.voice
    speed = speed_wpm or engine.speed_wpm
    spoken = speech_text(engine, text, voice=chosen_voice)
    path = cache_dir / f"{cache_key(engine, spoken, chosen_voice, speed)}.wav"
    if path.is_file() and path.stat().st_size > 44:
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.wav"
    try:
        engine.render(spoken, tmp, voice=chosen_voice, speed_wpm=speed)
        try:
            info = sf.info(str(tmp))
        except RuntimeError as exc:  # libsndfile cannot read it
            raise SpeechUnavailable(f"{engine.name} wrote a file that is not audio: {exc}", "failed") from None
        if info.frames == 0:
            raise SpeechUnavailable(f"{engine.name} rendered no sound for the text", "failed")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(cache_dir)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log.info("rendered %d characters with %s voice %s to %s", len(spoken), engine.name, chosen_voice, path.name)
    return path


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory is on disk too.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
