"""What the event store needs from the machine it runs on: private files, the daemon's lock, which
machine and which boot this is, and a clock that wall-clock jumps do not move.

The state directory holds officer ids, so it is kept from other users whatever the process umask
(``edge emit`` from a shell has 0022; systemd's default is the same). A card cloned into a second Pi
carries the store, its epoch and usually ``/etc/machine-id`` with it, so the store is bound to a
fingerprint of the hardware serial number as well as the machine id.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.clock import kernel_boot_id, since_boot
from edge.exceptions import StoreError, StoreFull

log = logging.getLogger(__name__)

DIR_MODE = 0o750
FILE_MODE = 0o640
LOCK_FILE = "daemon.lock"
#: The part of ``daemon.lock`` written at start and rewritten in place (a page, a file system block).
LOCK_FILE_BYTES = 4096

#: Where the machine's identity is read from, in order. The device-tree serial is the SoC's own
#: serial number on a Raspberry Pi: unlike the two machine-id files it does not travel with a
#: cloned card.
HARDWARE_SERIAL_FILES = (Path("/sys/firmware/devicetree/base/serial-number"),)
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
#: The machine id "should be considered confidential" (machine-id(5)): only a keyed hash of it is
#: stored or reported, as sd_id128_get_machine_app_specific() does.
_FINGERPRINT_KEY = b"commune-edge event store binding"

#: A random id for this process, used as the boot id where the kernel does not give one.
_PROCESS_BOOT = secrets.token_hex(16)


def _read_first(paths: tuple[Path, ...]) -> str | None:
    for path in paths:
        try:
            value = path.read_bytes().strip(b"\x00\n\r\t ").decode("ascii", "replace")
        except OSError:
            continue
        if value:
            return value
    return None


def machine_identity() -> str | None:
    """The raw identity of this machine (hardware serial and machine id), or None if neither can be read."""
    parts = []
    serial = _read_first(HARDWARE_SERIAL_FILES)
    if serial:
        parts.append(f"serial={serial}")
    machine = _read_first(MACHINE_ID_FILES)
    if machine:
        parts.append(f"machine-id={machine}")
    return " ".join(parts) or None


def fingerprint(identity: str) -> str:
    """A keyed hash of a machine identity: safe to store and to report, useless elsewhere."""
    return hmac.new(_FINGERPRINT_KEY, identity.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


@functools.cache
def boot_id() -> str:
    """This boot of the kernel (changes at every power-up), or a per-process id where there is none.
    Read once: no process outlives the boot it started in."""
    return kernel_boot_id() or _PROCESS_BOOT


@dataclass(frozen=True)
class TimeSource:
    """Where the store reads the time. ``wall`` stamps rows for people (``acked_at``); how long a
    dedupe key lives is measured on ``since_boot`` within one ``boot``, so a clock that jumps
    (fake-hwclock, then NTP) cannot cut it short."""

    wall: Callable[[], float] = field(default=time.time)
    since_boot: Callable[[], float] = field(default=since_boot)
    boot: Callable[[], str] = field(default=boot_id)


# -- files ---------------------------------------------------------------------------------------


#: What a file system says when it has no room for one more block or inode (or the user's quota).
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def _owned(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid()


def _narrow(path: Path, allowed: int) -> None:
    """Take every permission outside ``allowed`` away from ``path`` if we own it."""
    try:
        st = path.stat()
        if _owned(st) and stat.S_IMODE(st.st_mode) & ~allowed:
            os.chmod(path, stat.S_IMODE(st.st_mode) & allowed)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # A read-only file system: opening the store will say so more usefully.
        log.warning("cannot narrow the permissions of %s: %s", path, exc.strerror or exc)


def private_dir(path: Path, *, tighten: bool) -> None:
    """Create ``path`` with mode 0750 whatever the umask; with ``tighten``, take group write and
    every permission of others away from an existing one we own (``mkdir`` by a shell makes 0755)."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise StoreError(f"state directory {path} exists and is not a directory") from None
        if tighten:
            _narrow(path, DIR_MODE)
        return
    except OSError as exc:
        # A directory takes a block of its own: on a full disk, that is the full disk's trouble.
        kind = StoreFull if exc.errno in _NO_ROOM else StoreError
        raise kind(f"cannot create the state directory {path}: {exc.strerror or exc}") from exc
    # mkdir's mode passes through the umask; set it outright.
    os.chmod(path, DIR_MODE)


