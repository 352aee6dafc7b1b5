"""``[speech]``: how announcement text is turned into Vietnamese speech on a loudspeaker."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from edge.config.counter import TtsVoice
from edge.model import EdgeModel


class SpeechConfig(EdgeModel):
    """The speech engine: espeak-ng (always there) or a Piper voice model provisioned on the device."""

    engine: Literal["espeak-ng", "piper"] = Field(
        default="espeak-ng",
        description="espeak-ng: the espeak-ng Vietnamese voices; piper: the Piper voice model in piper_model.",
    )
    voice: TtsVoice = Field(
        default="vi",
        description="Default voice when a command names none: vi (northern), vi-vn-x-central or vi-vn-x-south. "
        "With Piper these mean the model's own voice.",
    )
    speed_wpm: int = Field(default=150, ge=80, le=400, description="Speaking speed, words per minute.")
    numbers: Literal["auto", "north", "south"] = Field(
        default="auto",
        description="How numbers are read: north '105' = 'một trăm linh năm', '1000' = 'một nghìn'; south "
        "'một trăm lẻ năm', 'một ngàn'; auto: south for the vi-vn-x-south voice, north otherwise.",
    )
    piper_model: Path | None = Field(
        default=None,
        validate_default=True,
        description="engine = piper: path of the .onnx voice on the device (its .onnx.json beside it), "
        "e.g. /var/lib/commune-edge/voices/vi_VN-vais1000-medium.onnx.",
    )
    piper_binary: str | None = Field(
        default=None,
        description="engine = piper: the piper program (a path, or a name on PATH); empty: the piper-tts "
        "package installed with commune-edge, else 'piper' on PATH.",
    )
    max_chars: int = Field(
        default=2000,
        ge=1,
        le=20000,
        description="Longest announcement text accepted for speech, in characters (about 2000 is 3 minutes).",
    )
    cache_max_mb: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Rendered speech kept on disk, in MB; beyond it the least recently played renders are "
        "deleted (and rendered again if asked for).",
    )
    render_timeout_s: float = Field(
        default=300.0, gt=0, le=3600, description="A rendering that takes longer than this fails."
    )

    @field_validator("piper_model")
    @classmethod
    def _model_for_piper(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None and info.data.get("engine") == "piper":
            raise ValueError("required when engine = 'piper': the path of the .onnx voice model")
        if value is not None and value.suffix != ".onnx":
            raise ValueError(f"a Piper voice model is an .onnx file, got {value}")
        return value
