"""A simulated sound card, test signals and a meter for what was played (DESIGN.md §7, "Audio").

:class:`SimSoundCard` is the real audio path with the speaker and the microphone replaced: the real
sounddevice → PortAudio → ALSA chain runs against an ALSA config (``ALSA_CONFIG_PATH``) whose
default PCM is

* for playback, ALSA's ``file`` plugin writing raw samples into a FIFO that this module reads at the
  card's rate, as a DAC would, and records into one WAV (every item, one after another) — so a
  ``write()`` blocks as on a real card, ``stop()`` cuts a sound that is really still playing, and a
  cut shows in the recording;
* for capture, ALSA's ``file`` plugin with ``infile`` reading a FIFO that this module fills at the
  card's rate with the signal a test chose (a tone at a known level, a WAV file, or silence).

Why FIFOs rather than plain files: ALSA's ``null`` PCM under the ``file`` plugin takes samples as fast
as they come, so a two-second announcement would "play" in a millisecond and a capture stream would
spin a core; and ``infile`` reads raw samples (a WAV header would be heard as a click). The ALSA side
converts (``plug``) whatever rate and channel count the player opens to the card's format, S16_LE.

::

    with SimSoundCard(tmp_path / "card", rate=48000) as card:
        card.set_capture_tone(1000, rms_dbfs=-20)     # what the microphone hears
        env = card.env                                # {"ALSA_CONFIG_PATH": ...} for a subprocess
        ...                                           # or card.activate() for this process
        card.items[-1].seconds, measure_wav(card.wav).sounding

:func:`write_tone` writes test files in every format the player reads, :class:`HeldSource` stalls like
a stream that stopped sending, :func:`measure` and :func:`measure_wav` give duration, RMS and peak dBFS
and the spans where there is sound (to find cuts).
Levels are ``20·log10(RMS)`` of samples in [-1, 1], as in :mod:`drivers.audio`.
"""

from __future__ import annotations

import array
import collections
import contextlib
import ctypes
import fcntl
import logging
import os
import select
import struct
import termios
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from drivers.audio.base import SignalLevel, level_dbfs

log = logging.getLogger(__name__)

#: The playback FIFO's size: what ALSA may write ahead of the simulated DAC (43 ms at 48 kHz mono).
PLAYBACK_PIPE_BYTES = 4096
#: The capture FIFO's size: more than ALSA's capture ring buffer, which one read must fill (see below).
CAPTURE_PIPE_BYTES = 16384
#: The simulated DAC and ADC move samples in steps this long.
STEP_S = 0.01

#: soundfile's (format, subtype) for each test file suffix.
FILE_FORMATS: dict[str, tuple[str, str]] = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}


# -- test signals -------------------------------------------------------------------------------


def tone(
    hz: float = 1000.0, seconds: float = 2.0, *, rms_dbfs: float = -12.0, rate: int = 48000, channels: int = 1
) -> np.ndarray:
    """A sine of RMS level ``rms_dbfs`` as float32 shaped ``(frames, channels)``."""
    amplitude = np.sqrt(2.0) * 10.0 ** (rms_dbfs / 20.0)
    t = np.arange(round(seconds * rate)) / rate
    mono = (amplitude * np.sin(2.0 * np.pi * hz * t)).astype(np.float32)
    return np.repeat(mono.reshape(-1, 1), channels, axis=1)


def write_tone(
    path: Path,
    *,
    hz: float = 1000.0,
    seconds: float = 2.0,
    rms_dbfs: float = -12.0,
    rate: int = 48000,
    channels: int = 1,
) -> Path:
    """Write a tone file; the format follows the suffix (.wav .flac .ogg .opus .mp3). Opus needs 48 kHz."""
    import soundfile

    fmt, subtype = FILE_FORMATS[path.suffix.lower()]
    samples = tone(hz, seconds, rms_dbfs=rms_dbfs, rate=rate, channels=channels)
    soundfile.write(str(path), samples, rate, format=fmt, subtype=subtype)
    return path


