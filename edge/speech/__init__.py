"""Offline Vietnamese speech: announcement text normalised into words, rendered to a cached WAV.

::

    engine = make_engine(config.speech)                # espeak-ng or Piper, as [speech] says
    wav = render_cached(engine, "UBND phường họp lúc 8h30", cache_dir=state_dir / "speech")

:func:`normalise_vi` turns times, dates, amounts, phone numbers and abbreviations into the words an
announcer would say; :func:`render_cached` normalises, renders once per distinct text, voice,
speed and engine, and returns the same file afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.speech.cache import cache_key, prune_cache, render_cached, speech_text
from edge.speech.engine import ESPEAK_VOICES, SpeechEngine, SpeechUnavailable, TextTooLong
from edge.speech.espeak import EspeakEngine
from edge.speech.normalise import normalise_vi
from edge.speech.numbers import NumberStyle, read_digits, read_number
from edge.speech.piper import PiperEngine

if TYPE_CHECKING:
    from edge.config.speech import SpeechConfig

__all__ = [
    "ESPEAK_VOICES",
    "EspeakEngine",
    "NumberStyle",
    "PiperEngine",
    "SpeechEngine",
    "SpeechUnavailable",
    "TextTooLong",
    "cache_key",
    "make_engine",
    "normalise_vi",
    "prune_cache",
    "read_digits",
    "read_number",
    "render_cached",
    "speech_text",
]


def make_engine(settings: SpeechConfig) -> SpeechEngine:
    """The engine ``[speech]`` names, with its defaults; switching engines is a config change only.

    Nothing is checked here (a missing model is reported when speech is first asked for, as
    :exc:`SpeechUnavailable` naming the path and ``speech.piper_model``); call
    :meth:`SpeechEngine.check` to find out at start.
    """
    if settings.engine == "piper":
        if settings.piper_model is None:  # the config model already refuses this; a clear error all the same
            raise SpeechUnavailable("speech.piper_model: required when speech.engine = 'piper'", "no_model")
        return PiperEngine(
            settings.piper_model,
            binary=settings.piper_binary,
            voice=settings.voice,
            speed_wpm=settings.speed_wpm,
            numbers=settings.numbers,
            max_chars=settings.max_chars,
            timeout_s=settings.render_timeout_s,
            cache_max_bytes=settings.cache_max_mb * 1_000_000,
        )
    return EspeakEngine(
        voice=settings.voice,
        speed_wpm=settings.speed_wpm,
        numbers=settings.numbers,
        max_chars=settings.max_chars,
        timeout_s=settings.render_timeout_s,
        cache_max_bytes=settings.cache_max_mb * 1_000_000,
    )
