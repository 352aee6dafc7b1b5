"""When a press counts, and who it is attributed to: rating windows, misuse rules, the officer roster.

Pure logic with the time passed in (``time.monotonic()`` seconds for windows and misuse, a local
``datetime`` for the roster), so the rules are tested without hardware or sleeping. The rating service
asks :meth:`RatingRules.classify` before it commits a press and tells :meth:`RatingRules.record` after
the commit, so a press whose commit failed (and that the panel will deliver again) changes nothing.

Misuse is flagged, never deleted: every press becomes a ``rating`` event; ``misuse`` says why the
commune should not count it (DESIGN.md §4).
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from edge.config import WEEKDAYS, OfficerShift, RatingConfig

WindowKind = Literal["officer", "always"]
Misuse = Literal["burst", "outside_window", "cooldown"]
OpenedBy = Literal["done", "command"]


@dataclass(frozen=True)
class RatingWindow:
    """An open invitation to rate (officer mode): from the officer's done button or ``rating.open``."""

    id: str
    opened_at: float
    deadline: float
    opened_by: OpenedBy
    case: str | None = None

    def remaining(self, now: float) -> float:
        return max(0.0, self.deadline - now)


@dataclass(frozen=True)
class Verdict:
    """How one press is recorded."""

    window: WindowKind | None
    """``officer`` (inside a window), ``always`` (always mode), None (officer mode, no window open)."""
    misuse: Misuse | None
    window_id: str | None = None
    case: str | None = None


class RatingRules:
    """Windows, cooldown and the burst rule for one counter. Not thread-safe: the service locks."""

    def __init__(self, settings: RatingConfig) -> None:
        self.settings = settings
        self._window: RatingWindow | None = None
        self._last_vote: float | None = None
        self._recent: deque[float] = deque()

    def reconfigure(self, settings: RatingConfig) -> None:
        """Apply new settings; an open window keeps its deadline, a mode change closes it."""
        if settings.mode != self.settings.mode:
            self._window = None
            self._last_vote = None
        self.settings = settings

    # -- windows -----------------------------------------------------------------------------------

    def open_window(self, now: float, *, opened_by: OpenedBy, case: str | None = None) -> RatingWindow:
        """Open (or re-open, replacing the one open) a window of ``window_s`` seconds."""
        self._window = RatingWindow(
            id=secrets.token_hex(4),
            opened_at=now,
            deadline=now + self.settings.window_s,
            opened_by=opened_by,
            case=case,
        )
        return self._window

    def window(self, now: float) -> RatingWindow | None:
        """The window open at ``now``, if any (one past its deadline is closed here)."""
        if self._window is not None and now >= self._window.deadline:
            self._window = None
        return self._window

    def close_window(self, window_id: str) -> bool:
        """Close the window ``window_id`` if it is still the open one."""
        if self._window is not None and self._window.id == window_id:
            self._window = None
            return True
        return False

    # -- presses -----------------------------------------------------------------------------------

    def classify(self, now: float) -> Verdict:
        """How a press received at ``now`` is recorded. Changes nothing (see :meth:`record`)."""
        s = self.settings
        recent = sum(1 for t in self._recent if now - t < s.burst_window_s) + 1
        burst: Misuse | None = "burst" if recent >= s.burst_presses else None
        if s.mode == "always":
            cooling = self._last_vote is not None and now - self._last_vote < s.cooldown_s
            return Verdict("always", burst or ("cooldown" if cooling else None))
        w = self.window(now)
        if w is None:
            return Verdict(None, burst or "outside_window")
        return Verdict("officer", burst, w.id, w.case)

    def record(self, now: float, verdict: Verdict) -> None:
        """A press classified as ``verdict`` is committed: the first press closes its window, a
        counted vote starts the cooldown, and every press counts towards the burst rule."""
        self._recent.append(now)
        while self._recent and now - self._recent[0] >= self.settings.burst_window_s:
            self._recent.popleft()
        if verdict.window_id is not None:
            self.close_window(verdict.window_id)
        if verdict.misuse is None:
            self._last_vote = now

    def cooldown_left(self, now: float) -> float:
        """Always mode: seconds until the next press counts again (0 when it would count now)."""
        if self.settings.mode != "always" or self._last_vote is None:
            return 0.0
        return max(0.0, self.settings.cooldown_s - (now - self._last_vote))


def officer_on_shift(roster: list[OfficerShift], when: datetime) -> str | None:
    """The officer whose shift covers local time ``when`` (shifts never overlap: the config checks)."""
    day = WEEKDAYS[when.weekday()]
    at = when.time().replace(tzinfo=None)
    for shift in roster:
        if shift.covers(day, at):
            return shift.officer
    return None