class HeldSource:
    """A :class:`~drivers.audio.PcmSource` that stops giving samples after ``hold_after_s`` and waits in
    ``read()`` until :meth:`release` — a stalled stream, or a hung decoder.

    ``held`` is set once a read waits. After the release it goes on with ``inner``'s samples.
    """

    def __init__(self, inner: Any, hold_after_s: float, *, timeout: float = 60.0) -> None:
        self._inner = inner
        self.rate = int(inner.rate)
        self.channels = int(inner.channels)
        self.duration_s: float | None = inner.duration_s
        self._hold_at = round(hold_after_s * self.rate)
        self._given = 0
        self._timeout = timeout
        self.held = threading.Event()
        self._released = threading.Event()

    def read(self, frames: int) -> np.ndarray:
        if self._given >= self._hold_at and not self._released.is_set():
            self.held.set()
            self._released.wait(self._timeout)
        elif self._given < self._hold_at:
            frames = min(frames, self._hold_at - self._given)  # the hold falls exactly on a block boundary
        block: np.ndarray = self._inner.read(frames)
        self._given += int(block.shape[0])
        return block

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._inner.close()


# -- measuring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """What a person with a level meter would say about a recording."""

    rate: int
    frames: int
    rms_dbfs: float | None
    """RMS over the whole recording, silences included; None if it is empty."""
    peak_dbfs: float | None
    sounding: list[tuple[float, float]]
    """``(start_s, end_s)`` spans where the level is above the threshold, in order."""
    sound_rms_dbfs: float | None
    """RMS over the sounding spans only (the level of what was played, gaps left out)."""

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate

    @property
    def sound_s(self) -> float:
        """Seconds of sound, all spans together."""
        return sum(end - start for start, end in self.sounding)

    def gaps(self, min_s: float = 0.05) -> list[tuple[float, float]]:
        """Silent stretches of at least ``min_s`` between sounding spans (where one item was cut)."""
        return [
            (a_end, b_start)
            for (_, a_end), (b_start, _) in zip(self.sounding, self.sounding[1:], strict=False)
            if b_start - a_end >= min_s
        ]


def measure(samples: np.ndarray, rate: int, *, threshold_dbfs: float = -50.0, window_s: float = 0.01) -> Measured:
    """Measure float (or int16) samples shaped ``(frames,)`` or ``(frames, channels)``."""
    x = samples.astype(np.float64)
    if samples.dtype == np.int16:
        x /= 32768.0
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    total = SignalLevel()
    total.add(x)
    win = max(1, int(window_s * rate))
    n_win = x.shape[0] // win
    spans: list[tuple[float, float]] = []
    loud_sq = 0.0
    loud_n = 0
    if n_win:
        mean_sq = np.mean(x[: n_win * win].reshape(n_win, win * x.shape[1]) ** 2, axis=1)
        loud = mean_sq > 10.0 ** (threshold_dbfs / 10.0)
        loud_sq = float(np.sum(mean_sq[loud]))
        loud_n = int(np.count_nonzero(loud))
        start: int | None = None
        for i, on in enumerate([*loud.tolist(), False]):
            if on and start is None:
                start = i
            elif not on and start is not None:
                spans.append((start * win / rate, i * win / rate))
                start = None
    return Measured(
        rate=rate,
        frames=int(x.shape[0]),
        rms_dbfs=total.rms_dbfs,
        peak_dbfs=total.peak_dbfs,
        sounding=spans,
        sound_rms_dbfs=level_dbfs(loud_sq / loud_n) if loud_n else None,
    )


def measure_wav(path: Path, **kwargs: Any) -> Measured:
    """:func:`measure` a WAV (or any file soundfile reads)."""
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return measure(data, int(rate), **kwargs)


# -- the simulated card -------------------------------------------------------------------------


