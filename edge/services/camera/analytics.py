"""Camera analytics: officer presence and tamper conditions, judged on a small grey frame.

Everything here works on numbers a Pi computes in well under a millisecond, in the manner of Frigate's
motion detector: each analysed frame is turned grey and shrunk to :data:`ANALYSIS_WIDTH` pixels across
(and :data:`SHARP_WIDTH` for the focus measure), with the privacy mask left out of every statistic.

**The reference.** Presence and two tamper conditions compare the picture with a *reference*: the scene
with the seat empty, the per-pixel median of a few seconds of frames (a median, so someone walking
through leaves no ghost). ``camera.calibrate`` takes it at installation; a camera without one learns it
from its first seconds of video, assuming the seat is empty then (logged, so a technician calibrates).

**Presence** (:class:`PresenceJudge`). The seat region is cut into a grid of cells, and each cell is
compared with the same cell of the reference by features that light does not change: the normalised
cross-correlation of their pixels (a person's outline and a chair's do not correlate, whatever the
brightness) and their mean after the room's overall gain is taken out (measured on the background
outside the seat, as the median ratio of cell means, so a dimmed lamp or the camera's auto-exposure
changes nothing). The share of cells that differ is the seat's *occupancy*. A person sitting still
stays different from the empty chair, so stillness does not read as absence (frame differencing would);
an empty chair in a changed light still correlates with itself, so it stays absent. ``present`` needs
``presence_on_s`` of occupancy (a passer-by crossing the seat is not the officer); ``absent`` needs
``presence_hold_off_s`` of an empty seat.

**Tamper** (:class:`TamperJudge`), each condition raw per frame:

- ``covered``: the picture is dark or featureless (a hand, a cap, a sheet of paper on the lens);
- ``defocused``: the focus measure (mean absolute Laplacian over the contrast) has collapsed against
  the one learned with the reference (a twisted lens, a smeared window);
- ``moved``: phase correlation finds the whole scene shifted against the reference;
- ``frozen``: the frame is identical to the previous analysed one (a live camera always has sensor noise);
- ``lost``: no new frame at an analysis tick.

A covered camera is also dark, blurred and unchanging, so ``covered`` masks the other three. Each
condition must hold for ``tamper_frames`` analysed frames before its ``start`` and be clear as long
before its ``end`` (:class:`Condition`); a start carries a new ``incident`` id, its end the same one.
While any condition is raw, presence holds its state: the seat cannot be judged through a covered lens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from drivers.camera import CameraProfile, Frame
from drivers.camera.regions import polygon_mask
from edge.ids import new_id

log = logging.getLogger(__name__)

ANALYSIS_WIDTH = 160
SHARP_WIDTH = 320

#: Presence: the seat is cut into this many columns and rows of cells.
SEAT_GRID = (6, 8)
#: A cell whose pixels correlate less than this with the reference is different (when either has texture).
CELL_NCC = 0.5
#: Below this standard deviation (grey levels) a cell has no texture to correlate: only its mean counts.
CELL_TEXTURE = 3.0
#: A cell whose gain-corrected mean differs by more than ``abs + rel * reference`` is different.
CELL_MEAN_ABS = 10.0
CELL_MEAN_REL = 0.1
#: Occupancy (share of different cells) at or above which the seat looks occupied, and below which empty.
OCCUPIED_AT = 0.3
EMPTY_BELOW = 0.15

#: Covered: the picture's standard deviation (grey levels) below this, or its mean below COVER_DARK.
COVER_FLAT = 7.0
COVER_DARK = 20.0
#: Defocused: the focus measure below this share of the reference's.
DEFOCUS_RATIO = 0.5
#: Moved: the scene shifted by at least this share of the picture's width, with a clear correlation peak.
MOVE_SHARE = 0.03
MOVE_MIN_RESPONSE = 0.1
#: Frozen: mean absolute difference from the previous analysed frame below this (grey levels).
FROZEN_DIFF = 0.1

#: Frames the reference is the median of, and how many analysed frames apart they are taken.
REFERENCE_FRAMES = 15
REFERENCE_EVERY = 2
#: How fast the learned focus measure follows slow changes (per analysed frame, on a clean frame).
FOCUS_FOLLOW = 0.01

TamperKind = Literal["covered", "defocused", "moved", "frozen", "lost"]
TAMPER_KINDS: tuple[TamperKind, ...] = ("lost", "covered", "defocused", "moved", "frozen")
PresenceState = Literal["present", "absent"]


# -- what a frame is reduced to ----------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A frame reduced for analysis."""

    small: np.ndarray
    """Grey, ANALYSIS_WIDTH across, float32."""
    focus: float
    """Mean absolute Laplacian over the contrast, at SHARP_WIDTH, inside the unmasked picture."""
    mean: float
    std: float


