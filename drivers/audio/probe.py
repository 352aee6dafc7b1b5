"""Looking for an output device in a short-lived child process, so the caller never loads PortAudio.

An idle counter must not carry sounddevice, PortAudio and their libraries for a thank-you that may
not be asked for for hours, yet a missing speaker should be reported at start, not at the first
press. :func:`probe_output` asks a child ``python -m drivers.audio.probe`` (the same interpreter and
environment, ``ALSA_CONFIG_PATH`` included), which resolves the device as the player would
(:func:`~drivers.audio.soundcard.find_device`) and prints one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys

from drivers.audio.base import AudioUnavailable

#: How long the child may take (a Python start, PortAudio's scan of ALSA) on a loaded Pi.
PROBE_TIMEOUT_S = 30.0


def probe_output(device: str | int | None, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """The name of output ``device`` (None: the default), as the player will reserve it.

    Raises :exc:`AudioUnavailable` with the reason the player would give (no such device, PortAudio
    missing) or, if the child cannot be run or answer, what went wrong.
    """
    arg = "" if device is None else str(device)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "drivers.audio.probe", arg],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AudioUnavailable(f"could not look for the output device: {exc}") from None
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise AudioUnavailable(f"could not look for the output device: {tail[0]}") from None
    if "error" in answer:
        raise AudioUnavailable(str(answer["error"]))
    return str(answer["name"])


def _main(arg: str) -> int:
    from drivers.audio.soundcard import find_device, load_sounddevice

    try:
        sd = load_sounddevice()
        _index, name = find_device(sd, arg or None, "output")
    except AudioUnavailable as exc:
        print(json.dumps({"error": str(exc)}))
        return 0
    print(json.dumps({"name": name}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1] if len(sys.argv) > 1 else ""))
