"""espeak-ng: the Vietnamese voice every device has (Debian's ``espeak-ng`` package), run as a process."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

from edge.speech.engine import ESPEAK_VOICES, NumberChoice, SpeechEngine, SpeechUnavailable, _last_lines


class EspeakEngine(SpeechEngine):
    """espeak-ng with one of the Vietnamese voices: ``vi`` (northern), ``vi-vn-x-central``, ``vi-vn-x-south``."""

    name: ClassVar[str] = "espeak-ng"
    voices: ClassVar[tuple[str, ...]] = ESPEAK_VOICES

    def __init__(
        self,
        *,
        voice: str = "vi",
        speed_wpm: int = 150,
        numbers: NumberChoice = "auto",
        max_chars: int = 2000,
        timeout_s: float = 300.0,
        cache_max_bytes: int | None = None,
        binary: str = "espeak-ng",
    ) -> None:
        super().__init__(
            voice=voice,
            speed_wpm=speed_wpm,
            numbers=numbers,
            max_chars=max_chars,
            timeout_s=timeout_s,
            cache_max_bytes=cache_max_bytes,
        )
        self.binary = binary

    def _executable(self) -> str:
        # Looked up at each use, so installing espeak-ng fixes a running daemon without a restart.
        exe = shutil.which(self.binary)
        if exe is None:
            raise SpeechUnavailable(f"{self.binary} is not installed (apt-get install espeak-ng)", "not_installed")
        return exe

    def _ask(self, exe: str, *args: str) -> str:
        try:
            proc = subprocess.run([exe, *args], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SpeechUnavailable(f"{exe} {' '.join(args)} failed: {exc}", "not_installed") from None
        return proc.stdout.decode("utf-8", errors="replace")

    def identity(self) -> str:
        # "eSpeak NG text-to-speech: 1.51  Data at: ...": the version, not where its data lives.
        line = self._ask(self._executable(), "--version").strip().split("  Data at:")[0]
        return line or "unknown version"

    def installed_voices(self) -> list[str]:
        """The Vietnamese voices espeak-ng has data for (``espeak-ng --voices=vi``)."""
        listing = self._ask(self._executable(), "--voices=vi").splitlines()[1:]
        return [cols[1].lower() for cols in (line.split() for line in listing) if len(cols) > 1]

    def _voice(self, voice: str | None) -> str:
        chosen = voice or self.voice
        if chosen not in self.voices:
            raise SpeechUnavailable(
                f"espeak-ng voice {chosen!r} is not a Vietnamese voice (use one of {', '.join(self.voices)})",
                "no_voice",
            )
        # espeak-ng quietly falls back to the nearest voice when a voice file is missing (and exits 0),
        # so a missing southern voice would be heard as the northern one: ask what is installed.
        installed = self.installed_voices()
        if chosen not in installed:
            have = ", ".join(installed) or "none"
            raise SpeechUnavailable(
                f"espeak-ng has no voice {chosen!r} installed (Vietnamese voices found: {have}); "
                "reinstall espeak-ng-data",
                "no_voice",
            )
        return chosen

    def check(self, voice: str | None = None) -> None:
        self._voice(voice)

    def command(self, out: Path, *, voice: str, speed_wpm: int | None = None) -> list[str]:
        """The espeak-ng command line that renders standard input (UTF-8 text) to the WAV ``out``."""
        return [
            self._executable(),
            "-v",
            voice,
            "-s",
            str(speed_wpm or self.speed_wpm),
            "-b",
            "1",  # the input is UTF-8 whatever the daemon's locale (systemd services run with C)
            "-w",
            str(out),
            "--stdin",
        ]

    def render(self, text: str, out: Path, *, voice: str | None = None, speed_wpm: int | None = None) -> None:
        chosen = self._voice(voice)
        stderr = self._run("espeak-ng", self.command(out, voice=chosen, speed_wpm=speed_wpm), text, out)
        if "Can't read dictionary" in stderr:
            # The voice file is there but its dictionary is not: espeak-ng exits 0 and speaks gibberish.
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
            raise SpeechUnavailable(
                f"espeak-ng voice {chosen!r} cannot read its dictionary ({_last_lines(stderr.encode())}); "
                "reinstall espeak-ng-data",
                "no_voice",
            )
