"""Audio files as a :class:`~drivers.audio.base.PcmSource`: WAV, FLAC, OGG/Vorbis, OGG/Opus and MP3.

Decoding is libsndfile's (through soundfile; the wheel's libsndfile 1.2 reads all five). A file is
streamed from disk in blocks; only one block is in memory at a time, however long the programme.

Two libsndfile behaviours shape this module:

* ``SoundFile.read()`` seeks to the position it has just reached after every read, and with
  libsndfile 1.2's MP3 decoder that re-seek loses the decoder's state: an MP3 read in blocks of a few
  thousand frames comes out silent after the first blocks. So blocks are read with libsndfile's own
  ``sf_readf_float`` through soundfile's handle, which does no seeking (and saves a seek per block
  for Vorbis and Opus, where a seek costs a bisection of the file).
* A truncated file opens without complaint and simply ends early. Since a short announcement must
  be reported, not played as if whole, :func:`open_file_source` checks that the end is there.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.audio.base import BadAudio

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: What :func:`open_file_source` plays, as libsndfile names the containers.
FORMATS = ("WAV", "WAVEX", "RF64", "FLAC", "OGG", "MP3")

#: The end check reads this much before the announced end.
_END_PROBE_S = 0.25

#: libsndfile's log line for a WAV whose data chunk is shorter than its header says.
_WAV_DATA_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _soundfile() -> Any:
    try:
        import soundfile
    except OSError as exc:  # the module is there but its libsndfile could not be loaded
        raise BadAudio(f"libsndfile could not be loaded ({exc}); no audio file can be decoded") from None
    return soundfile


class FileSource:
    """An open audio file, read block by block from ``start_s``. Use :func:`open_file_source`."""

    def __init__(self, path: Path, *, start_s: float = 0.0) -> None:
        import numpy as np

        sf = _soundfile()
        self.path = path
        self._np = np
        self._sf = sf
        if not path.is_file():
            raise BadAudio(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise BadAudio(f"{path}: the file is empty")
        try:
            self._file = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            # libsndfile's wording for a non-MP3 in an .mp3 ("not a regular file (possibly a pipe?)")
            # misleads; say what is known and keep its text for the curious.
            raise BadAudio(f"{path}: not an audio file that can be decoded ({_reason(exc)})") from None
        self.format = str(self._file.format)
        self.subtype = str(self._file.subtype)
        self.rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self.frames = int(self._file.frames)
        """Frames in the whole file, as its header announces (checked at open: the end is there)."""
        self._closed = False
        self._lock = threading.Lock()
        try:
            self._check(start_s)
        except BaseException:
            self.close()
            raise
        self.start_frame = min(round(start_s * self.rate), self.frames)
        self._seek(self.start_frame)
        self._position = self.start_frame

    @property
    def duration_s(self) -> float:
        """Seconds from the start position to the end."""
        return (self.frames - self.start_frame) / self.rate

    @property
    def position_s(self) -> float:
        """Seconds from the file's beginning to the next frame :meth:`read` returns."""
        return self._position / self.rate

    def read(self, frames: int) -> np.ndarray:
        np = self._np
        with self._lock:
            if self._closed or frames <= 0:
                return np.zeros((0, self.channels), dtype=np.float32)
            out = np.empty((frames, self.channels), dtype=np.float32)
            snd, ffi = self._sf._snd, self._sf._ffi
            got = int(snd.sf_readf_float(self._file._file, ffi.cast("float *", out.ctypes.data), frames))
            err = int(snd.sf_error(self._file._file))
            if err:
                text = ffi.string(snd.sf_strerror(self._file._file)).decode(errors="replace")
                raise BadAudio(f"{self.path}: decoding failed {self._position / self.rate:.1f} s in: {text}")
            self._position += max(got, 0)
            return out[: max(got, 0)]

    def close(self) -> None:
        """Close the file; a read after it (or one under way, from another thread) ends the source."""
        with self._lock:  # libsndfile must not be closed under a read in progress
            if self._closed:
                return
            self._closed = True
            self._file.close()

    def __repr__(self) -> str:
        return f"<FileSource {self.path.name} {self.format}/{self.subtype} {self.rate} Hz x{self.channels}>"

    # -- checks at open ----------------------------------------------------------------------------

    def _check(self, start_s: float) -> None:
        if self.format not in FORMATS:
            raise BadAudio(f"{self.path}: {self.format} files are not played (WAV, FLAC, OGG or MP3)")
        if self.frames <= 0 or self.rate <= 0 or self.channels <= 0:
            raise BadAudio(f"{self.path}: no audio in the file (empty or truncated {self.format})")
        if not start_s >= 0.0:
            raise ValueError(f"start_s must be >= 0, got {start_s!r}")
        if self.format in ("WAV", "WAVEX", "RF64"):
            # libsndfile shortens a WAV to the samples present; its log says the header announced more.
            found = _WAV_DATA_SHORT.search(self._file.extra_info)
            if found:
                raise BadAudio(
                    f"{self.path}: truncated: the header announces {int(found.group(1))} bytes of samples, "
                    f"the file holds {int(found.group(2))}"
                )
        probe = min(self.frames, max(1, int(_END_PROBE_S * self.rate)))
        try:
            self._seek(self.frames - probe)
            got = self.read(probe).shape[0]
        except BadAudio as exc:
            raise BadAudio(f"{self.path}: truncated or corrupt: the end does not decode ({exc})") from None
        if got == 0:
            raise BadAudio(
                f"{self.path}: truncated: the header announces {self.frames / self.rate:.2f} s "
                "but the audio ends before that"
            )

    def _seek(self, frame: int) -> None:
        try:
            self._file.seek(frame)
        except (self._sf.LibsndfileError, RuntimeError) as exc:
            raise BadAudio(f"{self.path}: cannot seek to {frame / self.rate:.2f} s: {_reason(exc)}") from None
        self._position = frame


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "error_string", "") or str(exc)
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text


def open_file_source(path: str | Path, *, start_s: float = 0.0) -> FileSource:
    """Open an audio file for playing from ``start_s`` seconds. Raises :exc:`BadAudio` with the reason.

    WAV (PCM or float), FLAC, OGG/Vorbis, OGG/Opus and MP3, any rate and channel count the device's
    ALSA ``plug`` layer converts. Empty, truncated and undecodable files are refused here, before any
    relay closes; a file corrupt in the middle raises :exc:`BadAudio` from ``read()`` when reached.
    """
    return FileSource(Path(path), start_s=start_s)