@dataclass
class Geometry:
    """The regions at analysis scale, for one picture size."""

    width: int
    height: int
    small_size: tuple[int, int]
    sharp_size: tuple[int, int]
    seat: tuple[int, int, int, int]
    valid: np.ndarray
    """True where the picture is analysed (outside the privacy mask), at ANALYSIS_WIDTH."""
    valid_sharp: np.ndarray
    """The same at SHARP_WIDTH, shrunk by a few pixels so the mask's edge is not counted as focus."""
    window: np.ndarray
    """Phase correlation window: a Hanning window, faded to zero over the mask."""
    cells: list[tuple[int, int, int, int]]
    """The seat's cells (x, y, w, h) that lie mostly outside the mask."""
    background: list[tuple[int, int, int, int]]
    """Cells outside the seat and the mask, for the room's light."""

    @classmethod
    def for_picture(cls, profile: CameraProfile, width: int, height: int) -> Geometry:
        cv2 = _cv2()
        small_size = (ANALYSIS_WIDTH, max(1, round(height * ANALYSIS_WIDTH / width)))
        sharp_size = (SHARP_WIDTH, max(1, round(height * SHARP_WIDTH / width)))
        regions = profile.scaled(*small_size)
        mask = polygon_mask(regions.privacy_mask, *small_size)
        valid = np.ones((small_size[1], small_size[0]), bool) if mask is None else ~mask
        sharp_regions = profile.scaled(*sharp_size)
        sharp_mask = polygon_mask(sharp_regions.privacy_mask, *sharp_size)
        valid_sharp = np.ones((sharp_size[1], sharp_size[0]), np.uint8)
        if sharp_mask is not None:
            valid_sharp[sharp_mask] = 0
            valid_sharp = cv2.erode(valid_sharp, np.ones((5, 5), np.uint8))
        soft = cv2.GaussianBlur(valid.astype(np.float32), (0, 0), 3.0) * valid
        window = cv2.createHanningWindow(small_size, cv2.CV_32F) * soft
        x, y, w, h = regions.seat
        cols, rows = SEAT_GRID
        cells = []
        for r in range(rows):
            for c in range(cols):
                cx0, cx1 = x + c * w // cols, x + (c + 1) * w // cols
                cy0, cy1 = y + r * h // rows, y + (r + 1) * h // rows
                if cx1 - cx0 < 2 or cy1 - cy0 < 2:
                    continue
                if valid[cy0:cy1, cx0:cx1].mean() > 0.5:
                    cells.append((cx0, cy0, cx1 - cx0, cy1 - cy0))
        background = []
        step = 10
        for by in range(0, small_size[1] - step + 1, step):
            for bx in range(0, small_size[0] - step + 1, step):
                overlaps_seat = bx < x + w and bx + step > x and by < y + h and by + step > y
                if not overlaps_seat and valid[by : by + step, bx : bx + step].all():
                    background.append((bx, by, step, step))
        return cls(
            width,
            height,
            small_size,
            sharp_size,
            regions.seat,
            valid,
            valid_sharp.astype(bool),
            window,
            cells,
            background,
        )


def prepare(image: np.ndarray, geometry: Geometry) -> Prepared:
    """Reduce a BGR picture for analysis (grey, two sizes, the focus measure)."""
    cv2 = _cv2()
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    sharp = cv2.resize(grey, geometry.sharp_size, interpolation=cv2.INTER_AREA)
    small = cv2.resize(sharp, geometry.small_size, interpolation=cv2.INTER_AREA).astype(np.float32)
    values = small[geometry.valid]
    mean, std = float(values.mean()), float(values.std())
    lap = np.abs(cv2.Laplacian(sharp, cv2.CV_16S))
    sharp_values = sharp[geometry.valid_sharp]
    contrast = float(sharp_values.std()) + 1.0
    focus = float(lap[geometry.valid_sharp].mean()) / contrast
    return Prepared(small, focus, mean, std)


