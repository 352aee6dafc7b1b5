"""The claims of a signed command (DESIGN.md §4) and the checks a device makes on them.

``{"v":1,"cmd_id":uuid,"device":...,"commune":...,"name":...,"args":{...},"iat":unix,"exp":unix}``

Decisions, and why:

- **Strict schema.** Every key above is required, and no other key is allowed. A v1 device must not
  silently ignore a claim it does not understand: a later version might add one that *narrows* what
  a command may do, and an old device ignoring it would do more than the server meant. New claims
  come with a new ``v``. Types are strict too: ``v`` is the integer 1 (not ``true``, ``1.0`` or
  ``"1"``), ``iat``/``exp`` are integer Unix seconds, ``args`` is an object.
- **cmd_id** must be a UUID in canonical form (lower-case, hyphenated). The replay check keys the
  seen-set by this string; accepting ``"ABC…"`` and ``"abc…"`` as the same UUID but different strings
  would let one command run twice.
- **name** is a dotted command name, ``broadcast.play``: lower-case words of letters, digits and
  underscores, at least two, joined by dots. Whether the device knows it is the channel's business
  (``unknown_command``), not this module's.
- **Time.** A command is valid while ``iat - skew_s <= now <= exp`` (DESIGN.md §4). The skew forgives
  a device clock that runs behind the server's, so a fresh command is not "from the future". It is
  deliberately **not** added to ``exp``: the seen-set keeps a ``cmd_id`` until ``exp`` and no longer, so
  accepting anything after ``exp`` would reopen the door to replays once the entry is dropped.
  ``now`` is the device's *command time* (:class:`edge.clock.CommandClock`): the synchronised clock,
  or, after a power cut without NTP, what the device knows for sure about the time; with only a
  lower bound, ``not_yet_valid`` cannot be judged, and a command issued before the last synchronised
  time is ``expired``.
- **Life.** ``exp - iat`` must be positive and at most ``max_life_s``: a long-lived command is a
  long-lived replay risk, and a stolen one is worth more.

:func:`check_claims` checks in this order and reports the first failure: ``malformed`` (schema),
``wrong_device`` (device or commune not ours), ``too_long_lived``, ``not_yet_valid``, ``expired``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StrictInt, StringConstraints, ValidationError, field_validator

from edge.clock import CommandTime
from edge.exceptions import CommandRejected
from edge.model import UUID_RE, EdgeModel, Slug, problems, summarize

#: The reasons :func:`check_claims` gives.
REASONS = frozenset({"malformed", "wrong_device", "not_yet_valid", "expired", "too_long_lived"})

#: Defaults of the ``[commands]`` config section (DESIGN.md §4, issue 3).
DEFAULT_MAX_LIFE_S = 300
DEFAULT_CLOCK_SKEW_S = 30

#: Life given to a command by :func:`make_claims` unless told otherwise.
DEFAULT_LIFE_S = 120

CLAIMS_VERSION = 1


#: Unix seconds, bounded so that arithmetic and date conversion never overflow (year 2^53 s is far).
UnixTime = Annotated[StrictInt, Field(ge=0, le=2**53 - 1)]

CommandName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", max_length=64, strict=True),
]


class Claims(EdgeModel):
    """The claims of one command, as signed by the commune server."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    v: StrictInt = Field(description="Claims format version; 1.")
    cmd_id: str = Field(description="The command's unique id: a UUID in canonical lower-case form.")
    device: Slug = Field(description="The device the command is for.")
    commune: Slug = Field(description="The commune of that device.")
    name: CommandName = Field(description="Dotted command name, e.g. 'broadcast.play'.")
    args: dict[str, Any] = Field(description="The command's arguments; checked by its handler.")
    iat: UnixTime = Field(description="Issued at, Unix seconds (server clock).")
    exp: UnixTime = Field(description="Expires at, Unix seconds; the command is void after it.")

    @field_validator("v")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != CLAIMS_VERSION:
            raise ValueError(f"claims version {value} is not supported (only {CLAIMS_VERSION})")
        return value

    @field_validator("cmd_id")
    @classmethod
    def _canonical_uuid(cls, value: str) -> str:
        if not UUID_RE.fullmatch(value):
            raise ValueError("must be a UUID in canonical lower-case form")
        return value

    @property
    def life_s(self) -> int:
        """How long the command was made to live (``exp - iat``)."""
        return self.exp - self.iat


