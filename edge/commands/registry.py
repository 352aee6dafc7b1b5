"""Command handlers, registered by name (DESIGN.md §4 "Commands v1").

A service registers what it can do::

    class OpenArgs(EdgeModel):
        case: str | None = Field(default=None, description="Case code from the queue system.")

    registry.register("rating.open", OpenArgs, self._on_open, description="Open a rating window.")

The command channel calls a handler only for a command that passed every check (signature, claims,
replay); the handler gets the validated arguments (its ``args_model``, strict, ``extra="forbid"``:
arguments that do not fit are rejected as ``invalid_args`` before the handler runs) and a
:class:`CommandContext`. It returns a JSON-able ``dict`` (the ``result`` of the ``succeeded`` ack) or
``None``, or raises :class:`CommandFailed` for a ``failed`` ack with a reason. Any other exception is
a ``failed`` ack with reason ``internal_error`` and is logged with its traceback.

Where a handler runs (:mod:`edge.commands.runner`): on a thread of its own. Commands start in
arrival order, each when the one before it has ended or has run for half a second, so a slow
``device.selftest`` holds up the next command for at most that long. ``urgent=True`` puts a command
on a lane of its own that ordinary commands cannot fill; :data:`URGENT_COMMANDS` are urgent whoever
registers them. ``serial=True`` runs a command one at a time (``config.desired``: two versions must
not be applied at once). A handler may therefore run while other handlers run: it guards the state
it shares. A handler that starts something long (a broadcast) starts it and returns, reporting later
through its own events: then it keeps its place in the order of commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from edge.commands.claims import Claims
from edge.exceptions import CommandRejected, EdgeError
from edge.model import EdgeModel, problems, summarize

#: Commands that stop or start what people hear: they never wait behind an ordinary command.
URGENT_COMMANDS = frozenset({"broadcast.stop_all", "broadcast.cancel", "broadcast.play"})


class CommandFailed(EdgeError, RuntimeError):
    """Raised by a handler: the command was valid but could not be carried out."""

    def __init__(self, reason: str, detail: str = "", result: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.result = dict(result or {})


@dataclass(frozen=True)
class CommandContext:
    """What a handler knows about the command it runs, besides its arguments."""

    claims: Claims
    #: Send an ``in_progress`` ack now, with this partial result (durable, like every ack).
    progress: Callable[[Mapping[str, Any]], None]


Handler = Callable[[Any, CommandContext], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Registration:
    """A command this device can run, and how it is run."""

    name: str
    args_model: type[BaseModel]
    handler: Handler
    description: str
    #: On the urgent lane: never behind an ordinary command.
    urgent: bool = False
    #: One at a time, in arrival order.
    serial: bool = False

    def parse_args(self, args: Mapping[str, Any]) -> BaseModel:
        """The arguments as ``args_model``; raises ``CommandRejected("invalid_args", ...)``."""
        try:
            return self.args_model.model_validate(dict(args))
        except ValidationError as exc:
            raise CommandRejected("invalid_args", summarize(problems(exc), prefix="args.")) from None


class NoArgs(EdgeModel):
    """For commands that take no arguments: ``{}`` only."""


class CommandRegistry:
    """Command name → handler. One registry per daemon; names are registered once."""

    def __init__(self) -> None:
        self._handlers: dict[str, Registration] = {}

    def register(
        self,
        name: str,
        args_model: type[BaseModel],
        handler: Handler,
        *,
        description: str,
        urgent: bool | None = None,
        serial: bool = False,
    ) -> None:
        """Register ``handler`` for ``name``. ``urgent`` defaults to whether ``name`` is one of
        :data:`URGENT_COMMANDS`; ``serial`` runs the command one at a time (module docstring)."""
        if name in self._handlers:
            raise ValueError(f"command {name!r} is already registered")
        urgent = name in URGENT_COMMANDS if urgent is None else urgent
        self._handlers[name] = Registration(name, args_model, handler, description, urgent, serial)

    def get(self, name: str) -> Registration:
        """The registration for ``name``; raises ``CommandRejected("unknown_command", ...)``."""
        try:
            return self._handlers[name]
        except KeyError:
            raise CommandRejected("unknown_command", f"this device has no command {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[Registration]:
        return iter(sorted(self._handlers.values(), key=lambda r: r.name))
