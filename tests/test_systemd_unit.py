"""The unit file: systemd-analyze verify and security, and what the daemon does under its sandbox.

systemd 252 (Debian Bookworm) implements ``MemoryDenyWriteExecute=`` as a seccomp filter: mmap with
both PROT_WRITE and PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC, and shmat with SHM_EXEC fail
with EPERM. The test installs the same filter through libseccomp (a dependency of systemd itself)
in a child process, then does there what the daemon does with numpy, sounddevice, OpenCV and PyAV.

A software update makes a venv and runs pip inside the daemon's sandbox. That is checked under the
unit's own ``SystemCallFilter=`` lines (expanded by ``systemd-analyze syscall-filter``, the rest
refused with EPERM as ``SystemCallErrorNumber=EPERM`` says), the same MemoryDenyWriteExecute filter,
no capabilities and no new privileges (``CapabilityBoundingSet=``, ``NoNewPrivileges=``), and every
mount read-only but the installation, the state directory and a temporary directory
(``ProtectSystem=strict`` with ``ReadWritePaths=``, ``StateDirectory=`` and ``PrivateTmp=``), in a
mount namespace of its own. No systemd runs here to start the unit itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from edge.store import formats
from edge.update import release_name
from sim.counter import speaker_alsa_config
from sim.harness import write_device_config
from tests.test_update_daemon import WheelShop

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "commune-edge.service"
#: Where install-pi puts the versions; the unit runs and writes there.
INSTALL_ROOT = "/opt/commune-edge"


def unit_with_runnable_exec(tmp_path: Path) -> Path:
    """The unit as shipped, with ExecStart and ExecStartPre pointed at an executable that exists on
    this machine (verify checks them; the real ones are only there after install-pi)."""
    edge = tmp_path / "edge"
    edge.write_text("#!/bin/sh\n")
    edge.chmod(0o755)
    unit = tmp_path / "commune-edge.service"
    text = UNIT.read_text()
    for link in ("current", "confirmed"):
        text = text.replace(f"{INSTALL_ROOT}/{link}/bin/edge", str(edge))
    unit.write_text(text)
    return unit


@pytest.fixture
def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd")
    return exe


def test_the_unit_verifies(tmp_path: Path, analyze: str) -> None:
    done = subprocess.run([analyze, "verify", str(unit_with_runnable_exec(tmp_path))], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip() == "", done.stderr  # not even a warning


def test_the_units_exposure_is_at_most_3(tmp_path: Path, analyze: str) -> None:
    unit = unit_with_runnable_exec(tmp_path)
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=30", str(unit)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    last = [line for line in done.stdout.splitlines() if "Overall exposure level" in line]
    assert last, done.stdout
    level = float(last[0].split(":")[1].split()[0])
    print(last[0])
    assert level <= 3.0


def test_the_unit_says_what_the_daemon_relies_on() -> None:
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    for directive in (
        "Type=notify",
        "WatchdogSec=30s",
        "Restart=always",
        "StateDirectory=commune-edge",
        "ConfigurationDirectory=commune-edge",
        "User=commune-edge",
        "SupplementaryGroups=gpio dialout audio video",
        "LoadCredential=device.key:/etc/commune-edge/private/device.key",
        "DevicePolicy=closed",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=adjtimex",
        # A software update: the guard before every start, and the installation writable.
        "ExecStartPre=-/opt/commune-edge/confirmed/bin/edge update guard",
        "ExecStart=/opt/commune-edge/current/bin/edge run",
        "ProtectSystem=strict",
        "ReadWritePaths=/opt/commune-edge",
    ):
        assert directive in lines, directive


SECCOMP_MDWE = r"""
import ctypes, errno, mmap, sys
lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
SCMP_ACT_ALLOW, SCMP_CMP_MASKED_EQ = 0x7FFF0000, 7
act_eperm = 0x00050000 | errno.EPERM
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [
    ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)
]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
W, X, SHM_EXEC = mmap.PROT_WRITE, mmap.PROT_EXEC, 0o100000
rules = [("mmap", 2, W | X, W | X), ("mprotect", 2, X, X), ("pkey_mprotect", 2, X, X), ("shmat", 2, SHM_EXEC, SHM_EXEC)]
for name, arg, mask, value in rules:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    cmp = (Cmp * 1)(Cmp(arg, SCMP_CMP_MASKED_EQ, mask, value))
    assert lib.seccomp_rule_add_array(ctx, act_eperm, nr, 1, cmp) == 0, name
