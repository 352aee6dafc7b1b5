"""Piper: a neural voice provisioned on the device as an ``.onnx`` model file, run as a process.

The ``piper`` program is either the ``piper-tts`` Python package installed beside commune-edge
(run as ``python -m piper``; ``pip install 'commune-edge[piper]'``) or a ``piper`` executable (the
C++ release) named by ``speech.piper_binary``. Both take the same options: ``--model``,
``--output_file``, ``--length_scale``, ``--speaker``, and the text on standard input.

Piper runs in its own process rather than inside the daemon: the ONNX runtime and the model take
a hundred megabytes or more, only while rendering, and a crash in them cannot take the daemon down.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any, ClassVar

from edge.speech.engine import ESPEAK_VOICES, NumberChoice, SpeechEngine, SpeechUnavailable

#: The pace a Piper voice speaks at with its own length scale, taken as this many words per minute,
#: so ``speed_wpm`` means roughly the same with either engine.
NATURAL_WPM = 150


def _piper_package() -> bool:
    """Whether the ``piper-tts`` package is importable here, without importing it (it loads onnxruntime)."""
    spec = importlib.util.find_spec("piper")
    if spec is None or not spec.submodule_search_locations:
        return False
    # Another PyPI project is also called "piper"; piper-tts is the one with a voice module.
    return any((Path(p) / "voice.py").exists() for p in spec.submodule_search_locations)


class PiperEngine(SpeechEngine):
    """A Piper voice model (``model``: the ``.onnx`` file; its ``.onnx.json`` config beside it)."""

    name: ClassVar[str] = "piper"

    def __init__(
        self,
        model: Path,
        *,
        binary: str | None = None,
        voice: str = "vi",
        speed_wpm: int = 150,
        numbers: NumberChoice = "auto",
        max_chars: int = 2000,
        timeout_s: float = 300.0,
        cache_max_bytes: int | None = None,
        model_key: str = "speech.piper_model",
        binary_key: str = "speech.piper_binary",
    ) -> None:
        super().__init__(
            voice=voice,
            speed_wpm=speed_wpm,
            numbers=numbers,
            max_chars=max_chars,
            timeout_s=timeout_s,
            cache_max_bytes=cache_max_bytes,
        )
        self.model = Path(model)
        self.binary = binary
        self._model_key = model_key
        self._binary_key = binary_key

    # -- what to run -------------------------------------------------------------------------------

    def program(self) -> list[str]:
        """The command that runs Piper: the configured binary, the piper-tts package, or ``piper`` on PATH."""
        if self.binary:
            exe = shutil.which(self.binary)
            if exe is None:
                raise SpeechUnavailable(
                    f"{self._binary_key}: the Piper program {self.binary} was not found or is not executable",
                    "not_installed",
                )
            return [exe]
        if _piper_package():
            return [sys.executable, "-m", "piper"]
        exe = shutil.which("piper")
        if exe is None:
            raise SpeechUnavailable(
                "Piper is not installed: install the piper-tts package (pip install 'commune-edge[piper]') "
                f"or set {self._binary_key} to the piper program",
                "not_installed",
            )
        return [exe]

    @property
    def config_path(self) -> Path:
        """The voice's config file, which Piper reads from beside the model: ``<model>.onnx.json``."""
        return self.model.with_name(self.model.name + ".json")

    def voice_config(self) -> dict[str, Any]:
        """The model's config (sample rate, speakers, inference defaults); checks the model is there."""
        if not self.model.is_file():
            raise SpeechUnavailable(
                f"{self._model_key}: the Piper voice model {self.model} does not exist "
                '(copy the .onnx voice onto the device, or set speech.engine = "espeak-ng")',
                "no_model",
            )
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpeechUnavailable(
                f"{self._model_key}: the Piper voice config {self.config_path} is missing "
                "(each .onnx voice comes with a .onnx.json file; copy it beside the model)",
                "no_model",
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpeechUnavailable(
                f"{self._model_key}: the Piper voice config {self.config_path} cannot be read: {exc}", "no_model"
            ) from None
        if not isinstance(config, dict):
            raise SpeechUnavailable(
                f"{self._model_key}: the Piper voice config {self.config_path} is not a JSON object", "no_model"
            )
        return config

    def identity(self) -> str:
        self.voice_config()
        # A voice replaced at the same path (a better model provisioned, its config edited) renders again.
        files = (self.model, self.config_path)
        return " ".join(f"{p.resolve()} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)

    def _speaker(self, config: dict[str, Any], voice: str | None) -> int | None:
        """A speaker of a multi-speaker model, by name; the espeak-ng voice names mean the model's own voice.

        A command written for espeak-ng (``"voice": "vi-vn-x-south"``) plays on a device whose
        configured engine is Piper: changing engines needs no change on the server.
        """
        chosen = voice or self.voice
        if chosen in ESPEAK_VOICES:
            return None
        speakers = config.get("speaker_id_map") or {}
        if chosen in speakers:
            return int(speakers[chosen])
        names = ", ".join(sorted(speakers)) or "none: it has one voice"
        raise SpeechUnavailable(
            f"the Piper model {self.model.name} has no speaker {chosen!r} (its speakers: {names})", "no_voice"
        )

    def check(self, voice: str | None = None) -> None:
        self._speaker(self.voice_config(), voice)
        self.program()

    def command(self, out: Path, *, voice: str | None = None, speed_wpm: int | None = None) -> list[str]:
        """The Piper command line that renders standard input (UTF-8 text) to the WAV ``out``."""
        config = self.voice_config()
        speaker = self._speaker(config, voice)
        inference = config.get("inference") or {}
        base = float(inference.get("length_scale", 1.0))
        # Piper's speed is a length scale: larger is slower. Scale the voice's own default.
        length_scale = base * NATURAL_WPM / (speed_wpm or self.speed_wpm)
        command = [
            *self.program(),
            "--model",
            str(self.model),
            "--output_file",
            str(out),
            "--length_scale",
            f"{length_scale:.3f}",
        ]
        if speaker is not None:
            command += ["--speaker", str(speaker)]
        return command

    def render(self, text: str, out: Path, *, voice: str | None = None, speed_wpm: int | None = None) -> None:
        # One line: Piper reads its input line by line, and the C++ program writes one file per line.
        self._run("piper", self.command(out, voice=voice, speed_wpm=speed_wpm), " ".join(text.split()), out)
