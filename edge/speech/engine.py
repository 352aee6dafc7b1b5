"""What every speech engine offers: Vietnamese text in, a WAV file out."""

from __future__ import annotations

import contextlib
import logging
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Literal

from drivers.audio import AudioUnavailable
from edge.exceptions import EdgeError
from edge.speech.numbers import NumberStyle

log = logging.getLogger(__name__)

#: The espeak-ng Vietnamese voices: northern (Hà Nội), central (Huế), southern (Sài Gòn).
ESPEAK_VOICES: tuple[str, ...] = ("vi", "vi-vn-x-central", "vi-vn-x-south")

NumberChoice = Literal["auto", "north", "south"]


class SpeechUnavailable(AudioUnavailable):
    """The text could not be turned into sound: the engine, its voice or its model is missing or failed.

    ``reason`` is a short word for events and counters: ``not_installed``, ``no_voice``, ``no_model``,
    ``timeout`` or ``failed``.
    """

    def __init__(self, message: str, reason: str = "failed") -> None:
        super().__init__(message)
        self.reason = reason


class TextTooLong(EdgeError, ValueError):
    """Announcement text longer than ``speech.max_chars``: refused before anything is rendered."""

    reason = "text_too_long"


class SpeechEngine(ABC):
    """Renders Vietnamese text (already normalised into words) to a WAV file.

    An engine is configured once (default voice, speed, how numbers are read, the length cap) and
    is safe to use from several threads: each :meth:`render` runs its own process.
    """

    #: The engine's name in ``speech.engine`` and in the render cache's key.
    name: ClassVar[str]

    def __init__(
        self,
        *,
        voice: str = "vi",
        speed_wpm: int = 150,
        numbers: NumberChoice = "auto",
        max_chars: int = 2000,
        timeout_s: float = 300.0,
        cache_max_bytes: int | None = None,
    ) -> None:
        self.voice = voice
        self.speed_wpm = speed_wpm
        self.numbers: NumberChoice = numbers
        self.max_chars = max_chars
        self.timeout_s = timeout_s
        #: :func:`edge.speech.render_cached` prunes its cache to this after each new render; None: never.
        self.cache_max_bytes = cache_max_bytes

    @abstractmethod
    def identity(self) -> str:
        """What, besides voice and speed, decides the sound: the engine's version or the model file.

        Part of the render cache's key, so a new espeak-ng or a replaced voice model renders again.
        Raises :exc:`SpeechUnavailable` when the engine cannot be used at all.
        """

    @abstractmethod
    def render(self, text: str, out: Path, *, voice: str | None = None, speed_wpm: int | None = None) -> None:
        """Write ``text`` spoken by ``voice`` at ``speed_wpm`` (defaults: the configured ones) to ``out``.

        ``text`` is said as given; :func:`edge.speech.render_cached` normalises it first. Raises
        :exc:`SpeechUnavailable` with the reason when the engine, the voice or the model is missing
        or the engine fails.
        """

    def check(self, voice: str | None = None) -> None:
        """Raise :exc:`SpeechUnavailable` if ``voice`` (default: the configured one) cannot be rendered."""
        self.identity()

    def number_style(self, voice: str | None = None) -> NumberStyle:
        """How numbers are read for ``voice``: ``auto`` follows the southern espeak-ng voice."""
        if self.numbers != "auto":
            return self.numbers
        return "south" if (voice or self.voice) == "vi-vn-x-south" else "north"

    def _run(self, program: str, command: list[str], text: str, out: Path) -> str:
        """Run a renderer with ``text`` on its standard input (UTF-8), check it wrote a WAV; its stderr."""
        try:
            proc = subprocess.run(
                command,
                input=(text + "\n").encode("utf-8"),
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
            raise SpeechUnavailable(
                f"{program} did not finish rendering {len(text)} characters within {self.timeout_s:g} s", "timeout"
            ) from None
        except OSError as exc:
            raise SpeechUnavailable(f"{program} could not be started: {exc}", "not_installed") from None
        if proc.returncode != 0 or not out.exists() or out.stat().st_size <= 44:
            err = _last_lines(proc.stderr) or f"exit status {proc.returncode}"
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
            raise SpeechUnavailable(f"{program} failed: {err}", "failed")
        log.debug("%s rendered %d characters to %s", program, len(text), out)
        return proc.stderr.decode("utf-8", errors="replace")


def _last_lines(stderr: bytes, lines: int = 2) -> str:
    """The end of a program's error output, which says what went wrong (a Python traceback: its last line)."""
    text = stderr.decode("utf-8", errors="replace")
    found = [line.strip() for line in text.splitlines() if line.strip(" \t^~")]
    if "Traceback (most recent call last)" in text:
        found = found[-1:]
    return " | ".join(found[-lines:])
