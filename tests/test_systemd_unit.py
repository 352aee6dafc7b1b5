"""The unit file: systemd-analyze verify and security, and the daemon's libraries under its MemoryDenyWriteExecute.

systemd 252 (Debian Bookworm) implements ``MemoryDenyWriteExecute=`` as a seccomp filter: mmap with
both PROT_WRITE and PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC, and shmat with SHM_EXEC fail
with EPERM. The test installs the same filter through libseccomp (a dependency of systemd itself)
in a child process, then does there what the daemon does with numpy, sounddevice, OpenCV and PyAV.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sim.counter import speaker_alsa_config

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "commune-edge.service"


def unit_with_runnable_exec(tmp_path: Path) -> Path:
    """The unit as shipped, with ExecStart pointed at an executable that exists on this machine
    (verify checks it; the real one is only there after install-pi)."""
    edge = tmp_path / "edge"
    edge.write_text("#!/bin/sh\n")
    edge.chmod(0o755)
    unit = tmp_path / "commune-edge.service"
    unit.write_text(UNIT.read_text().replace("/opt/commune-edge/current/bin/edge", str(edge)))
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
