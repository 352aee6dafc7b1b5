"""The strict pydantic base shared by the configuration, hardware profiles and message contracts."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

#: Device, commune and root identifiers: lower-case letters, digits and hyphens (DESIGN.md §4), at most
#: 64. One rule, used by the models (:data:`Slug`) and by code that checks a plain string (:data:`SLUG_RE`).
SLUG_PATTERN = r"^[a-z0-9-]{1,64}$"
SLUG_RE = re.compile(SLUG_PATTERN)
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]

#: A UUID in canonical form (lower-case, hyphenated): event ids and command ids. A replay set keyed by
#: the string must not see "ABC…" and "abc…" as two commands.
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
UUID_RE = re.compile(UUID_PATTERN)
Uuid = Annotated[str, StringConstraints(pattern=UUID_PATTERN)]


class EdgeModel(BaseModel):
    """Strict base: unknown keys are errors, so a typo in a config is never silently ignored."""

    model_config = ConfigDict(extra="forbid")


def key_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as a key path: ``panel.buttons[2].pin``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def summarize(found: list[tuple[str, str]], *, prefix: str = "", limit: int = 3) -> str:
    """The first ``limit`` problems on one line (``prefix`` before each key path), and how many more."""
    detail = "; ".join(f"{prefix}{path}: {msg}" for path, msg in found[:limit])
    if len(found) > limit:
        detail += f" (and {len(found) - limit} more)"
    return detail


def problems(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[tuple[str, str]]:
    """Turn a ValidationError into ``(key_path, message)`` pairs a technician can act on."""
    found: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        # Tagged unions and "after" validators add their own names to loc; keep the user's keys.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        msg = msg.removeprefix("Value error, ")
        found.append((key_path(prefix + loc), msg))
    return found
