"""Signed software updates with automatic rollback (``device.update``).

A new version is installed beside the running one, checked with itself, switched to with one
rename of a symlink, and kept only if it proves healthy in time; otherwise the version before it
comes back by itself. The pieces:

- :mod:`~edge.update.layout`: the installation on disk (``versions/<release>/`` venvs, the
  ``current`` and ``confirmed`` symlinks, pruning);
- :mod:`~edge.update.install`: installing a wheel offline against the running version's
  dependencies, and the checks run with the new version;
- :mod:`~edge.update.marker`: ``<state_dir>/update.json``, the switch on trial and its outcome;
- :mod:`~edge.update.guard`: ``edge update guard``, run before every start from the confirmed version;
- :mod:`~edge.update.updater`: the command, the new version's trial and the ``update`` events.

What the state on disk must satisfy for two versions to take turns on it is
:mod:`edge.store.formats`.
"""

from __future__ import annotations

from edge.update.guard import guard
from edge.update.layout import Installation, release_name
from edge.update.marker import MarkerFile, UpdateMarker
from edge.update.updater import UpdateArgs, Updater, register_update

__all__ = [
    "Installation",
    "MarkerFile",
    "UpdateArgs",
    "UpdateMarker",
    "Updater",
    "guard",
    "register_update",
    "release_name",
]