# -- the reference -----------------------------------------------------------------------------------


@dataclass
class Reference:
    """The empty scene: a small grey picture (privacy mask black), its focus measure, and how it was got."""

    small: np.ndarray
    focus: float
    how: Literal["calibrated", "learned"]
    taken: float
    """Wall-clock time it was taken."""
    size: tuple[int, int]
    """The camera picture's size it was taken at."""

    def save(self, path: Path) -> None:
        """Write it (0600: it is a small picture of the counter). The masked pixels are stored black."""
        import os

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)  # O_CREAT's mode passes through the umask; an existing file keeps its own
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                small=np.clip(self.small, 0, 255).astype(np.uint8),
                focus=self.focus,
                how=self.how,
                taken=self.taken,
                size=np.asarray(self.size),
            )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Reference | None:
        """The reference stored at ``path``, or None if there is none or it cannot be read."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    small=data["small"].astype(np.float32),
                    focus=float(data["focus"]),
                    how="calibrated" if str(data["how"]) == "calibrated" else "learned",
                    taken=float(data["taken"]),
                    size=(int(data["size"][0]), int(data["size"][1])),
                )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring an unreadable camera reference %s: %s", path, exc)
            return None


class ReferenceBuilder:
    """Collects frames for a reference: the per-pixel median of REFERENCE_FRAMES frames."""

    def __init__(self, how: Literal["calibrated", "learned"], frames: int = REFERENCE_FRAMES) -> None:
        self.how: Literal["calibrated", "learned"] = how
        self.frames = frames
        self._small: list[np.ndarray] = []
        self._focus: list[float] = []
        self._seen = 0

    def add(self, prepared: Prepared) -> bool:
        """Offer an analysed frame; True once enough have been collected."""
        self._seen += 1
        if (self._seen - 1) % REFERENCE_EVERY == 0:
            self._small.append(prepared.small)
            self._focus.append(prepared.focus)
        return len(self._small) >= self.frames

    def build(self, ts: float, size: tuple[int, int]) -> Reference:
        return Reference(
            small=np.median(np.stack(self._small), axis=0).astype(np.float32),
            focus=float(np.median(self._focus)),
            how=self.how,
            taken=ts,
            size=size,
        )


# -- presence ----------------------------------------------------------------------------------------


class PresenceJudge:
    """How much of the seat differs from the empty reference (see the module docstring)."""

    def occupancy(self, prepared: Prepared, reference: Reference, geometry: Geometry) -> float:
        cur, ref = prepared.small, reference.small
        gain = _light_gain(cur, ref, geometry.background)
        different = 0
        for x, y, w, h in geometry.cells:
            c = cur[y : y + h, x : x + w]
            r = ref[y : y + h, x : x + w] * gain
            c_std, r_std = float(c.std()), float(r.std())
            c_mean, r_mean = float(c.mean()), float(r.mean())
            if abs(c_mean - r_mean) > CELL_MEAN_ABS + CELL_MEAN_REL * r_mean:
                different += 1
            elif max(c_std, r_std) > CELL_TEXTURE:
                ncc = float(((c - c_mean) * (r - r_mean)).mean()) / (c_std * r_std + 1e-6)
                if ncc < CELL_NCC:
                    different += 1
        return different / max(1, len(geometry.cells))


def _light_gain(cur: np.ndarray, ref: np.ndarray, cells: Sequence[tuple[int, int, int, int]]) -> float:
    """How much brighter the room is than in the reference: the median over background cells of the
    ratio of their means (cells too dark to measure are left out; 1.0 when none can be)."""
    ratios = []
    for x, y, w, h in cells:
        r = float(ref[y : y + h, x : x + w].mean())
        if r > 25.0:
            ratios.append(float(cur[y : y + h, x : x + w].mean()) / r)
    return float(np.median(ratios)) if ratios else 1.0


# -- tamper ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TamperReading:
    """One frame's raw tamper conditions and the measurements behind them."""

    raw: dict[str, bool]
    detail: dict[str, dict[str, float]]