def private_file(path: Path, *, tighten: bool) -> None:
    """Create an empty ``path`` (an empty file is an empty SQLite database) with mode 0640, before
    SQLite would create it with 0644 & ~umask; SQLite gives its -wal and -shm files the mode of the
    database. With ``tighten``, narrow an existing file we own to 0640 and its -wal/-shm with it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        if tighten:
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                _narrow(p, FILE_MODE)
        return
    except OSError as exc:
        kind = StoreFull if exc.errno in _NO_ROOM else StoreError
        raise kind(f"cannot create the event store {path}: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


class DaemonLock:
    """``flock`` on ``state_dir/daemon.lock``, held by the one ``edge run`` that owns the store for
    as long as it runs. The kernel drops it when the process dies, so a crash leaves nothing stale.

    The file's first line is the holder's pid. The rest of its first block is a note the daemon
    rewrites in place (:meth:`note`, read by :func:`read_lock_note`): the block is written whole
    when the lock is taken, so rewriting it needs no new space, and the daemon can still say what
    is wrong when the disk is full and SQLite can commit nothing. ``previous`` is the note the last
    holder left (it may have been killed in the middle of what its note describes).

    The note is a JSON object; its keys, each read by ``edge status``:
    ``disk_full`` (since, refused, last_refused, dir; and ``waiting``, the reason the store could
    not be opened, while the daemon waits for room to open it) and ``link`` (state, since).
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self.previous: dict[str, Any] = {}
        self._writable = False
        self._note_failing = False
        writable = True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            # flock needs no write access: on a file system that went read-only the lock still
            # keeps a second daemon out, and opening the store then reports the real trouble.
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise StoreError(f"cannot open {self.path}: {exc.strerror or exc}") from exc
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse_lock(os.pread(fd, LOCK_FILE_BYTES, 0))[0]
            os.close(fd)
            raise StoreError(f"another edge run (pid {holder or 'unknown'}) holds {self.path}") from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        self._fd: int | None = fd
        if writable:
            self.previous = _parse_lock(os.pread(fd, LOCK_FILE_BYTES, 0))[1]
            os.fchmod(fd, FILE_MODE)
            self._writable = True
            # The last holder's account of a full disk stays until the store has taken it over (it
            # may not, on a disk still full): a start that fails must not lose it. Nothing else of
            # its note is this daemon's to say (its link state was its own).
            carried = {"disk_full": self.previous["disk_full"]} if "disk_full" in self.previous else {}
            if not self.note(carried):
                # No block for the note (a new file on a disk already full): the pid alone, if even
                # that fits; the note is tried again each time it changes.
                with contextlib.suppress(OSError):
                    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def note(self, data: Mapping[str, Any]) -> bool:
        """Replace the note after the pid (a JSON object of at most a few KiB); False if it could
        not be written. Never raises: the note is for people, the store does not depend on it.

        The block is written over the one the file already has (never truncated first), so once
        the file has its block a note needs no new space, however full the disk."""
        if self._fd is None or not self._writable:
            return False
        try:
            os.pwrite(self._fd, _lock_block(data), 0)
        except (OSError, ValueError) as exc:
            if not self._note_failing:
                log.warning("cannot write %s: %s", self.path, exc)
                self._note_failing = True
            return False
        if self._note_failing:
            log.info("%s is written again", self.path)
            self._note_failing = False
        return True

    def release(self) -> None:
        """Let go of the lock. Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock


def _lock_block(data: Mapping[str, Any]) -> bytes:
    """The lock file's first block: the pid, the note, and spaces up to :data:`LOCK_FILE_BYTES`."""
    text = f"{os.getpid()}\n{json.dumps(data, separators=(',', ':'), ensure_ascii=True)}\n".encode("ascii")
    if len(text) > LOCK_FILE_BYTES:
        raise ValueError(f"a daemon.lock note is at most {LOCK_FILE_BYTES} bytes")
    return text.ljust(LOCK_FILE_BYTES, b" ")


def _parse_lock(raw: bytes) -> tuple[int | None, dict[str, Any]]:
    first, _, rest = raw.decode("ascii", "replace").partition("\n")
    pid = int(first) if first.strip().isdigit() else None
    try:
        note = json.loads(rest.strip() or "{}")
    except ValueError:
        note = {}
    return pid, note if isinstance(note, dict) else {}


def read_lock_note(state_dir: Path) -> tuple[int | None, dict[str, Any]]:
    """The pid and the note in ``state_dir/daemon.lock`` as the last daemon left them; ``(None, {})``
    if there is no such file. Only reads: takes no lock, creates nothing."""
    try:
        with open(state_dir / LOCK_FILE, "rb") as f:
            return _parse_lock(f.read(LOCK_FILE_BYTES))
    except OSError:
        return None, {}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (one of another user counts: it is there)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
