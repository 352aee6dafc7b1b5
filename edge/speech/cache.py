"""Rendered speech, cached by content: the same announcement is rendered once and replayed from disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import wave
from collections.abc import Collection
from pathlib import Path

from edge.speech.engine import SpeechEngine, SpeechUnavailable, TextTooLong
from edge.speech.normalise import normalise_vi

log = logging.getLogger(__name__)

#: A temporary render this old was cut short (the process died): nobody will finish it.
STALE_TMP_S = 3600.0


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
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to be pruned
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.wav"
    try:
        engine.render(spoken, tmp, voice=chosen_voice, speed_wpm=speed)
        if _rendered_frames(tmp, engine.name) == 0:
            raise SpeechUnavailable(f"{engine.name} rendered no sound for the text", "failed")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(cache_dir)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log.info("rendered %d characters with %s voice %s to %s", len(spoken), engine.name, chosen_voice, path.name)
    if engine.cache_max_bytes is not None:
        prune_cache(cache_dir, engine.cache_max_bytes, keep=(path,))
    return path


def _rendered_frames(path: Path, engine_name: str) -> int:
    """Frames in a render. A PCM WAV (what espeak-ng and Piper write) is read with the standard
    library, so rendering at start does not load libsndfile and numpy into an idle daemon."""
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes()
    except (wave.Error, EOFError):
        pass  # not a PCM WAV: libsndfile reads more, or says what is wrong
    import soundfile as sf

    try:
        return int(sf.info(str(path)).frames)
    except RuntimeError as exc:  # libsndfile cannot read it
        raise SpeechUnavailable(f"{engine_name} wrote a file that is not audio: {exc}", "failed") from None


def prune_cache(cache_dir: Path, max_bytes: int, *, keep: Collection[Path] = ()) -> list[Path]:
    """Delete the least recently used renders until the cache holds at most ``max_bytes``; the deleted.

    A render is deterministic, so a deleted one is simply rendered again when next asked for: call
    :func:`render_cached` right before playing rather than holding on to an old path. ``keep`` is
    never deleted. Temporary files older than an hour (a render cut short by a power loss) go too.
    """
    removed: list[Path] = []
    kept = {p.name for p in keep}
    now = time.time()
    renders: list[tuple[float, int, Path]] = []
    try:
        entries = list(cache_dir.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        try:
            stat = entry.stat()
        except FileNotFoundError:
            continue  # another thread got there first
        if entry.name.endswith(".tmp.wav"):
            if now - stat.st_mtime > STALE_TMP_S:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                removed.append(entry)
        elif entry.suffix == ".wav":
            renders.append((stat.st_mtime, stat.st_size, entry))
    total = sum(size for _, size, _ in renders)
    for _, size, entry in sorted(renders):
        if total <= max_bytes:
            break
        if entry.name in kept:
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
        removed.append(entry)
        total -= size
    if removed:
        log.info("speech cache: removed %d files, %d bytes remain in %s", len(removed), total, cache_dir)
    return removed


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory is on disk too.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