class TamperJudge:
    """Raw tamper conditions of one frame (see the module docstring)."""

    def judge(
        self, prepared: Prepared, previous: Prepared | None, reference: Reference | None, geometry: Geometry
    ) -> TamperReading:
        cv2 = _cv2()
        covered = prepared.std < COVER_FLAT or prepared.mean < COVER_DARK
        detail: dict[str, dict[str, float]] = {
            "covered": {"mean": round(prepared.mean, 1), "std": round(prepared.std, 1)},
        }
        defocused = moved = frozen = False
        if previous is not None:
            diff = float(np.abs(prepared.small - previous.small)[geometry.valid].mean())
            frozen = diff < FROZEN_DIFF
            detail["frozen"] = {"difference": round(diff, 3)}
        if reference is not None:
            ratio = prepared.focus / reference.focus if reference.focus > 0 else 1.0
            defocused = ratio < DEFOCUS_RATIO
            detail["defocused"] = {"focus_ratio": round(ratio, 3)}
            # phaseCorrelate scales its inputs by the window in place (OpenCV 5): give it copies.
            (dx, dy), response = cv2.phaseCorrelate(reference.small.copy(), prepared.small.copy(), geometry.window)
            shift = math.hypot(dx, dy)
            moved = shift >= MOVE_SHARE * geometry.small_size[0] and response >= MOVE_MIN_RESPONSE
            scale = geometry.width / geometry.small_size[0]
            detail["moved"] = {"dx": round(dx * scale, 1), "dy": round(dy * scale, 1), "response": round(response, 3)}
        if covered:
            defocused = moved = frozen = False
        return TamperReading({"covered": covered, "defocused": defocused, "moved": moved, "frozen": frozen}, detail)


@dataclass
class Condition:
    """One tamper condition's state: ``frames`` raw frames in a row to start, as many clear to end."""

    kind: str
    frames: int
    active: bool = False
    incident: str | None = None
    since: float | None = None
    _run: int = 0

    def update(self, raw: bool) -> Literal["start", "end"] | None:
        if raw == self.active:
            self._run = 0
            return None
        self._run += 1
        if self._run < self.frames:
            return None
        self._run = 0
        self.active = raw
        if raw:
            self.incident = new_id()
            return "start"
        return "end"


# -- the analyser ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresenceChange:
    """The seat changed state: ``since`` is when the new state began (wall clock, the first frame of it)."""

    state: PresenceState
    since: float
    occupancy: float


@dataclass(frozen=True)
class TamperChange:
    """A tamper condition started or ended."""

    kind: str
    state: Literal["start", "end"]
    incident: str
    at: float
    """Wall-clock time of the frame (or tick) that decided it."""
    detail: dict[str, Any] = field(default_factory=dict)


Change = PresenceChange | TamperChange


@dataclass(frozen=True)
class AnalyticsSettings:
    """What the analyser is tuned by (from ``[[camera]]``)."""

    presence_on_s: float = 3.0
    presence_hold_off_s: float = 30.0
    tamper_frames: int = 10


