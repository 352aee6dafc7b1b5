"""Field validators' view of a section's ``check_*`` result (``[panel]``, ``[relays]``, ``[[camera]]``).

The drivers' ``check_panel``, ``check_relays`` and ``check_camera`` return ``(key_path, message)`` pairs for
a whole section. Each field validator reports its own share: the ``profile`` field what is wrong with
the profile (its own key paths in front), the ``port`` field what is wrong with the port, and so on, so
that pydantic puts every problem under the key a person has to change.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TypeVar

T = TypeVar("T")


def checked_profile(value: T, found: Iterable[tuple[str, str]], *, other_fields: Collection[str] = ()) -> T:
    """``value`` if ``found`` has no problem of the profile; else a ValueError listing them.

    Problems under ``other_fields`` (the section's other fields, such as ``port``) are left to those
    fields' validators. A problem inside the profile file keeps its key path (``buttons[1].pin: ...``).
    """
    mine = [(key, msg) for key, msg in found if key not in other_fields]
    if mine:
        raise ValueError("; ".join(msg if key == "profile" else f"{key}: {msg}" for key, msg in mine))
    return value


def checked_field(value: T, found: Iterable[tuple[str, str]], field: str) -> T:
    """``value`` if ``found`` has no problem under ``field``; else a ValueError listing them."""
    mine = [msg for key, msg in found if key == field]
    if mine:
        raise ValueError("; ".join(mine))
    return value
