"""Capped exponential backoff, for every loop that tries again: the broker link, a camera stream,
a rating panel whose lines are held elsewhere."""

from __future__ import annotations

import random


class Backoff:
    """Capped exponential backoff with jitter: the n-th delay is drawn from [d/2, d], where d is
    ``minimum`` doubled n times and capped at ``maximum``. The jitter keeps devices that lost the same
    broker (or cameras the same switch) from coming back in step. ``reset()`` after a success."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self._attempt = 0

    def next(self) -> float:
        delay = min(self.maximum, self.minimum * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._attempt = 0
