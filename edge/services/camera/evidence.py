"""Evidence around a moment: the ring buffer of recent frames, and the clips and snapshots written from
it with every face blurred, each recorded as an ``evidence`` event (DESIGN.md §9).

The camera service builds one recorder per camera and wires it::

    rec = EvidenceRecorder("cam1", "q1", camera.evidence, state_dir / "media", outbox, blurrer, mask)
    rec.start()                               # retention on a schedule
    cam.subscribe(rec.on_frame)               # keeps ring_fps of the frames, JPEG-compressed, in memory
    rating_service.add_observer(rec.on_rating)  # a committed low rating records a clip around the press
    rec.trigger("tamper")                     # a clip around now; returns its clip_id
    register_snapshot_command(registry, {"cam1": rec})   # snapshot.take {"camera": "cam1"}
    rec.close()

Privacy, in the order things happen (Vietnam's PDPL 91/2025/QH15 and Decree 356/2025 treat a picture
of a person as personal data):

- The ring buffer is in memory only; it is never written. Without a usable face model the ring stays
  empty and every trigger is refused (:class:`EvidenceRefused` ``no_face_model``): no model, no file.
  The model is checked when the recorder is built, so a missing one is reported at start; its net is
  read only while pictures are being written, and let go with the last of them.
- Before anything is written, on every frame of a clip and on a snapshot, faces are looked for in the
  whole picture, the privacy mask is blacked out (over whole 16-pixel blocks), then every face found is
  blurred. In a clip a frame
  also gets the faces found in the frames just before and after it, so a face the detector misses in
  one frame of a movement is still covered. If detection raises, nothing is written.
  ``blurred_faces`` in the event is the most faces outside the mask in one picture.
- A file is encoded into a temporary file created 0600 (``O_EXCL``) beside its final name, flushed to
  disk, checked (a clip must decode back to as many frames as went in), renamed, and only then is the
  ``evidence`` event committed (critical). If the commit fails the file is deleted: no picture without
  its record. Files live in ``media_dir/<camera>/`` (directories 0700) as ``<clip_id>.mp4`` (H.264,
  or WebM VP8 where the encoder lacks H.264) or ``<clip_id>.jpg``.
- Retention: :meth:`EvidenceRecorder.prune` deletes the files written more than ``retention_days``
  ago (by their modification time, set when written) and stale temporary files; it runs at start, after
  every file written and every ``PRUNE_EVERY_S`` once started. The ``evidence`` events stay.
- Byte budget: the pictures count against the store's byte cap. A camera's files take at most its
  ``media_max_bytes``, and no more than what ``store.max_bytes`` leaves after the event store (the
  bytes it counts against its cap: pages in use and WAL) and the other cameras' files, so events.db and
  media together stay within ``store.max_bytes``. Events come first: the store never evicts an event to
  make room for a picture; when it grows, the oldest pictures are deleted (after the next file or within
  ``PRUNE_EVERY_S``), their ``evidence`` events staying. To make room for a new file the oldest are
  deleted first; a file larger than ``media_max_bytes`` is refused (``too_large``), one larger than all
  the room the cap leaves is refused (``no_room``). What is deleted, refused or failed is counted in the
  store's counters (``edge status``) and logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, NamedTuple, NoReturn, Protocol

import cv2
import numpy as np
from pydantic import Field

from edge.commands.registry import CommandContext, CommandFailed, CommandRegistry
from edge.config.evidence import EvidenceConfig
from edge.exceptions import EdgeError
from edge.ids import new_id
from edge.model import EdgeModel, Slug
from edge.services.camera.blur import (
    WRITE_BLOCK,
    Face,
    FaceBlurrer,
    FaceModelError,
    FaceModelMissing,
    MaskLike,
    mask_then_blur,
    pixel_mask,
    visible_faces,
)
from edge.store import Outbox
from edge.supervisor import Loop, thread_loop

log = logging.getLogger(__name__)

Reason = Literal["low_rating", "command", "tamper"]
Kind = Literal["clip", "snapshot"]

#: How often a started recorder deletes what is past its retention.
PRUNE_EVERY_S = 3600.0
#: Jobs (clips being gathered or written, snapshots) one camera takes at once; more are refused.
MAX_PENDING = 4
#: Memory the ring buffer may hold whatever the resolution (JPEG bytes).
RING_MAX_BYTES = 64 * 1024 * 1024
#: A clip whose camera stops delivering waits this long past its last expected frame, then is written
#: with what it has.
LATE_S = 3.0
#: A snapshot takes the newest frame if it is at most this old, else waits this long for the next one.
SNAPSHOT_MAX_AGE_S = 1.0
SNAPSHOT_WAIT_S = 3.0
#: How long ``snapshot.take`` waits for its snapshot before answering (it is still written after).
SNAPSHOT_TIMEOUT_S = 60.0
#: A temporary file this old is left over from a crash, not a clip being written.
STALE_PART_S = 3600.0


class VideoEncoder(NamedTuple):
    """A way to write a clip that plays in VLC and in a browser."""

    encoder: str  # FFmpeg's encoder name
    codec: str  # what the event reports
    format: str  # FFmpeg's container format
    suffix: str
    options: dict[str, str]


#: Tried in order: H.264 in MP4 plays everywhere; WebM VP8 (cheaper to encode than VP9 on a Pi) where
#: the FFmpeg in PyAV's wheel has no H.264 encoder.
VIDEO_ENCODERS: tuple[VideoEncoder, ...] = (
    VideoEncoder("libx264", "h264", "mp4", ".mp4", {"preset": "veryfast", "crf": "23"}),
    VideoEncoder("libvpx", "vp8", "webm", ".webm", {"deadline": "realtime", "cpu-used": "8", "b": "1500k"}),
    VideoEncoder("libvpx-vp9", "vp9", "webm", ".webm", {"deadline": "realtime", "cpu-used": "8", "b": "1500k"}),
)
#: Container options per format: MP4 with its index first, so a browser plays it before it has it all.
_CONTAINER_OPTIONS = {"mp4": {"movflags": "+faststart"}, "webm": {}}
#: Low-rating presses flagged as these are not votes (DESIGN.md misuse): no pictures for them. A press
#: outside a window still is: a citizen rating an officer who never opened one is the case in point.
SKIP_MISUSE = frozenset({"burst", "cooldown"})

_DIR_MODE = 0o700
_FILE_MODE = 0o600


class EvidenceRefused(EdgeError, RuntimeError):
    """A clip or snapshot that was not (or will not be) written. ``reason``: ``no_face_model``,
    ``busy``, ``closed``, ``no_frames``, ``too_large``, ``no_room``, ``detection_failed``, ``encode_failed``,
    ``write_failed``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class FrameLike(Protocol):
    """What the camera delivers (``drivers.camera.Frame``)."""

    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> float: ...
    @property
    def mono(self) -> float: ...
    @property
    def image(self) -> np.ndarray: ...


