"""Mounts that only the test sees: a small tmpfs or an ext4 image in a private mount namespace.

A short-lived child runs behind :func:`private_mount` (``unshare -m``) and its mounts end with it.
A long-lived rig (a daemon, the commands run against it) shares one :class:`MountNamespace`, held
open by a sleeping process: commands enter it with ``nsenter``, and the test reaches its files from
outside through ``/proc/<pid>/root``. Either way nothing outside the test sees the mounts, and the
kernel takes them down (and detaches a loop device) when the last process in the namespace ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

IS_ROOT = os.geteuid() == 0
needs_private_mounts = pytest.mark.skipif(
    not IS_ROOT or shutil.which("unshare") is None, reason="mounting a tmpfs or a read-only bind needs root"
)
needs_loop_ext4 = pytest.mark.skipif(
    not IS_ROOT or not all(shutil.which(t) for t in ("unshare", "nsenter", "mkfs.ext4", "losetup")),
    reason="a loop-mounted ext4 image needs root, unshare, nsenter, mkfs.ext4 and losetup",
)


def run_child(tmp_path: Path, script: str, args: Sequence[str], prefix: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``script`` in a fresh Python (behind ``prefix``: unshare, setpriv) and return the JSON
    object it prints last."""
    path = tmp_path / f"child_{abs(hash(script)) % 10**8}.py"
    path.write_text(script)
    proc = subprocess.run(
        [*prefix, sys.executable, str(path), *args], capture_output=True, text=True, timeout=180, check=False
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def private_mount(shell: str) -> list[str]:
    """A prefix that runs the command after ``shell`` (mount commands) in a private mount namespace."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{shell} && exec "$0" "$@"']


def ext4_image(path: Path, size_mib: int) -> Path:
    """A fresh ext4 image file, formatted as an SD card's root is: a journal, 5 % reserved for root,
    4 KiB blocks. (mkfs.ext4 would give an image this small 1 KiB blocks. SQLite extends its
    memory-mapped ``-shm`` file by writing one byte per 4 KiB page, which then leaves holes, and a
    daemon that fills one in on a full disk dies of SIGBUS: seen here, never on a real card.)"""
    with open(path, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    mkfs = ["mkfs.ext4", "-q", "-F", "-b", "4096", str(path)]
    done = subprocess.run(mkfs, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return path


class MountNamespace:
    """A private mount namespace in which ``shell`` (mount commands) has run, kept open until
    :meth:`close`. Use as a context manager."""

    def __init__(self, shell: str) -> None:
        self.shell = shell
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> MountNamespace:
        # unshare execs sh, which execs sleep: the holder's pid is the Popen's, and it is in the namespace.
        self.proc = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"{self.shell} && echo ready && exec sleep 86400",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait(30)
            assert self.proc.stderr is not None
            pytest.fail(f"mounting failed: {self.proc.stderr.read()}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def prefix(self) -> list[str]:
        """Run a command in the namespace: ``[*ns.prefix(), "df", path]``. ``-F``: nsenter execs the
        command itself, so a signal sent to the process started (kill -9) reaches the command."""
        return ["nsenter", "-F", f"--mount=/proc/{self.pid}/ns/mnt", f"--wd={os.getcwd()}", "--"]

    def outside(self, path: Path) -> Path:
        """Where ``path`` (a path inside the namespace) is seen from the test's own namespace."""
        return Path(f"/proc/{self.pid}/root{path.absolute()}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr) if self.proc is not None else ():
            if stream is not None:
                stream.close()

    def __exit__(self, *exc: object) -> None:
        self.close()