@dataclass
class PlayedItem:
    """One stream the card played: from the PCM's first sample to its close."""

    start_frame: int
    """Where the item begins in :attr:`SimSoundCard.wav`."""
    started_at: float
    """``time.monotonic()`` when its first samples arrived."""
    frames: int = 0
    ended_at: float | None = None
    """``time.monotonic()`` when the player closed the stream; None while it plays."""
    rms_dbfs: float | None = None
    peak_dbfs: float | None = None
    rate: int = 48000

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def _set_pipe_size(fd: int, size: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError as exc:  # EBUSY if more is already buffered; the card is then just less tight
        log.debug("could not resize the FIFO: %s", exc)


class SimSoundCard:
    """A sound card made of two FIFOs and an ALSA config; see the module docstring. A context manager."""

    def __init__(self, directory: Path, *, rate: int = 48000, channels: int = 1) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.rate = rate
        self.channels = channels
        self.wav = directory / "played.wav"
        """Everything played, item after item (see :attr:`items` for where each begins)."""
        self.alsa_config = directory / "asound.conf"
        self._playback_fifo = directory / "playback.fifo"
        self._capture_fifo = directory / "capture.fifo"
        for fifo in (self._playback_fifo, self._capture_fifo):
            with contextlib.suppress(FileNotFoundError):
                fifo.unlink()
            os.mkfifo(fifo)
        self.alsa_config.write_text(self._alsa_text(), encoding="utf-8")
        self._lock = threading.Lock()
        self._items: list[PlayedItem] = []
        self._total_frames = 0
        self._capture = np.zeros((0,), dtype="<i2")
        self._capture_pos = 0
        self._capture_lock = threading.Lock()  # one writer into the capture FIFO at a time
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wav: wave.Wave_write | None = None
        self._wav_file: Any = None
        self._capture_fd = -1
        self._playback_fd = -1
        self._closes: _CloseWatch | None = None
        self._saved_env: str | None = None
        self._active = False

    # -- set-up ---------------------------------------------------------------------------------

    def _alsa_text(self) -> str:
        def plug(inner: str, channels: int) -> str:
            return f"{{ type plug slave {{ pcm {{ {inner} }} format S16_LE rate {self.rate} channels {channels} }} }}"

        playback = plug(f'type file slave.pcm "null" file "{self._playback_fifo}" format "raw"', self.channels)
        capture = plug(f'type file slave.pcm "null" file "/dev/null" infile "{self._capture_fifo}" format "raw"', 1)
        return (
            "# A simulated sound card (sim/audio.py): playback and capture are FIFOs paced by the simulator.\n"
            "</usr/share/alsa/alsa.conf>\n"
            f"pcm.!default {{ type asym playback.pcm {playback} capture.pcm {capture} }}\n"
        )

    @property
    def env(self) -> dict[str, str]:
        """The environment that points a process's ALSA at this card."""
        return {"ALSA_CONFIG_PATH": str(self.alsa_config)}

    def start(self) -> Self:
        """Start the simulated DAC and ADC. Idempotent."""
        if self._threads:
            return self
        # Unbuffered, so the samples and the header (which wave patches after every write) are on disk
        # at once and the WAV can be read while the card plays.
        self._wav_file = open(self.wav, "wb", buffering=0)  # noqa: SIM115  # closed in close()
        self._wav = wave.open(self._wav_file, "wb")  # noqa: SIM115
        self._wav.setnchannels(self.channels)
        self._wav.setsampwidth(2)
        self._wav.setframerate(self.rate)
        self._wav.writeframes(b"")  # the header now: a card that played nothing holds an empty WAV, not no WAV
        # Both FIFOs are held open read-write: ALSA's blocking opens never wait for the other end, a
        # reader never sees end-of-file between two streams, and stale capture samples can be drained.
        self._playback_fd = os.open(self._playback_fifo, os.O_RDWR | os.O_NONBLOCK)
        _set_pipe_size(self._playback_fd, PLAYBACK_PIPE_BYTES)
        self._closes = _CloseWatch(self._playback_fifo, _CloseWatch.CLOSE_WRITE)  # where one stream ends
        self._capture_fd = os.open(self._capture_fifo, os.O_RDWR | os.O_NONBLOCK)
        _set_pipe_size(self._capture_fd, CAPTURE_PIPE_BYTES)
        self._listeners_gone = _CloseWatch(self._capture_fifo, _CloseWatch.CLOSE_NOWRITE)
        self._fill_capture()
        for target, name in ((self._run_dac, "sim-card-dac"), (self._run_adc, "sim-card-adc")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def activate(self) -> None:
        """Point this process's PortAudio at the card (``ALSA_CONFIG_PATH`` and a PortAudio re-scan).

        Only while no stream is open: re-scanning closes them. :meth:`close` undoes it.
        """
        import sounddevice

        if not self._active:
            self._saved_env = os.environ.get("ALSA_CONFIG_PATH")
            os.environ["ALSA_CONFIG_PATH"] = str(self.alsa_config)
            self._active = True
        # How sounddevice's maintainer says to see a changed device list (python-sounddevice#3, #125).
        sounddevice._terminate()
        sounddevice._initialize()

    def close(self) -> None:
        """Stop the card, finish the WAV, remove the FIFOs; undo :meth:`activate`. Idempotent."""
        self._closing.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        if self._capture_fd >= 0:
            os.close(self._capture_fd)
            os.close(self._playback_fd)
            self._capture_fd = self._playback_fd = -1
        if self._closes is not None:
            self._closes.close()
            self._listeners_gone.close()
            self._closes = None
        with self._lock:
            if self._wav is not None:
                self._wav.close()
                self._wav_file.close()
                self._wav = None
        for fifo in (self._playback_fifo, self._capture_fifo):
            with contextlib.suppress(FileNotFoundError):
                fifo.unlink()
        if self._active:
            import sounddevice

            self._active = False
            if self._saved_env is None:
                os.environ.pop("ALSA_CONFIG_PATH", None)
            else:
                os.environ["ALSA_CONFIG_PATH"] = self._saved_env
            sounddevice._terminate()
            sounddevice._initialize()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- what was played ------------------------------------------------------------------------

    @property
    def items(self) -> list[PlayedItem]:
        """The streams played so far, in order (copies; the last may still be playing)."""
        with self._lock:
            return [PlayedItem(**vars(item)) for item in self._items]

    @property
    def frames_played(self) -> int:
        """Frames the simulated DAC has taken so far, all items together."""
        with self._lock:
            return self._total_frames

    def wait_played(self, count: int = 1, timeout: float = 30.0) -> list[PlayedItem]:
        """Wait until ``count`` items have ended (the player closed their streams and the DAC took their
        last samples); the items so far. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            items = self.items
            if sum(item.ended_at is not None for item in items) >= count:
                return items
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} item(s) not played within {timeout} s; the card has {items}")
            time.sleep(0.02)

    def samples(self, item: PlayedItem | None = None) -> np.ndarray:
        """Float samples of one item (or of everything played), read back from :attr:`wav`."""
        with self._lock:
            total = self._total_frames
        with wave.open(str(self.wav), "rb") as w:
            start = 0 if item is None else item.start_frame
            count = total - start if item is None else item.frames
            w.setpos(min(start, w.getnframes()))
            raw = w.readframes(count)
        return np.frombuffer(raw, dtype="<i2").reshape(-1, self.channels).astype(np.float32) / 32768.0

    # -- what the microphone hears --------------------------------------------------------------

    def set_capture(self, signal: np.ndarray | Path | None) -> None:
        """Make the capture device hear ``signal`` (looped) from now on: float samples at the card's rate,
        a file at the card's rate, or None for silence. Samples already queued are dropped."""
        if signal is None:
            data = np.zeros((0,), dtype="<i2")
        else:
            if isinstance(signal, Path):
                import soundfile

                samples, file_rate = soundfile.read(str(signal), dtype="float32", always_2d=True)
                if file_rate != self.rate:
                    raise ValueError(f"the capture file is at {file_rate} Hz; the card runs at {self.rate} Hz")
            else:
                samples = signal
            mono = samples.reshape(samples.shape[0], -1).mean(axis=1)
            data = np.round(np.clip(mono, -1.0, 1.0) * 32767.0).astype("<i2")
        with self._lock:
            self._capture = data
            self._capture_pos = 0
        # Here, not in the ADC thread: a stream opened right after this call must find only the new signal.
        with self._capture_lock:
            self._drain_capture()
            self._fill_capture()

    def set_capture_tone(self, hz: float = 1000.0, *, rms_dbfs: float = -20.0) -> None:
        """Make the capture device hear a steady tone of RMS level ``rms_dbfs``."""
        period = tone(hz, 1.0, rms_dbfs=rms_dbfs, rate=self.rate)  # a whole number of cycles per second
        self.set_capture(period)

    # -- the simulated DAC: reads the playback FIFO at the card's rate ---------------------------

    def _run_dac(self) -> None:
        frame_bytes = 2 * self.channels
        step = max(1, int(self.rate * STEP_S)) * frame_bytes
        fd, closes = self._playback_fd, self._closes
        assert closes is not None
        data_or_close = select.poll()
        data_or_close.register(fd, select.POLLIN)
        data_or_close.register(closes.fd, select.POLLIN)
        close_only = select.poll()
        close_only.register(closes.fd, select.POLLIN)
        consumed = 0  # bytes taken from the FIFO so far
        ends: collections.deque[int] = collections.deque()  # where, in those bytes, each stream ended
        item: PlayedItem | None = None
        level = SignalLevel()
        due = t0 = 0.0  # when the item playing began, and when the DAC wants its next step
        while not self._closing.is_set():
            wait_s = due - time.monotonic() if item is not None else 0.0
            poller = close_only if wait_s > 0 else data_or_close
            poller.poll(max(1, min(50, int(wait_s * 1000))) if wait_s > 0 else 50)
            for _ in range(closes.read()):
                # The player closed its stream: what is still queued is its tail, what follows is
                # the next stream's. Asked at once (the poll wakes on the close), before a new
                # stream has had time to open and write.
                ends.append(consumed + _queued_bytes(fd))
            while ends and ends[0] <= consumed:
                ends.popleft()
                if item is not None:
                    with self._lock:
                        item.ended_at = time.monotonic()
                    item = None
            if item is not None and due > time.monotonic():
                continue
            limit = min(step, ends[0] - consumed) if ends else step
            try:
                data = os.read(fd, limit)
            except BlockingIOError:
                continue
            consumed += len(data)
            samples = np.frombuffer(data[: len(data) - len(data) % frame_bytes], dtype="<i2")
            samples = samples.reshape(-1, self.channels)
            if samples.shape[0] == 0:
                continue
            now = time.monotonic()
            with self._lock:
                if item is None:
                    item = PlayedItem(start_frame=self._total_frames, started_at=now, rate=self.rate)
                    self._items.append(item)
                    level = SignalLevel()
                    t0 = now
                level.add(samples.astype(np.float32) / 32768.0)
                assert self._wav is not None
                self._wav.writeframes(samples.tobytes())  # the header is patched on each write: readable meanwhile
                item.frames += samples.shape[0]
                item.rms_dbfs, item.peak_dbfs = level.rms_dbfs, level.peak_dbfs
                self._total_frames += samples.shape[0]
                due = t0 + item.frames / self.rate
        with self._lock:
            if item is not None:
                item.ended_at = time.monotonic()

    # -- the simulated ADC: fills the capture FIFO at the card's rate ----------------------------

    def _next_capture(self, frames: int) -> np.ndarray:
        with self._lock:
            signal, pos = self._capture, self._capture_pos
            if not signal.size:
                return np.zeros(frames, dtype="<i2")
            self._capture_pos = (pos + frames) % signal.size
        return signal[(pos + np.arange(frames)) % signal.size]

    def _fill_capture(self) -> None:
        # Keep the FIFO full while nobody listens. ALSA's file plugin reads ``infile`` into its ring
        # buffer and leaves what a short read did not cover as it was; a full FIFO fills the whole
        # ring at the first read, so what is left over later is earlier samples of the same signal,
        # never stale memory.
        step = max(1, int(self.rate * STEP_S))
        while True:
            try:
                os.write(self._capture_fd, self._next_capture(step).tobytes())
            except BlockingIOError:
                return

    def _run_adc(self) -> None:
        step = max(1, int(self.rate * STEP_S))
        gone = select.poll()
        gone.register(self._listeners_gone.fd, select.POLLIN)
        t0 = time.monotonic()
        sent = 0
        while not self._closing.is_set():
            if self._listeners_gone.read():
                with self._capture_lock:  # fill up at once, ready for the next listener (see _fill_capture)
                    self._fill_capture()
            with self._capture_lock, contextlib.suppress(BlockingIOError):  # full: nobody listens, unheard
                os.write(self._capture_fd, self._next_capture(step).tobytes())
            sent += step
            now = time.monotonic()
            due = t0 + sent / self.rate
            if now - due > 0.2:  # descheduled for long: keep the pace from now, do not burst
                t0, sent = now, 0
            elif due > now:
                gone.poll(max(1, int((due - now) * 1000)))

    def _drain_capture(self) -> None:
        while True:
            try:
                if not os.read(self._capture_fd, CAPTURE_PIPE_BYTES):
                    return
            except BlockingIOError:
                return


def _queued_bytes(fd: int) -> int:
    """Bytes waiting in a pipe."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return int(count[0])


class _CloseWatch:
    """Counts closes of a file (inotify), through libc: the standard library has no binding."""

    CLOSE_WRITE = 0x00000008  # a writer closed it
    CLOSE_NOWRITE = 0x00000010  # a reader closed it

    def __init__(self, path: Path, mask: int) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._mask = mask
        self.fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(self.fd, os.fsencode(path), mask) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {path} failed")

    def read(self) -> int:
        """How many closes happened since the last call (0 if none)."""
        count = 0
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return count
            offset = 0
            while offset + 16 <= len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                offset += 16 + length
                if mask & self._mask:
                    count += 1

    def close(self) -> None:
        os.close(self.fd)