@dataclass(frozen=True)
class RingFrame:
    """A frame in the ring buffer: when it was taken and its JPEG bytes."""

    seq: int
    ts: float
    mono: float
    jpeg: bytes

    def decode(self) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(self.jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise EvidenceRefused("encode_failed", f"a ring frame (seq {self.seq}) does not decode")
        return image


class FrameRing:
    """The last ``seconds`` of frames at up to ``fps``, JPEG-compressed, in memory. Thread-safe.

    Bounded three ways: by age (``seconds`` behind the newest frame), by count, and by bytes.
    """

    def __init__(self, seconds: float, fps: float, quality: int, max_bytes: int = RING_MAX_BYTES) -> None:
        self.seconds = seconds
        self.period = 1.0 / fps
        self.quality = quality
        self.max_bytes = max_bytes
        self._frames: deque[RingFrame] = deque(maxlen=math.ceil(seconds * fps) + 2)
        self._bytes = 0
        self._due = -math.inf
        self._cond = threading.Condition()
        self.kept = 0
        self.bad = 0

    def offer(self, frame: FrameLike) -> bool:
        """Keep ``frame`` if it is due at the ring's rate; False if skipped or unusable."""
        if frame.mono < self._due:
            return False
        # A frame a little early still counts (sources jitter); the schedule never runs ahead of now.
        self._due = max(self._due + self.period, frame.mono + self.period * 0.75)
        try:
            ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        except cv2.error:
            ok = False
        if not ok:
            self.bad += 1
            return False
        kept = RingFrame(int(frame.seq), float(frame.ts), float(frame.mono), buf.tobytes())
        with self._cond:
            if len(self._frames) == self._frames.maxlen:
                self._bytes -= len(self._frames[0].jpeg)
            self._frames.append(kept)
            self._bytes += len(kept.jpeg)
            while len(self._frames) > 1 and (
                self._frames[0].mono < kept.mono - self.seconds or self._bytes > self.max_bytes
            ):
                self._bytes -= len(self._frames.popleft().jpeg)
            self.kept += 1
            self._cond.notify_all()
        return True

    def between(self, start: float, end: float) -> list[RingFrame]:
        """Frames with ``start <= mono < end``, oldest first."""
        with self._cond:
            return [f for f in self._frames if start <= f.mono < end]

    def newest(self) -> RingFrame | None:
        with self._cond:
            return self._frames[-1] if self._frames else None

    def wait_newer(self, mono: float, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait until a frame taken at or after ``mono`` is in the ring (or ``stop`` is set)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._frames and self._frames[-1].mono >= mono):
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def clear(self) -> None:
        with self._cond:
            self._frames.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._frames)