def check_claims(
    raw: Mapping[str, Any],
    *,
    device: str,
    commune: str,
    now: float | CommandTime,
    skew_s: float = DEFAULT_CLOCK_SKEW_S,
    max_life_s: float = DEFAULT_MAX_LIFE_S,
    enforce_exp: bool = True,
) -> Claims:
    """Validate verified claims for this device at time ``now``.

    ``now`` is Unix seconds, or a :class:`~edge.clock.CommandTime` from the device's
    :class:`~edge.clock.CommandClock` (a lower bound while the clock is not synchronised).
    ``enforce_exp=False`` leaves out both ``expired`` checks, for a ``config.desired`` that is
    stale by its version rather than its time (:mod:`edge.commands.desired`).

    Raises :class:`CommandRejected` with reason ``malformed``, ``wrong_device``, ``too_long_lived``,
    ``not_yet_valid`` or ``expired`` (checked in that order); see the module docstring for the rules.
    """
    at = now if isinstance(now, CommandTime) else CommandTime(float(now), "synced")
    clock = f" ({at.note})" if at.note else ""
    if not isinstance(raw, Mapping):
        raise CommandRejected("malformed", "claims are not a JSON object")
    try:
        claims = Claims.model_validate(dict(raw))
    except ValidationError as exc:
        raise CommandRejected("malformed", summarize(problems(exc))) from None
    if claims.device != device or claims.commune != commune:
        raise CommandRejected("wrong_device", f"for {claims.commune}/{claims.device}, this is {commune}/{device}")
    if claims.exp <= claims.iat:
        raise CommandRejected("too_long_lived", f"exp {claims.exp} is not after iat {claims.iat}")
    if claims.life_s > max_life_s:
        raise CommandRejected("too_long_lived", f"life {claims.life_s} s exceeds the maximum {max_life_s:g} s")
    if at.exact and claims.iat - skew_s > at.now:
        raise CommandRejected(
            "not_yet_valid",
            f"iat is {claims.iat - at.now:.0f} s ahead of this clock (skew allowed {skew_s:g} s){clock}",
        )
    if not enforce_exp:
        return claims
    if at.now > claims.exp:
        raise CommandRejected("expired", f"expired {at.now - claims.exp:.0f} s ago{clock}")
    if at.issued_after is not None and claims.iat + skew_s < at.issued_after:
        raise CommandRejected(
            "expired", f"issued {at.issued_after - claims.iat:.0f} s before the last synchronised time{clock}"
        )
    return claims


def make_claims(
    *,
    device: str,
    commune: str,
    name: str,
    args: Mapping[str, Any] | None = None,
    life_s: int = DEFAULT_LIFE_S,
    now: float | None = None,
    cmd_id: str | None = None,
) -> dict[str, Any]:
    """Claims for a new command, for the signing side (``edge command send``, server tools, tests).

    Fills ``cmd_id`` (a random UUIDv4: unguessable, and commands need no ordering), ``iat`` = ``now``
    (default: this clock) and ``exp`` = ``iat + life_s``. The result passes :class:`Claims`
    validation or this raises ``ValueError``; keep ``life_s`` within the devices' ``max_life_s``.
    """
    if life_s <= 0:
        raise ValueError(f"life_s must be positive, not {life_s}")
    iat = int(time.time() if now is None else now)
    raw: dict[str, Any] = {
        "v": CLAIMS_VERSION,
        "cmd_id": cmd_id if cmd_id is not None else str(uuid.uuid4()),
        "device": device,
        "commune": commune,
        "name": name,
        "args": dict(args or {}),
        "iat": iat,
        "exp": iat + int(life_s),
    }
    try:
        Claims.model_validate(raw)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{path}: {msg}" for path, msg in problems(exc))) from None
    return raw
