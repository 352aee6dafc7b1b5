"""The installation on disk: one venv per version, and the symlinks that say which one runs.

::

    /opt/commune-edge/                  update.install_root
        current   -> versions/<release>  what systemd runs (ExecStart=/opt/commune-edge/current/bin/edge run)
        confirmed -> versions/<release>  the last version that proved healthy; the unit's ExecStartPre
                                         runs its `edge update guard`, never the version on trial
        versions/<release>/              a venv; <release> is <version>-<first 12 hex digits of the wheel's
                                         sha256>, as scripts/install-pi names an installed wheel
            .commune-edge-release        written last: a directory without it is an interrupted install
            lib/python3.X/site-packages/commune_edge_deps.pth
                                         the directories the dependencies come from (versions installed
                                         by an update; see :mod:`edge.update.install`)
        downloads/                       wheels while they are fetched and installed

A symlink is switched by writing the new link beside it and renaming it over the old one, so at every
moment ``current`` names a complete version.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from edge.fetch import fsync_dir

log = logging.getLogger(__name__)

#: The file that marks a version directory complete (the same stamp scripts/install-pi writes).
RELEASE_STAMP = ".commune-edge-release"
#: The ``.pth`` file naming the directories a version takes its dependencies from.
DEPS_PTH = "commune_edge_deps.pth"
CURRENT = "current"
CONFIRMED = "confirmed"


def release_name(version: str, sha256: str) -> str:
    """The directory name of a version installed from a wheel with this sha256."""
    return f"{version}-{sha256[:12]}"


def site_packages(venv: Path) -> Path | None:
    """The ``site-packages`` directory of the venv at ``venv`` (None if it has none)."""
    found = sorted(venv.glob("lib/python*/site-packages"))
    return found[0] if found else None


@dataclass(frozen=True)
class Installation:
    """The versions under ``root`` and the ``current``/``confirmed`` symlinks."""

    root: Path

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    def path(self, release: str) -> Path:
        """Where the version ``release`` is (or would be) installed."""
        if not release or "/" in release or release.startswith("."):
            raise ValueError(f"not a release name: {release!r}")
        return self.versions / release

    def link(self, name: str) -> str | None:
        """The release the symlink ``name`` (``current``, ``confirmed``) points at, or None."""
        try:
            target = Path(os.readlink(self.root / name))
        except OSError:
            return None
        if not target.is_absolute():
            target = self.root / target
        if target.parent.resolve() != self.versions.resolve():
            return None
        return target.name

    def current(self) -> str | None:
        return self.link(CURRENT)

    def confirmed(self) -> str | None:
        return self.link(CONFIRMED)

    def point(self, name: str, release: str) -> None:
        """Make the symlink ``name`` point at ``versions/<release>`` in one rename (made durable)."""
        if not self.is_complete(release):
            raise FileNotFoundError(f"{self.path(release)} is not a complete installed version")
        tmp = self.root / f".{name}.new"
        tmp.unlink(missing_ok=True)
        os.symlink(f"versions/{release}", tmp)  # relative: the installation can be moved as a whole
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)
        log.info("%s -> versions/%s", self.root / name, release)

    def is_complete(self, release: str) -> bool:
        """Whether ``versions/<release>`` is a finished installation (its stamp names it)."""
        try:
            return (self.path(release) / RELEASE_STAMP).read_text().strip() == release
        except (OSError, ValueError):
            return False

    def releases(self) -> list[str]:
        """The complete versions, newest installation first."""
        found: list[tuple[float, str]] = []
        try:
            entries = list(self.versions.iterdir())
        except FileNotFoundError:
            return []
        for entry in entries:
            if self.is_complete(entry.name):
                found.append(((entry / RELEASE_STAMP).stat().st_mtime, entry.name))
        return [name for _, name in sorted(found, reverse=True)]

    def running(self) -> str | None:
        """The release this process runs from, if it runs from one of these versions."""
        prefix = Path(sys.prefix).resolve()
        return prefix.name if prefix.parent == self.versions.resolve() else None

    def deps_of(self, release: str) -> list[Path]:
        """The directories ``release`` takes its dependencies from (empty: its own venv has them)."""
        site = site_packages(self.path(release))
        if site is None:
            return []
        try:
            lines = (site / DEPS_PTH).read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        return [Path(line.strip()) for line in lines if line.strip() and not line.startswith(("#", "import"))]

    def bases(self, release: str) -> set[str]:
        """The other versions whose venvs ``release`` takes its dependencies from."""
        out = set()
        versions = self.versions.resolve()
        for path in self.deps_of(release):
            try:
                rel = path.resolve().relative_to(versions)
            except ValueError:
                continue
            if rel.parts:
                out.add(rel.parts[0])
        return out

    def prune(self, keep: int) -> list[str]:
        """Delete versions beyond the ``keep`` newest, and interrupted installations. Never the current or
        confirmed version, nor one a kept version takes its dependencies from. Returns what was deleted."""
        complete = self.releases()
        protected = {r for r in (self.current(), self.confirmed()) if r is not None}
        kept = [r for r in complete if r in protected]
        for r in complete:
            if len(kept) >= keep:
                break
            if r not in kept:
                kept.append(r)
        needed = set(kept)
        todo = list(kept)
        while todo:
            for base in self.bases(todo.pop()):
                if base not in needed:
                    needed.add(base)
                    todo.append(base)
        removed = []
        try:
            entries = sorted(self.versions.iterdir())
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name in needed or entry.name in protected or not entry.is_dir():
                continue
            try:
                shutil.rmtree(entry)
            except OSError as exc:
                log.warning("could not delete the old version %s: %s", entry, exc)
                continue
            removed.append(entry.name)
        if removed:
            log.info("deleted old versions: %s", ", ".join(removed))
        return removed