class SceneAnalyzer:
    """Presence and tamper for one camera: feed it analysed frames in order (:meth:`feed`), and tell it
    about analysis ticks that found no new frame (:meth:`missed`); each returns the changes it decided.

    Times come from the frames (``mono`` for durations, ``ts`` for ``since``), so a test may feed a
    recording faster than real time and get the same answers. Not thread-safe: one caller.
    """

    def __init__(self, profile: CameraProfile, settings: AnalyticsSettings, reference: Reference | None = None) -> None:
        self.profile = profile
        self.settings = settings
        self.reference = reference
        self.geometry: Geometry | None = None
        self.presence: PresenceState | None = None
        self.occupancy: float | None = None
        self.conditions: dict[str, Condition] = {kind: Condition(kind, settings.tamper_frames) for kind in TAMPER_KINDS}
        self.last: TamperReading | None = None
        self.frames = 0
        self._judge_presence = PresenceJudge()
        self._judge_tamper = TamperJudge()
        self._previous: Prepared | None = None
        self._candidate: PresenceState | None = None
        self._candidate_since: tuple[float, float] | None = None  # (mono, ts)
        self._occupied_raw: bool | None = None
        self._builder: ReferenceBuilder | None = None if reference is not None else ReferenceBuilder("learned")
        self.new_reference: Reference | None = None
        """Set when a reference was just learned or calibrated (the caller stores it, then clears it)."""

    def calibrate(self) -> None:
        """Take a new reference from the next frames (the seat must be empty)."""
        self._builder = ReferenceBuilder("calibrated")

    @property
    def calibrating(self) -> bool:
        return self._builder is not None

    def tamper_active(self) -> list[str]:
        return [kind for kind, c in self.conditions.items() if c.active]

    def feed(self, frame: Frame) -> list[Change]:
        """Analyse one new frame."""
        h, w = frame.image.shape[:2]
        if self.geometry is None or (self.geometry.width, self.geometry.height) != (w, h):
            if self.geometry is not None:
                log.warning("camera picture changed size to %dx%d: regions scaled again", w, h)
            self.geometry = Geometry.for_picture(self.profile, w, h)
            self._previous = None
            if self.reference is not None and self.reference.size != (w, h):
                log.warning("the camera reference was taken at another size: learning it again")
                self.reference = None
                self._builder = self._builder or ReferenceBuilder("learned")
        geometry = self.geometry
        prepared = prepare(frame.image, geometry)
        self.frames += 1
        changes: list[Change] = []
        lost = self.conditions["lost"]
        if (edge := lost.update(False)) is not None:
            changes.append(TamperChange("lost", edge, lost.incident or "", frame.ts))
        reading = self._judge_tamper.judge(prepared, self._previous, self.reference, geometry)
        self.last = reading
        self._previous = prepared
        for kind, raw in reading.raw.items():
            cond = self.conditions[kind]
            edge = cond.update(raw)
            if edge is not None:
                detail = reading.detail.get(kind, {}) if edge == "start" else {}
                changes.append(TamperChange(kind, edge, cond.incident or "", frame.ts, dict(detail)))
        troubled = any(reading.raw.values()) or any(c.active for c in self.conditions.values())
        if self._builder is not None and not reading.raw["covered"] and not reading.raw["frozen"]:
            if self._builder.add(prepared):
                self.reference = self._builder.build(frame.ts, (w, h))
                self.new_reference = self.reference
                log.info("camera reference %s from %d frames", self.reference.how, self._builder.frames)
                self._builder = None
                self._reset_candidate()
            return changes
        if self.reference is None:
            return changes
        if not troubled:
            self.reference.focus += FOCUS_FOLLOW * (prepared.focus - self.reference.focus)
            changes += self._presence(prepared, frame)
        else:
            self._reset_candidate()
        return changes

    def missed(self, ts: float) -> list[Change]:
        """An analysis tick found no new frame."""
        lost = self.conditions["lost"]
        edge = lost.update(True)
        if edge is None:
            return []
        return [TamperChange("lost", edge, lost.incident or "", ts)]

    def _presence(self, prepared: Prepared, frame: Frame) -> list[Change]:
        assert self.reference is not None and self.geometry is not None
        occupancy = self._judge_presence.occupancy(prepared, self.reference, self.geometry)
        self.occupancy = occupancy
        if occupancy >= OCCUPIED_AT:
            self._occupied_raw = True
        elif occupancy < EMPTY_BELOW:
            self._occupied_raw = False
        if self._occupied_raw is None:
            return []
        raw: PresenceState = "present" if self._occupied_raw else "absent"
        if raw == self.presence:
            self._reset_candidate()
            return []
        if self._candidate != raw or self._candidate_since is None:
            self._candidate, self._candidate_since = raw, (frame.mono, frame.ts)
        needed = self.settings.presence_hold_off_s if self.presence == "present" else self.settings.presence_on_s
        since_mono, since_ts = self._candidate_since
        if frame.mono - since_mono < needed:
            return []
        self.presence = raw
        self._reset_candidate()
        return [PresenceChange(raw, since_ts, round(occupancy, 3))]

    def _reset_candidate(self) -> None:
        self._candidate = None
        self._candidate_since = None


def _cv2() -> Any:
    from drivers.camera.opencv import cv2_module

    return cv2_module()