assert lib.seccomp_load(ctx) == 0
# The filter works: a writable and executable mapping is refused.
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | W | X)
except PermissionError:
    pass
else:
    sys.exit("the filter did not refuse a W+X mapping")
"""

WORKLOAD = r"""
import ctypes, os, sys, wave
import numpy as np
a = np.linspace(0, 1, 48000, dtype=np.float32)
assert abs(float(np.sin(a * 6.28).sum())) < 48000
# sounddevice through PortAudio into ALSA's file plugin, as the counter's thank-you plays.
import sounddevice as sd
tone = (np.sin(np.arange(4800) * 0.1) * 8000).astype(np.int16).reshape(-1, 1)
with sd.OutputStream(samplerate=48000, channels=1, dtype="int16") as stream:
    stream.write(tone)
# A ctypes callback: a libffi closure (gpiozero's backends and PortAudio's callbacks use them).
CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)
assert CB(lambda x: x + 1)(1) == 2
# OpenCV as the camera pipeline uses it: blur, resize, encode, the DNN module loaded.
import cv2
frame = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
small = cv2.resize(cv2.GaussianBlur(frame, (21, 21), 0), (320, 240))
ok, jpg = cv2.imencode(".jpg", small)
assert ok and len(jpg) > 1000
assert cv2.dnn.blobFromImage(small).shape == (1, 3, 240, 320)
# PyAV (FFmpeg) decoding a WAV, as the broadcast sources do.
import av
path = os.environ["MDWE_WAV"]
with wave.open(path, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(48000); w.writeframes(tone.tobytes())
with av.open(path) as container:
    samples = sum(frame.samples for frame in container.decode(audio=0))
assert samples == 4800, samples
print("all ran")
"""


def test_the_daemons_libraries_run_under_memory_deny_write_execute(tmp_path: Path) -> None:
    alsa = speaker_alsa_config(tmp_path / "asound.conf", tmp_path / "out.wav")
    env = {"ALSA_CONFIG_PATH": str(alsa), "MDWE_WAV": str(tmp_path / "in.wav"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", SECCOMP_MDWE + WORKLOAD], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all ran" in done.stdout
    assert (tmp_path / "out.wav").stat().st_size > 4800 * 2


# -- a software update under the unit's sandbox ----------------------------------------------------


@cache
def syscall_group(name: str) -> frozenset[str]:
    """The system calls of a ``@group``, nested groups expanded, as this machine's systemd lists them."""
    listed = subprocess.run(
        ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    found: set[str] = set()
    for line in listed[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            found |= syscall_group(word) if word.startswith("@") else {word}
    return frozenset(found)


def unit_syscalls(text: str) -> set[str]:
    """The system calls the unit's ``SystemCallFilter=`` lines allow, read as systemd reads them: the
    first line makes an allow list (with ``@default`` in it), a later ``~`` line takes calls out of
    it, a later plain line puts them (back) in."""
    allowed: set[str] | None = None
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key != "SystemCallFilter":
            continue
        deny = value.startswith("~")
        calls: set[str] = set()
        for name in value.lstrip("~").split():
            calls |= syscall_group(name) if name.startswith("@") else {name}
        if allowed is None:
            assert not deny, "the unit's first SystemCallFilter= line is an allow list"
            allowed = set(syscall_group("@default")) | calls
        elif deny:
            allowed -= calls
        else:
            allowed |= calls
    assert allowed is not None, "the unit has no SystemCallFilter="
    return allowed


def test_the_units_syscall_filter_reads_as_intended(analyze: str) -> None:
    allowed = unit_syscalls(UNIT.read_text())
    # What the daemon and an update need: files, processes, sockets, and reading the NTP state.
    for call in ("execve", "clone3", "openat", "symlink", "renameat2", "unlinkat", "fsync", "socket", "adjtimex"):
        assert call in allowed, call
    # What @privileged, @resources and @obsolete took out again.
    for call in ("chown", "fchownat", "setuid", "settimeofday", "setrlimit", "sched_setaffinity", "mount"):
        assert call not in allowed, call


#: The unit's allow list (``$UNIT_SYSCALLS``, JSON) as a seccomp filter; anything else fails with EPERM.
SECCOMP_ALLOW_LIST = r"""
import json, os
allowed = json.loads(os.environ["UNIT_SYSCALLS"])
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
ctx = lib.seccomp_init(act_eperm)
for name in allowed:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:  # systemd too skips the calls this architecture does not have
        assert lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None) == 0, name
assert lib.seccomp_load(ctx) == 0
# The filter works: a call outside the list is refused.
try:
    os.sched_setaffinity(0, os.sched_getaffinity(0))
except PermissionError:
    pass
else:
    sys.exit("the filter did not refuse sched_setaffinity")
"""

#: What the daemon does for a device.update, from the wheel on: install it as a new version (a venv,
#: pip), check it with itself (its probe, edge --version, edge config validate, edge doctor --quick),
#: switch current and confirmed.
UPDATE_WORKLOAD = r"""
import errno
from pathlib import Path
from edge.update import Installation
from edge.update.install import check_release, install_release
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, status
assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2", status
try:
    Path(os.environ["READ_ONLY_PROBE"]).write_text("written")
except OSError as exc:
    assert exc.errno == errno.EROFS, exc
else:
    sys.exit("wrote outside the writable paths")
inst = Installation(Path(os.environ["INSTALL_ROOT"]))
release, wheel = os.environ["RELEASE"], Path(os.environ["WHEEL"])
target = install_release(inst, wheel, release, timeout_s=300)
on_disk = json.loads(os.environ["ON_DISK"])
checks = check_release(target, os.environ["VERSION"], Path(os.environ["EDGE_CONFIG"]), on_disk, timeout_s=300)
inst.point("current", release)
inst.point("confirmed", release)
print(json.dumps({"checks": checks, "current": inst.current(), "confirmed": inst.confirmed()}))
"""

#: A mount namespace of its own: the writable paths (the arguments) bound onto themselves, every
#: other mount but /proc, /sys and /dev read-only; then the command without any capability.
SANDBOX = r"""
set -eu
for dir in "$@"; do mount --bind "$dir" "$dir"; done
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do
    case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
    for dir in "$@"; do [ "$mp" = "$dir" ] && continue 2; done
    mount -o remount,bind,ro "$mp"
done
exec setpriv --bounding-set=-all --inh-caps=-all --no-new-privs "$SANDBOXED_PYTHON" -c "$SANDBOXED_CODE"
"""


def test_an_update_installs_and_checks_its_version_under_the_units_sandbox(tmp_path: Path, analyze: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("a mount namespace with read-only mounts needs root")
    wheel = WheelShop(tmp_path / "wheels")["B"]
    release = release_name(wheel.version, wheel.sha256)
    install_root, state, scratch = tmp_path / "opt", tmp_path / "state", tmp_path / "tmp"
    for d in (install_root, state, scratch):
        d.mkdir()
    config = write_device_config(tmp_path / "edge.toml", "mqtt://127.0.0.1:9", state_dir=state)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(state),  # the user's home is its state directory
        "TMPDIR": str(scratch),  # PrivateTmp=: a /tmp of the daemon's own
        "EDGE_CONFIG": str(config),
        "EDGE_UPDATE__INSTALL_ROOT": str(install_root),
        "UNIT_SYSCALLS": json.dumps(sorted(unit_syscalls(UNIT.read_text()))),
        "READ_ONLY_PROBE": str(tmp_path / "written-outside"),
        "INSTALL_ROOT": str(install_root),
        "RELEASE": release,
        "WHEEL": str(wheel.path),
        "VERSION": wheel.version,
        "ON_DISK": json.dumps({"store_compat": formats.STORE_COMPAT, "desired_compat": formats.DESIRED_COMPAT}),
        "SANDBOXED_PYTHON": sys.executable,
        "SANDBOXED_CODE": SECCOMP_MDWE + SECCOMP_ALLOW_LIST + UPDATE_WORKLOAD,
    }
    rw = [str(install_root), str(state), str(scratch)]
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sandbox", *rw],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["current"] == report["confirmed"] == release
    assert report["checks"]["version"] == wheel.version and report["checks"]["config"] == "valid"
    assert not (tmp_path / "written-outside").exists()
    # The new version was made by the sandboxed process and runs outside it as it will after the switch.
    version = subprocess.run(
        [str(install_root / "current" / "bin" / "edge"), "--version"], capture_output=True, text=True, timeout=120
    )
    assert version.stdout.strip() == f"commune-edge {wheel.version}", version.stdout + version.stderr