@dataclass(frozen=True)
class Evidence:
    """A written clip or snapshot and its committed ``evidence`` event."""

    clip_id: str
    path: Path
    event_id: str
    event_seq: int
    data: dict[str, Any]


@dataclass(frozen=True)
class PendingEvidence:
    """A clip or snapshot asked for: its id now, the :class:`Evidence` when written."""

    clip_id: str
    future: Future[Evidence]

    def result(self, timeout: float | None = None) -> Evidence:
        """Wait for it; raises :class:`EvidenceRefused` (not written) or ``TimeoutError``."""
        return self.future.result(timeout)


@dataclass
class EvidenceStats:
    """What a recorder did since it was built."""

    frames_kept: int = 0
    written: int = 0
    refused: int = 0
    failed: int = 0
    pruned_retention: int = 0
    pruned_space: int = 0
    last_error: str | None = None


@dataclass
class _Job:
    clip_id: str
    kind: Kind
    reason: Reason
    moment: float  # time.monotonic() of the moment
    moment_ts: float  # the same moment on the wall clock
    rating_id: str | None
    window_id: str | None
    future: Future[Evidence]
    pre: list[RingFrame] = field(default_factory=list)


def iso(ts: float) -> str:
    """A wall-clock time in the event contract's form (local, with offset, milliseconds)."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


def video_encoder(candidates: Sequence[VideoEncoder] = VIDEO_ENCODERS) -> VideoEncoder:
    """The first of ``candidates`` this PyAV's FFmpeg can encode with."""
    import av

    for candidate in candidates:
        try:
            av.codec.Codec(candidate.encoder, "w")
        except Exception:  # av.codec.codec.UnknownCodecError, and older PyAVs' ValueError
            continue
        return candidate
    raise EvidenceRefused("encode_failed", f"no video encoder among {', '.join(c.encoder for c in candidates)}")


def _private_dir(path: Path) -> None:
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != _DIR_MODE:
        os.chmod(path, _DIR_MODE)  # mkdir's mode passes through the umask, and an old one may be wider


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 whatever the umask (an encoder then writes into it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)


