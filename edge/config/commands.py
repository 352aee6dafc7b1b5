"""``[commands]``: whom the device trusts to command it."""

from __future__ import annotations

from pydantic import Field, field_validator

from edge.commands.claims import DEFAULT_CLOCK_SKEW_S, DEFAULT_MAX_LIFE_S
from edge.keys import KeyMaterialError, load_trusted_key
from edge.model import EdgeModel


class CommandsConfig(EdgeModel):
    trusted_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Command-verification keys: a table from key id (kid) to a PEM public key file or a "
        "base64url raw Ed25519 public key (`edge keys signing show` prints both). Empty: every command "
        "is rejected.",
    )
    max_life_s: int = Field(
        default=DEFAULT_MAX_LIFE_S, ge=1, le=86400, description="Longest life (exp - iat) a command may have."
    )
    clock_skew_s: int = Field(
        default=DEFAULT_CLOCK_SKEW_S,
        ge=0,
        le=3600,
        description="How far ahead of this clock a command's iat may be (the server's clock runs ahead).",
    )

    @field_validator("trusted_keys")
    @classmethod
    def _keys_load(cls, value: dict[str, str]) -> dict[str, str]:
        errors = []
        for kid, spec in value.items():
            if not kid or len(kid) > 128:
                errors.append(f"key id {kid!r} must be 1 to 128 characters")
                continue
            try:
                load_trusted_key(spec)
            except KeyMaterialError as exc:
                errors.append(f"{kid}: {exc}")
        if errors:
            raise ValueError("; ".join(errors))
        return value