class EvidenceRecorder:
    """Keeps one camera's recent frames and writes clips and snapshots from them, faces blurred.

    ``counter`` is the counter the camera watches (ratings of other counters are not its business);
    ``media_dir`` is ``state_dir/media`` (the recorder writes in ``media_dir/<camera>/``). ``blurrer``
    None: one is made from ``settings``, its model checked at once (and again on each trigger while it
    cannot be used). Either way the blurrer's net is in memory only while pictures are being written.
    ``mask`` is the privacy mask (:class:`~edge.services.camera.blur.PrivacyMask`, or points in the
    frames' pixels). ``encoders``: the video encoders to try, in order (:data:`VIDEO_ENCODERS`).
    Thread-safe: frames, ratings, commands and tamper triggers come from different threads.
    """

    def __init__(
        self,
        camera: str,
        counter: str | None,
        settings: EvidenceConfig,
        media_dir: Path,
        outbox: Outbox,
        blurrer: FaceBlurrer | None,
        mask: MaskLike | None = None,
        *,
        prune_every_s: float = PRUNE_EVERY_S,
        encoders: Sequence[VideoEncoder] = VIDEO_ENCODERS,
    ) -> None:
        self.camera = camera
        self.counter = counter
        self.settings = settings
        self.media_dir = media_dir
        self.dir = media_dir / camera
        self.outbox = outbox
        self.mask = mask
        self.prune_every_s = prune_every_s
        self.encoders = tuple(encoders)
        self.stats = EvidenceStats()
        #: Why no picture can be written now (no face model), or None.
        self.problem: str | None = None
        self.ring = FrameRing(settings.ring_s, settings.ring_fps, settings.jpeg_quality)
        self._blurrer = blurrer
        self._lock = threading.Lock()
        self._work = threading.Lock()  # one picture blurred and encoded at a time (CPU, memory)
        self._jobs: dict[str, threading.Thread] = {}
        self._hidden_by_size: dict[tuple[int, int], np.ndarray | None] = {}
        self._closing = threading.Event()
        self._pruner: threading.Thread | None = None
        _private_dir(media_dir)
        _private_dir(self.dir)
        if blurrer is None:
            self._load_blurrer()
        self.prune()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> EvidenceRecorder:
        """Start deleting what is past its retention every ``prune_every_s``."""
        if self._pruner is None:
            self._closing.clear()
            self._pruner = threading.Thread(target=self._prune_loop, name=f"evidence-prune-{self.camera}", daemon=True)
            self._pruner.start()
        return self

    def loops(self) -> list[Loop]:
        """The pruner, for the camera service's :meth:`~edge.services.camera.service.CameraService.loops`:
        if it stopped, retention would stop with it and the card would fill with pictures kept past
        their days. A clip's own writer ends with its clip and catches what goes wrong in it."""
        return [thread_loop(f"evidence-prune-{self.camera}", lambda: self._pruner)]

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking triggers; clips still gathering frames are written with what they have.
        Idempotent."""
        self._closing.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            jobs = list(self._jobs.values())
        for thread in jobs:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._pruner is not None:
            self._pruner.join(max(0.0, deadline - time.monotonic()))
            self._pruner = None
        self.ring.clear()
        with self._lock:
            if not self._jobs and self._blurrer is not None:
                self._blurrer.release()

    def __enter__(self) -> EvidenceRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load_blurrer(self) -> FaceBlurrer | None:
        with self._lock:
            if self._blurrer is not None:
                return self._blurrer
            try:
                self._blurrer = FaceBlurrer(self.settings.face_model, self.settings.face_threshold)
            except (FaceModelMissing, FaceModelError) as exc:
                if self.problem != str(exc):
                    log.error("camera %s: no evidence pictures: %s", self.camera, exc)
                self.problem = str(exc)
                return None
            self.problem = None
            return self._blurrer

    # -- frames and triggers -----------------------------------------------------------------------

    def on_frame(self, frame: FrameLike) -> None:
        """Offer a frame to the ring buffer (``Camera.subscribe``). Cheap: most frames are skipped at
        once, and one in ``fps / ring_fps`` is JPEG-compressed."""
        if self._blurrer is None or self._closing.is_set():
            return  # nothing could ever be written from it: hold no picture of anyone
        if self.ring.offer(frame):
            self.stats.frames_kept += 1

    def on_rating(self, kind: str, detail: Mapping[str, Any]) -> None:
        """A rating service observer: a committed low rating records a clip linked to it."""
        max_score = self.settings.low_rating_max_score
        if kind != "rating" or detail.get("duplicate") or max_score is None:
            return
        score = detail.get("score")
        if not isinstance(score, int) or score > max_score or detail.get("misuse") in SKIP_MISUSE:
            return
        if self.counter is not None and detail.get("counter") not in (None, self.counter):
            return
        moment = detail.get("pressed_mono")
        with contextlib.suppress(EvidenceRefused):  # counted and logged by record()
            self.record(
                "low_rating",
                rating_id=detail.get("id"),
                window_id=detail.get("window_id"),
                kind="clip",
                at_mono=float(moment) if isinstance(moment, int | float) else None,
            )

    def trigger(
        self,
        reason: Reason,
        *,
        rating_id: str | None = None,
        window_id: str | None = None,
        kind: Kind = "clip",
    ) -> str:
        """Record a clip (``pre_s`` before now to ``post_s`` after) or a snapshot; returns its clip_id at
        once, the file and its event follow. Raises :class:`EvidenceRefused` when it cannot be taken."""
        return self.record(reason, rating_id=rating_id, window_id=window_id, kind=kind).clip_id

    def record(
        self,
        reason: Reason,
        *,
        rating_id: str | None = None,
        window_id: str | None = None,
        kind: Kind = "clip",
        at_mono: float | None = None,
    ) -> PendingEvidence:
        """As :meth:`trigger`, with the moment given (``time.monotonic()``, e.g. a press) and the
        outcome to wait for."""
        now = time.monotonic()
        moment = now if at_mono is None else min(at_mono, now)
        if self._closing.is_set():
            self._refuse("closed", f"camera {self.camera} is stopping")
        if self._load_blurrer() is None:
            self._refuse("no_face_model", self.problem or "")
        job = _Job(new_id(), kind, reason, moment, time.time() - (now - moment), rating_id, window_id, Future())
        if kind == "clip":
            # Taken now: by the time the frames after the moment are in, these may have left the ring.
            job.pre = self.ring.between(moment - self.settings.pre_s, moment)
        with self._lock:
            if len(self._jobs) >= MAX_PENDING:
                busy = True
            else:
                busy = False
                thread = threading.Thread(
                    target=self._run, args=(job,), name=f"evidence-{self.camera}-{job.clip_id[-6:]}", daemon=True
                )
                self._jobs[job.clip_id] = thread
        if busy:
            self._refuse("busy", f"camera {self.camera} is already writing {MAX_PENDING} pictures")
        log.info("camera %s: %s %s for %s (rating %s)", self.camera, kind, job.clip_id, reason, rating_id)
        thread.start()
        return PendingEvidence(job.clip_id, job.future)

    def _count(self, name: str, by: int = 1) -> None:
        """Add to the store's counter ``name`` (``edge status``); a store that cannot count must not
        turn a written picture, or a refusal, into a different error."""
        try:
            self.outbox.bump(name, by)
        except EdgeError as exc:
            log.warning("camera %s: could not count %s: %s", self.camera, name, exc)

    def _refuse(self, reason: str, detail: str) -> NoReturn:
        self.stats.refused += 1
        self.stats.last_error = f"{reason}: {detail}"
        self._count("evidence_refused")
        log.warning("camera %s: evidence refused (%s): %s", self.camera, reason, detail)
        raise EvidenceRefused(reason, detail)

    # -- writing -----------------------------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        try:
            evidence = self._clip(job) if job.kind == "clip" else self._snapshot(job)
        except Exception as exc:
            refused = exc if isinstance(exc, EvidenceRefused) else EvidenceRefused("write_failed", repr(exc))
            self.stats.failed += 1
            self.stats.last_error = str(refused)
            self._count("evidence_failed")
            if isinstance(exc, EvidenceRefused):
                log.error("camera %s: %s %s not written: %s", self.camera, job.kind, job.clip_id, exc)
            else:
                log.exception("camera %s: %s %s not written", self.camera, job.kind, job.clip_id)
            job.future.set_exception(refused)
        else:
            job.future.set_result(evidence)
        finally:
            with self._lock:
                self._jobs.pop(job.clip_id, None)
                if not self._jobs and self._blurrer is not None:
                    # The net is read for the pictures being written and let go with the last of them:
                    # a counter writes a few a day, and would otherwise hold its memory all day.
                    self._blurrer.release()

    def _blurrer_now(self) -> FaceBlurrer:
        """The blurrer with its net read, for a job about to look for faces."""
        blurrer = self._load_blurrer()
        if blurrer is None:
            raise EvidenceRefused("no_face_model", self.problem or "")
        try:
            blurrer.load()
        except (FaceModelMissing, FaceModelError) as exc:
            # Checked at start, gone or changed since: as if it had never been there.
            with self._lock:
                self._blurrer = None
                self.problem = str(exc)
            self.ring.clear()
            log.error("camera %s: no evidence pictures: %s", self.camera, exc)
            raise EvidenceRefused("no_face_model", str(exc)) from exc
        return blurrer

    def _hidden(self, image: np.ndarray) -> np.ndarray | None:
        """The privacy mask for a picture of this size, as pixels (made once per size)."""
        height, width = image.shape[:2]
        if (width, height) not in self._hidden_by_size:
            self._hidden_by_size[(width, height)] = pixel_mask(self.mask, width, height, WRITE_BLOCK)
        return self._hidden_by_size[(width, height)]

    def _detect(self, blurrer: FaceBlurrer, frame: RingFrame) -> tuple[list[Face], int]:
        """The faces in a frame, looked for in the whole picture, and how many the mask leaves visible."""
        image = frame.decode()
        try:
            faces = blurrer.detect(image)
        except Exception as exc:
            raise EvidenceRefused("detection_failed", str(exc)) from exc
        return faces, len(visible_faces(faces, self._hidden(image)))

    def _picture(self, blurrer: FaceBlurrer, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """What is written of ``image``: the mask black first, then the faces blurred (and the mask
        black again over any blur that crossed its edge), then checked: what the detector still finds
        is blurred again (:meth:`FaceBlurrer.checked`). Raises :class:`EvidenceRefused` when a face
        is left."""
        hidden = self._hidden(image)
        try:
            return blurrer.checked(mask_then_blur(image, faces, hidden, blurrer.padding), hidden)
        except Exception as exc:
            raise EvidenceRefused("detection_failed", str(exc)) from exc

    def _clip(self, job: _Job) -> Evidence:
        s = self.settings
        blurrer = self._blurrer_now()
        with self._work:
            # The detector runs on the frames before the moment while those after it come in.
            found = [self._detect(blurrer, f) for f in job.pre]
        end = job.moment + s.post_s
        if s.post_s > 0:
            self.ring.wait_newer(end, s.post_s + LATE_S, self._closing)
        seen = {f.seq for f in job.pre}
        post = [f for f in self.ring.between(job.moment, end + 1e-6) if f.seq not in seen]
        frames = job.pre + post
        if not frames:
            raise EvidenceRefused("no_frames", f"camera {self.camera} delivered no frames around the moment")
        with self._work:
            found += [self._detect(blurrer, f) for f in post]
            # A frame gets its neighbours' faces too: a face missed in one frame of a movement is covered.
            cover = [
                [face for j in range(max(0, i - 1), min(len(frames), i + 2)) for face in found[j][0]]
                for i in range(len(frames))
            ]
            encoder = video_encoder(self.encoders)
            part = self.dir / f".{job.clip_id}{encoder.suffix}.part"
            try:
                _create_private(part)
                width, height = self._encode(frames, cover, blurrer, part, encoder)
                data = self._verified(part, len(frames))
                return self._commit(
                    job,
                    part,
                    self.dir / f"{job.clip_id}{encoder.suffix}",
                    data,
                    {
                        "format": encoder.format,
                        "codec": encoder.codec,
                        "frames": len(frames),
                        "width": width,
                        "height": height,
                        "from": iso(frames[0].ts),
                        "to": iso(frames[-1].ts),
                        "blurred_faces": max((visible for _faces, visible in found), default=0),
                    },
                )
            finally:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()

    def _encode(
        self,
        frames: list[RingFrame],
        cover: list[list[Face]],
        blurrer: FaceBlurrer,
        part: Path,
        encoder: VideoEncoder,
    ) -> tuple[int, int]:
        import av

        name, fmt, options = encoder.encoder, encoder.format, encoder.options
        first = frames[0].decode()
        # 4:2:0 video needs even sides.
        width, height = first.shape[1] & ~1, first.shape[0] & ~1
        fps = self.settings.ring_fps
        try:
            with av.open(str(part), "w", format=fmt, options=_CONTAINER_OPTIONS[fmt]) as container:
                stream = container.add_stream(name, rate=Fraction(fps).limit_denominator(1000))
                assert isinstance(stream, av.VideoStream)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.codec_context.time_base = Fraction(1, 1000)
                stream.options = {**options, "g": str(max(1, round(fps * 2)))}
                last_pts = -1
                for frame, faces in zip(frames, cover, strict=True):
                    image = first if frame is frames[0] else frame.decode()
                    if image.shape[:2] != first.shape[:2]:  # the camera came back at another resolution
                        image = cv2.resize(image, (first.shape[1], first.shape[0]))
                    picture = self._picture(blurrer, image, faces)[:height, :width]
                    video = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="bgr24")
                    # The frames' own times (the ring keeps what came, not a fixed rate), strictly rising.
                    last_pts = max(last_pts + 1, round((frame.mono - frames[0].mono) * 1000))
                    video.pts, video.time_base = last_pts, Fraction(1, 1000)
                    for packet in stream.encode(video):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
        except EvidenceRefused:
            raise
        except Exception as exc:
            raise EvidenceRefused("encode_failed", f"{name}/{fmt}: {exc}") from exc
        return width, height

    @staticmethod
    def _verified(part: Path, frames: int) -> bytes:
        """The clip's bytes, once it is on disk and decodes back to ``frames`` frames."""
        import av

        with open(part, "rb") as f:
            os.fsync(f.fileno())
            data = f.read()
        try:
            with av.open(io.BytesIO(data), mode="r") as container:
                decoded = sum(1 for _frame in container.decode(video=0))
        except Exception as exc:
            raise EvidenceRefused("encode_failed", f"the clip does not decode: {exc}") from exc
        if decoded != frames:
            raise EvidenceRefused("encode_failed", f"the clip decodes to {decoded} frames, {frames} went in")
        return data

    def _snapshot(self, job: _Job) -> Evidence:
        blurrer = self._blurrer_now()
        frame = self.ring.newest()
        if frame is None or frame.mono < job.moment - SNAPSHOT_MAX_AGE_S:
            fresh = self.ring.wait_newer(job.moment, SNAPSHOT_WAIT_S, self._closing)
            frame = self.ring.newest() if fresh else None
        if frame is None:
            raise EvidenceRefused("no_frames", f"camera {self.camera} delivered no frame just now")
        with self._work:
            faces, visible = self._detect(blurrer, frame)
            picture = self._picture(blurrer, frame.decode(), faces)
            ok, buf = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
            if not ok:
                raise EvidenceRefused("encode_failed", "JPEG encoding failed")
            data = buf.tobytes()
            part = self.dir / f".{job.clip_id}.jpg.part"
            try:
                _create_private(part)
                with open(part, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                return self._commit(
                    job,
                    part,
                    self.dir / f"{job.clip_id}.jpg",
                    data,
                    {
                        "format": "jpeg",
                        "codec": None,
                        "frames": 1,
                        "width": int(picture.shape[1]),
                        "height": int(picture.shape[0]),
                        "from": iso(frame.ts),
                        "to": iso(frame.ts),
                        "blurred_faces": visible,
                    },
                )
            finally:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()

    def _commit(self, job: _Job, part: Path, final: Path, data: bytes, facts: dict[str, Any]) -> Evidence:
        """Rename the finished file into place (within the byte budget), then commit its event."""
        size = len(data)
        if size > self.settings.media_max_bytes:
            budget = self.settings.media_max_bytes
            raise EvidenceRefused("too_large", f"{size} bytes, over camera {self.camera}'s media_max_bytes ({budget})")
        budget = self.budget()
        if size > budget:
            self._make_room(0, budget)  # the events have grown past what older pictures may take
            raise EvidenceRefused(
                "no_room",
                f"{size} bytes; the store's byte cap ({self.outbox.max_bytes}) leaves {budget} for camera "
                f"{self.camera}'s files after events.db ({self.outbox.used_bytes()}) and the other cameras' files",
            )
        self._make_room(size, budget)
        os.replace(part, final)
        _fsync_dir(self.dir)
        written = time.time()
        event = {
            "camera": self.camera,
            "counter": self.counter,
            "clip_id": job.clip_id,
            "kind": job.kind,
            "reason": job.reason,
            "rating_id": job.rating_id,
            "window_id": job.window_id,
            "at": iso(job.moment_ts),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": size,
            **facts,
            "masked": self.mask is not None,
            "file": f"{self.camera}/{final.name}",
            "expires": iso(written + self.settings.retention_days * 86400),
        }
        try:
            committed = self.outbox.append("evidence", event, "critical")
        except BaseException:
            # No picture without its record.
            with contextlib.suppress(FileNotFoundError):
                final.unlink()
            raise
        self.stats.written += 1
        self._count("evidence_written")
        log.info(
            "camera %s: %s %s written (%d bytes, %d faces blurred)",
            self.camera,
            job.kind,
            job.clip_id,
            size,
            event["blurred_faces"],
        )
        self.prune()
        return Evidence(job.clip_id, final, committed.id, committed.seq, event)

    # -- retention and the byte budget -------------------------------------------------------------

    def _files(self) -> Iterator[tuple[Path, os.stat_result]]:
        """This camera's finished files, oldest first."""
        found = []
        for entry in os.scandir(self.dir):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append((Path(entry.path), entry.stat(follow_symlinks=False)))
        # clip ids are UUIDv7: their order is the order they were taken in, whatever the clock did since.
        yield from sorted(found, key=lambda item: item[0].name)

    def media_bytes(self) -> int:
        """Bytes of this camera's finished files."""
        return sum(st.st_size for _path, st in self._files())

    def _other_cameras_bytes(self) -> int:
        """Bytes of the finished files of the other cameras under ``media_dir``."""
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for camera in os.scandir(self.media_dir):
                if camera.name == self.camera or not camera.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    for entry in os.scandir(camera.path):
                        if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                            with contextlib.suppress(FileNotFoundError):
                                total += entry.stat(follow_symlinks=False).st_size
        return total

    def budget(self) -> int:
        """Bytes this camera's files may take: its ``media_max_bytes``, and no more than what the store's
        byte cap leaves after the event store and the other cameras' files."""
        left = self.outbox.max_bytes - self.outbox.used_bytes() - self._other_cameras_bytes()
        return max(0, min(self.settings.media_max_bytes, left))

    def _make_room(self, incoming: int, budget: int) -> None:
        """Delete this camera's oldest files until ``incoming`` more bytes fit in ``budget``."""
        files = list(self._files())
        used = sum(st.st_size for _path, st in files)
        for path, st in files:
            if used + incoming <= budget:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                self.stats.pruned_space += 1
                self._count("evidence_pruned_space")
                log.warning(
                    "camera %s: %s deleted to stay within the byte budget (%d: media_max_bytes %d, store.max_bytes %d)",
                    self.camera,
                    path.name,
                    budget,
                    self.settings.media_max_bytes,
                    self.outbox.max_bytes,
                )
            used -= st.st_size

    def prune(self, now: float | None = None) -> dict[str, int]:
        """Delete files written more than ``retention_days`` ago and stale temporary files, narrow any
        file's mode to 0600, and delete the oldest files while this camera's are over its byte budget
        (the event store may have grown). Returns what was done."""
        now = time.time() if now is None else now
        cutoff = now - self.settings.retention_days * 86400
        done = {"expired": 0, "stale": 0, "narrowed": 0, "space": 0}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            _private_dir(self.dir)
            return done
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                if entry.name.startswith("."):
                    if entry.name.endswith(".part") and st.st_mtime < now - STALE_PART_S:
                        os.unlink(entry.path)
                        done["stale"] += 1
                    continue
                if st.st_mtime < cutoff:
                    os.unlink(entry.path)
                    done["expired"] += 1
                    continue
                if stat.S_IMODE(st.st_mode) != _FILE_MODE:
                    os.chmod(entry.path, _FILE_MODE)
                    done["narrowed"] += 1
            except FileNotFoundError:
                continue
        if done["expired"]:
            self.stats.pruned_retention += done["expired"]
            self._count("evidence_pruned_retention", done["expired"])
            log.info("camera %s: %d pictures past their retention deleted", self.camera, done["expired"])
        before = self.stats.pruned_space
        self._make_room(0, self.budget())
        done["space"] = self.stats.pruned_space - before
        return done

    def _prune_loop(self) -> None:
        while not self._closing.wait(self.prune_every_s):
            try:
                self.prune()
            except Exception:
                log.exception("camera %s: pruning evidence failed", self.camera)

    def status(self) -> dict[str, Any]:
        """What a technician wants to know now."""
        with self._lock:
            pending = len(self._jobs)
            blurrer = self._blurrer
        return {
            "problem": self.problem,
            # The face detector's net, in memory only while pictures are being written.
            "face_net_loaded": blurrer is not None and blurrer.loaded,
            "ring": {"frames": len(self.ring), "bytes": self.ring.bytes},
            "pending": pending,
            "media_bytes": self.media_bytes(),
            "media_budget": self.budget(),
            **vars(self.stats),
        }


# -- snapshot.take ---------------------------------------------------------------------------------


class SnapshotArgs(EdgeModel):
    """Arguments of ``snapshot.take``."""

    camera: Slug = Field(description="The camera to take the snapshot with (its [[camera]] name).")


def register_snapshot_command(
    registry: CommandRegistry,
    recorders: Mapping[str, EvidenceRecorder],
    *,
    timeout_s: float = SNAPSHOT_TIMEOUT_S,
) -> None:
    """Register ``snapshot.take`` on ``registry`` for the cameras in ``recorders`` (name → recorder; the
    mapping is read at each command, so a camera service may change it in place)."""

    def take(args: SnapshotArgs, ctx: CommandContext | None) -> dict[str, Any]:
        recorder = recorders.get(args.camera)
        if recorder is None:
            have = ", ".join(sorted(recorders)) or "none"
            raise CommandFailed("unknown_camera", f"this device has no camera {args.camera!r} (it has: {have})")
        try:
            pending = recorder.record("command", kind="snapshot")
        except EvidenceRefused as exc:
            raise CommandFailed(exc.reason, exc.detail, {"camera": args.camera}) from None
        try:
            evidence = pending.result(timeout_s)
        except EvidenceRefused as exc:
            raise CommandFailed(exc.reason, exc.detail, {"camera": args.camera, "clip_id": pending.clip_id}) from None
        except TimeoutError:
            raise CommandFailed(
                "timeout",
                f"the snapshot was not written within {timeout_s:g} s; its evidence event follows if it is",
                {"camera": args.camera, "clip_id": pending.clip_id},
            ) from None
        data = evidence.data
        return {
            "camera": args.camera,
            "clip_id": evidence.clip_id,
            "event_id": evidence.event_id,
            **{k: data[k] for k in ("kind", "sha256", "bytes", "from", "blurred_faces", "expires")},
        }

    registry.register(
        "snapshot.take",
        SnapshotArgs,
        take,
        description="Take a snapshot (faces blurred) and record it as an evidence event.",
    )
