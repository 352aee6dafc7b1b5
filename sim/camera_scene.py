"""A simulated counter camera: a synthetic one-stop counter scene, written as video and served on loopback.

The scene is what a camera over the citizen's side of a counter sees: a wall with a notice board, a
window and a clock; people walking past in the back; the officer's chair behind the desk; the desk
with a monitor and papers; the back of the citizen's chair at the bottom (under the profile's privacy
mask). The officer sits, works (moving a little) or sits still, and leaves. Faces are real: the head
of scikit-image's ``astronaut`` photo is composited onto the officer and some passers-by, and
:meth:`CounterScene.face_boxes` says where each face was put, so privacy tests can check pictures
against known places without trusting a detector.

The layout comes from the ``sim-counter-640x480`` camera profile (the seat and the mask), so the scene
is judged with the same profile a real camera would be given. Every frame carries its own sensor
noise, as a real camera's does: identical frames happen only when the camera is frozen.

A scene is scripted by a timeline of ``(t, action)`` or ``(t, action, {params})``:

=============  ==========================================================================================
``seat``       the officer walks in and sits (in the seat 1 s later)
``leave``      the officer gets up and walks out (out of the seat 1 s later)
``still``      the seated officer stops moving altogether; ``work`` moves again (the default)
``walker``     one person walks past (``direction`` 1 or -1, ``speed`` px/s, ``face`` bool)
``cover``      something covers the lens (``level``: 8 is a hand, 200 a sheet of paper); ``uncover``
``blur``       the lens is defocused (``sigma`` px, default 6); ``unblur``
``shift``      the camera is knocked aside (``dx``, ``dy`` px, default 48, 0); ``unshift`` puts it back
``freeze``     the camera repeats its last frame exactly; ``unfreeze``
``light``      the room's light changes to ``factor`` (1 is the normal light), optionally as a gradient
               from ``left`` to ``right``, over ``ramp_s`` seconds
=============  ==========================================================================================

:class:`SceneServer` serves a written scene as a stream on loopback, as an IP camera does: over HTTP
with ffmpeg (Debian's: MJPEG, or H.264 in MPEG-TS), or over RTSP with GStreamer (H.264 over RTP,
:mod:`sim.rtsp_server`), and can stop the stream (the server is killed, the connection cut), stall it
(the connection stays, no bytes come) and start it again, also on a timeline.

Run it by hand for a demo::

    python -m sim.camera_scene --seconds 60 --timeline '[[5, "seat"], [40, "cover"], [45, "uncover"]]' \\
        --write /tmp/scene.avi --serve
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from drivers.camera.profile import CameraProfile, load_camera_profile
from drivers.camera.regions import polygon_mask

log = logging.getLogger(__name__)

SCENE_PROFILE = "sim-counter-640x480"

#: Seconds the officer takes to walk into the seat, or out of it.
MOVE_S = 1.0
#: Noise frames drawn once and cycled (a prime, so no two nearby frames share one).
NOISE_BANK = 31
NOISE_SIGMA = 2.5

#: The astronaut's head in scikit-image's 512x512 photo, and the face (skin) inside it, in its pixels.
_HEAD_CROP = (145, 10, 160, 190)  # x, y, w, h
_FACE_IN_HEAD = (23, 38, 110, 124)

Action = tuple[float, str] | tuple[float, str, dict[str, Any]]
Box = tuple[int, int, int, int]


# -- the scene's script ----------------------------------------------------------------------------


@dataclass
class _Walker:
    start: float
    direction: int
    speed: float
    face: bool
    height: int
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]


@dataclass
class _State:
    """What the scene is doing at one moment."""

    officer_in: float | None = None  # when the officer's last "seat" began
    officer_out: float | None = None  # when the officer's last "leave" began
    still_since: float | None = None
    cover: float | None = None
    blur: float = 0.0
    shift: tuple[int, int] = (0, 0)
    freeze_at: float | None = None
    light: tuple[float, float] = (1.0, 1.0)  # left, right
    light_from: tuple[float, float] = (1.0, 1.0)
    light_t: float = 0.0
    light_ramp: float = 0.0


def _normalise(timeline: Sequence[Sequence[Any]]) -> list[tuple[float, str, dict[str, Any]]]:
    out: list[tuple[float, str, dict[str, Any]]] = []
    for entry in timeline:
        t, name = float(entry[0]), str(entry[1])
        params = dict(entry[2]) if len(entry) > 2 else {}
        if name not in _ACTIONS:
            raise ValueError(f"unknown scene action {name!r} (known: {', '.join(sorted(_ACTIONS))})")
        out.append((t, name, params))
    return sorted(out, key=lambda e: e[0])


_ACTIONS = frozenset(
    {"seat", "leave", "still", "work", "walker", "cover", "uncover", "blur", "unblur", "shift", "unshift"}
    | {"freeze", "unfreeze", "light"}
)


class CounterScene:
    """A scripted counter scene. ``frame(i)`` draws frame ``i`` (at ``i / fps`` seconds); the same scene
    always draws the same pixels."""

    def __init__(
        self,
        timeline: Sequence[Sequence[Any]] = (),
        *,
        duration_s: float = 60.0,
        fps: float = 5.0,
        walkers_every_s: float | None = 15.0,
        seed: int = 1,
        profile: str | CameraProfile = SCENE_PROFILE,
    ) -> None:
        self.profile = profile if isinstance(profile, CameraProfile) else load_camera_profile(profile)
        self.width, self.height = self.profile.resolution.width, self.profile.resolution.height
        self.fps = fps
        self.duration_s = duration_s
        self.timeline = _normalise(timeline)
        self._rng = np.random.default_rng(seed)
        self.walkers = self._schedule_walkers(walkers_every_s)
        regions = self.profile.scaled(self.width, self.height)
        self.seat = regions.seat
        self.mask = polygon_mask(regions.privacy_mask, self.width, self.height)
        self._layout()
        self._background = self._draw_background()
        self._chair, self._chair_alpha = self._draw_chair()
        self._desk, self._desk_alpha = self._draw_desk()
        self._noise = _noise_bank(self.width, self.height)
        self._drawn_small: dict[int, np.ndarray] = {}  # frame_index_of's small copies of drawn frames

    @property
    def frame_count(self) -> int:
        return round(self.duration_s * self.fps)

    # -- layout --------------------------------------------------------------------------------------

    def _layout(self) -> None:
        x, y, w, h = self.seat
        cx = x + w // 2
        self.chair_box = (cx - int(w * 0.33), y + int(h * 0.25), int(w * 0.66), int(h * 0.75))
        self.desk_top = y + h  # the desk hides the chair's seat and the officer's legs
        head_w = max(24, int(w * 0.45))
        head_h = int(head_w * _HEAD_CROP[3] / _HEAD_CROP[2])
        self.head_size = (head_w, head_h)
        self.head_pos = (cx - head_w // 2, y + int(h * 0.06))
        self.walk_feet_y = self.desk_top + 30

    def _schedule_walkers(self, every: float | None) -> list[_Walker]:
        walkers: list[_Walker] = []
        rng = np.random.default_rng(self._rng.integers(1 << 30))
        if every:
            t = float(rng.uniform(0.3, 1.0)) * every
            while t < self.duration_s:
                walkers.append(self._new_walker(t, rng, {}))
                t += every * float(rng.uniform(0.6, 1.4))
        for t, name, params in self.timeline:
            if name == "walker":
                walkers.append(self._new_walker(t, rng, params))
        return walkers

    def _new_walker(self, t: float, rng: np.random.Generator, params: dict[str, Any]) -> _Walker:
        return _Walker(
            start=t,
            direction=int(params.get("direction", rng.choice([-1, 1]))),
            speed=float(params.get("speed", rng.uniform(150, 240))),
            face=bool(params.get("face", rng.random() < 0.5)),
            height=int(rng.uniform(190, 225)),
            shirt=tuple(int(c) for c in rng.integers(40, 220, 3)),  # type: ignore[arg-type]
            trousers=tuple(int(c) for c in rng.integers(20, 90, 3)),  # type: ignore[arg-type]
        )

    # -- static layers -------------------------------------------------------------------------------

    def _draw_background(self) -> np.ndarray:
        cv2 = _cv2()
        w, h = self.width, self.height
        img = np.zeros((h, w, 3), np.uint8)
        wall_bottom = self.desk_top + 40
        img[:wall_bottom] = (196, 208, 214)
        for x in range(0, w, 48):  # wall panels
            cv2.line(img, (x, 0), (x, wall_bottom), (170, 182, 190), 2)
        cv2.line(img, (0, int(wall_bottom * 0.55)), (w, int(wall_bottom * 0.55)), (160, 172, 180), 3)
        img[wall_bottom:] = (120, 124, 128)  # floor tiles
        for x in range(-h, w, 40):
            cv2.line(img, (x, h), (x + (h - wall_bottom), wall_bottom), (100, 104, 108), 1)
        for y in range(wall_bottom, h, 22):
            cv2.line(img, (0, y), (w, y), (104, 108, 112), 1)
        # Notice board with papers and lines of text.
        bx, by, bw, bh = int(w * 0.04), int(h * 0.06), int(w * 0.26), int(h * 0.24)
        cv2.rectangle(img, (bx, by), (bx + bw, by + bh), (60, 110, 150), -1)
        cv2.rectangle(img, (bx, by), (bx + bw, by + bh), (40, 60, 80), 3)
        rng = np.random.default_rng(7)
        for i in range(6):
            px, py = bx + 8 + (i % 3) * (bw // 3), by + 8 + (i // 3) * (bh // 2)
            cv2.rectangle(img, (px, py), (px + bw // 3 - 14, py + bh // 2 - 14), (235, 240, 240), -1)
            for k in range(py + 8, py + bh // 2 - 18, 6):
                length = int(rng.uniform(0.4, 1.0) * (bw // 3 - 26))
                cv2.line(img, (px + 5, k), (px + 5 + length, k), (60, 60, 60), 1)
        cv2.putText(img, "THU TUC HANH CHINH", (bx + 4, by + bh + 18), 0, 0.45, (40, 40, 150), 1, cv2.LINE_AA)
        # A window with its bars, and a clock.
        wx, wy, ww, wh = int(w * 0.74), int(h * 0.05), int(w * 0.2), int(h * 0.24)
        cv2.rectangle(img, (wx, wy), (wx + ww, wy + wh), (235, 220, 190), -1)
        for k in range(1, 3):
            cv2.line(img, (wx + k * ww // 3, wy), (wx + k * ww // 3, wy + wh), (90, 90, 90), 3)
        cv2.line(img, (wx, wy + wh // 2), (wx + ww, wy + wh // 2), (90, 90, 90), 3)
        cv2.rectangle(img, (wx, wy), (wx + ww, wy + wh), (70, 70, 70), 4)
        cc = (int(w * 0.58), int(h * 0.11))
        cv2.circle(img, cc, 20, (245, 245, 245), -1)
        cv2.circle(img, cc, 20, (30, 30, 30), 2)
        cv2.line(img, cc, (cc[0], cc[1] - 14), (20, 20, 20), 2)
        cv2.line(img, cc, (cc[0] + 10, cc[1] + 4), (20, 20, 20), 2)
        return img

    def _draw_chair(self) -> tuple[np.ndarray, np.ndarray]:
        cv2 = _cv2()
        layer = np.zeros((self.height, self.width, 3), np.uint8)
        x, y, w, h = self.chair_box
        cv2.rectangle(layer, (x, y), (x + w, y + h), (50, 45, 45), -1, cv2.LINE_AA)
        cv2.rectangle(layer, (x + 6, y + 6), (x + w - 6, y + h // 2), (70, 62, 62), -1)
        for k in range(y + 14, y + h // 2, 10):  # the backrest's stitching
            cv2.line(layer, (x + 10, k), (x + w - 10, k), (40, 36, 36), 1)
        alpha = np.asarray(layer.any(axis=2), np.uint8)
        return layer, alpha

    def _draw_desk(self) -> tuple[np.ndarray, np.ndarray]:
        cv2 = _cv2()
        w, h = self.width, self.height
        layer = np.zeros((h, w, 3), np.uint8)
        top = self.desk_top
        cv2.rectangle(layer, (0, top), (w, h), (70, 110, 150), -1)  # wood
        for k in range(top + 6, h, 9):
            cv2.line(layer, (0, k), (w, k + 3), (60, 96, 134), 1)
        cv2.rectangle(layer, (0, top), (w, top + 6), (50, 80, 110), -1)
        mx = int(w * 0.12)
        cv2.rectangle(layer, (mx, top - 80), (mx + 110, top - 8), (30, 30, 30), -1)  # monitor
        cv2.rectangle(layer, (mx + 6, top - 74), (mx + 104, top - 16), (120, 90, 40), -1)
        cv2.rectangle(layer, (mx + 48, top - 8), (mx + 62, top + 4), (30, 30, 30), -1)
        px = self.seat[0] + self.seat[2] // 2 + 10
        cv2.rectangle(layer, (px, top + 16), (px + 70, top + 44), (240, 240, 240), -1)  # papers
        for k in range(top + 21, top + 40, 4):
            cv2.line(layer, (px + 5, k), (px + 62, k), (90, 90, 90), 1)
        # The back of the citizen's chair and head, at the bottom edge (under the privacy mask).
        cv2.rectangle(layer, (int(w * 0.2), h - 50), (int(w * 0.42), h), (40, 40, 70), -1)
        cv2.ellipse(layer, (int(w * 0.31), h - 40), (36, 44), 0, 0, 360, (25, 25, 30), -1)
        alpha = np.asarray(layer.any(axis=2), np.uint8)
        return layer, alpha

    # -- state over time -----------------------------------------------------------------------------

    def state_at(self, t: float) -> _State:
        state = _State()
        for at, name, params in self.timeline:
            if at > t:
                break
            if name == "seat":
                state.officer_in, state.officer_out = at, None
            elif name == "leave":
                state.officer_out = at
            elif name == "still":
                state.still_since = at
            elif name == "work":
                state.still_since = None
            elif name == "cover":
                state.cover = float(params.get("level", 8))
            elif name == "uncover":
                state.cover = None
            elif name == "blur":
                state.blur = float(params.get("sigma", 6.0))
            elif name == "unblur":
                state.blur = 0.0
            elif name == "shift":
                state.shift = (int(params.get("dx", 48)), int(params.get("dy", 0)))
            elif name == "unshift":
                state.shift = (0, 0)
            elif name == "freeze":
                state.freeze_at = at if state.freeze_at is None else state.freeze_at
            elif name == "unfreeze":
                state.freeze_at = None
            elif name == "light":
                state.light_from = _light_now(state, at)
                factor = float(params.get("factor", 1.0))
                state.light = (float(params.get("left", factor)), float(params.get("right", factor)))
                state.light_t, state.light_ramp = at, float(params.get("ramp_s", 0.0))
        return state

    def officer_seated(self, t: float) -> bool:
        """Ground truth: whether the officer is in the seat at ``t`` (after walking in, before walking out)."""
        s = self.state_at(t)
        if s.freeze_at is not None:
            s = self.state_at(s.freeze_at)
            t = s.freeze_at if s.freeze_at is not None else t
        return s.officer_in is not None and t >= s.officer_in + MOVE_S and s.officer_out is None

    def _officer_offset(self, s: _State, t: float) -> float | None:
        """How far right of the seat the officer is (0: seated), or None when away."""
        span = self.width - self.seat[0]
        if s.officer_in is None:
            return None
        if s.officer_out is not None:
            gone = (t - s.officer_out) / MOVE_S
            return None if gone >= 1 else span * gone
        arrived = (t - s.officer_in) / MOVE_S
        return span * max(0.0, 1 - arrived)

    # -- drawing -------------------------------------------------------------------------------------

    def frame_at(self, t: float) -> np.ndarray:
        return self.frame(round(t * self.fps))

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as the camera delivers it (BGR uint8, with its noise and the camera's trouble)."""
        t = index / self.fps
        s = self.state_at(t)
        if s.freeze_at is not None:
            index = math.floor(s.freeze_at * self.fps)
            t = index / self.fps
            s = self.state_at(t)
            s.freeze_at = None
        img = self._content(s, t)
        return self._camera(img, s, t, index)

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        """Every frame with its time in the scene."""
        for i in range(self.frame_count):
            yield i / self.fps, self.frame(i)

    def _content(self, s: _State, t: float) -> np.ndarray:
        cv2 = _cv2()
        img = self._background.copy()
        for walker in self.walkers:
            box = self._walker_box(walker, t)
            if box is not None:
                self._draw_person(img, box, walker.shirt, walker.trousers, walker.face, facing=walker.face)
        cv2.copyTo(self._chair, self._chair_alpha, img)
        offset = self._officer_offset(s, t)
        if offset is not None:
            working = s.still_since is None
            bob = round(2 * math.sin(t * 2.1)) if working else 0
            sway = round(3 * math.sin(t * 1.3)) if working else 0
            hx, hy = self.head_pos
            dx = int(offset) + sway
            hw, hh = self.head_size
            sx, sy, sw, sh = self.seat
            torso_top = hy + hh - 6
            body = np.array(
                [
                    (sx + int(sw * 0.18) + dx, sy + sh),
                    (sx + int(sw * 0.26) + dx, torso_top + 10),
                    (sx + int(sw * 0.74) + dx, torso_top + 10),
                    (sx + int(sw * 0.82) + dx, sy + sh),
                ],
                np.int32,
            )
            cv2.fillPoly(img, [body], (215, 170, 120), cv2.LINE_AA)  # light-blue shirt
            cv2.line(img, (hx + hw // 2 + dx, torso_top + 10), (hx + hw // 2 + dx, sy + sh), (180, 140, 100), 2)
            arm = round(6 * math.sin(t * 3.3)) if working else 0
            for side in (-1, 1):
                ax = sx + sw // 2 + side * int(sw * 0.3) + dx
                cv2.line(img, (ax, torso_top + 26), (ax + side * 8 + arm, sy + sh + 6), (205, 160, 112), 12)
            self._paste_head(img, hx + dx, hy + bob, hw, hh)
        cv2.copyTo(self._desk, self._desk_alpha, img)
        return img

    def _walker_box(self, walker: _Walker, t: float) -> Box | None:
        """Where a passer-by's body is at ``t`` (x, y, w, h), or None when not in the picture."""
        dt = t - walker.start
        if dt < 0:
            return None
        width = int(walker.height * 0.3)
        travelled = walker.speed * dt
        x = -width + travelled if walker.direction > 0 else self.width - travelled
        if x > self.width or x < -width:
            return None
        return int(x), self.walk_feet_y - walker.height, width, walker.height

    def _draw_person(self, img: np.ndarray, box: Box, shirt: Any, trousers: Any, face: bool, facing: bool) -> None:
        cv2 = _cv2()
        x, y, w, h = box
        head_w = int(w * 0.62)
        head_h = int(head_w * _HEAD_CROP[3] / _HEAD_CROP[2])
        cv2.rectangle(img, (x, y + head_h - 4), (x + w, y + int(h * 0.62)), shirt, -1)
        cv2.rectangle(img, (x + 4, y + int(h * 0.62)), (x + w - 4, y + h), trousers, -1)
        hx = x + (w - head_w) // 2
        if face:
            self._paste_head(img, hx, y, head_w, head_h)
        else:  # seen from behind: hair
            cv2.ellipse(
                img, (hx + head_w // 2, y + head_h // 2), (head_w // 2, head_h // 2), 0, 0, 360, (30, 30, 35), -1
            )

    def _paste_head(self, img: np.ndarray, x: int, y: int, w: int, h: int) -> None:
        head, alpha = _head(w, h)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self.width, x + w), min(self.height, y + h)
        if x1 <= x0 or y1 <= y0:
            return
        part = head[y0 - y : y1 - y, x0 - x : x1 - x]
        a = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
        region = img[y0:y1, x0:x1]
        region[:] = (part * a + region * (1 - a)).astype(np.uint8)

    def _camera(self, img: np.ndarray, s: _State, t: float, index: int) -> np.ndarray:
        """What the camera's optics, sensor and position do to the picture."""
        cv2 = _cv2()
        if s.shift != (0, 0):
            matrix = np.array([[1, 0, s.shift[0]], [0, 1, s.shift[1]]], np.float32)
            img = cv2.warpAffine(img, matrix, (self.width, self.height), borderMode=cv2.BORDER_REPLICATE)
        if s.blur > 0:
            img = cv2.GaussianBlur(img, (0, 0), s.blur)
        left, right = _light_now(s, t)
        if (left, right) != (1.0, 1.0):
            gain = np.linspace(left, right, self.width, dtype=np.float32)[None, :, None]
            img = np.clip(img * gain, 0, 255).astype(np.uint8)
        if s.cover is not None:
            img = np.full_like(img, int(s.cover))
        up, down = self._noise[(index * 7) % NOISE_BANK]
        return cv2.subtract(cv2.add(img, up), down)  # saturating, as a sensor clips

    # -- faces ---------------------------------------------------------------------------------------

    def face_boxes(self, t: float) -> list[Box]:
        """Where faces are in the frame at ``t``: ``(x, y, w, h)`` boxes of the face (skin, not hair) of
        the officer and of each passer-by facing the camera, as put there, after the camera's shift.
        A face more than a third hidden (behind the officer or the chair) or more than two thirds outside
        the picture (a passer-by coming in at its edge) is left out; a covered camera shows none."""
        s = self.state_at(t)
        if s.freeze_at is not None:
            t = math.floor(s.freeze_at * self.fps) / self.fps
            s = self.state_at(t)
        if s.cover is not None:
            return []
        boxes: list[Box] = []
        occluders: list[Box] = [self.chair_box]
        offset = self._officer_offset(s, t)
        if offset is not None:
            hx, hy = self.head_pos
            bob = round(2 * math.sin(t * 2.1)) if s.still_since is None else 0
            sway = round(3 * math.sin(t * 1.3)) if s.still_since is None else 0
            hw, hh = self.head_size
            head = (hx + int(offset) + sway, hy + bob, hw, hh)
            occluders.append((head[0], head[1], hw, self.desk_top - head[1]))
            boxes.append(_face_in(head))
        for walker in self.walkers:
            box = self._walker_box(walker, t)
            if box is None or not walker.face:
                continue
            x, y, w, _ = box
            head_w = int(w * 0.62)
            head_h = int(head_w * _HEAD_CROP[3] / _HEAD_CROP[2])
            face = _face_in((x + (w - head_w) // 2, y, head_w, head_h))
            if _hidden_share(face, occluders) <= 1 / 3:
                boxes.append(face)
        dx, dy = s.shift
        out: list[Box] = []
        for x, y, w, h in boxes:
            x0, y0 = max(0, x + dx), max(0, y + dy)
            x1, y1 = min(self.width, x + dx + w), min(self.height, y + dy + h)
            if (x1 - x0) * (y1 - y0) >= 1 / 3 * w * h:
                out.append((x0, y0, x1 - x0, y1 - y0))
        return out

    def frame_index_of(self, picture: np.ndarray, indices: Iterable[int] | None = None) -> tuple[int, float]:
        """Which of the scene's frames ``picture`` is (a frame decoded back out of a clip or a snapshot the
        device wrote, its faces blurred and its mask black), so its faces can be looked up with
        :meth:`face_boxes` rather than by asking a detector. Returns the index among ``indices`` (default:
        every frame) whose drawing differs least from it, outside the privacy mask, on a small grey copy,
        and that mean difference in grey levels (a few for the right frame; tens for a picture of
        something else). Passers-by and the officer's movements tell frames apart; frames nobody tells
        apart (a still officer, an empty corridor) have the same faces in the same places."""
        cv2 = _cv2()
        if indices is None:
            indices = range(self.frame_count)
        small = self._small_grey(picture)
        keep = self._small_keep()
        best, best_diff = -1, math.inf
        for index in indices:
            drawn = self._drawn_small.get(index)
            if drawn is None:
                drawn = self._drawn_small[index] = self._small_grey(self.frame(index))
            diff = float(cv2.absdiff(small, drawn)[keep].mean())
            if diff < best_diff:
                best, best_diff = index, diff
        if best < 0:
            raise ValueError("no frame indices to look among")
        return best, best_diff

    def _small_grey(self, image: np.ndarray) -> np.ndarray:
        cv2 = _cv2()
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return cv2.resize(grey, (self.width // 4, self.height // 4), interpolation=cv2.INTER_AREA)

    def _small_keep(self) -> np.ndarray:
        """The small copy's pixels clear of the privacy mask (which the device blacks out)."""
        cv2 = _cv2()
        size = (self.width // 4, self.height // 4)
        if self.mask is None:
            return np.ones((size[1], size[0]), bool)
        masked = cv2.resize(self.mask.astype(np.uint8), size, interpolation=cv2.INTER_AREA)
        # A small pixel that straddles the mask's edge (or the 16-pixel blocks it is widened to) is left out.
        return cv2.dilate(masked, np.ones((9, 9), np.uint8)) == 0

    # -- writing -------------------------------------------------------------------------------------

    def write(self, path: Path, *, fourcc: str = "MJPG") -> Path:
        """Write the scene as a video file (MJPEG in AVI by default: every frame a JPEG, as many IP
        cameras send, plays in VLC and ffmpeg). Returns ``path``."""
        cv2 = _cv2()
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), self.fps, (self.width, self.height))
        if not writer.isOpened():
            raise RuntimeError(f"cannot write video {path} with {fourcc}")
        try:
            for _, image in self.frames():
                writer.write(image)
        finally:
            writer.release()
        return path


def _light_now(s: _State, t: float) -> tuple[float, float]:
    if s.light_ramp <= 0 or t >= s.light_t + s.light_ramp:
        return s.light
    k = max(0.0, (t - s.light_t) / s.light_ramp)
    return (
        s.light_from[0] + (s.light[0] - s.light_from[0]) * k,
        s.light_from[1] + (s.light[1] - s.light_from[1]) * k,
    )


def _face_in(head: Box) -> Box:
    """The face (skin) box inside a pasted head box."""
    x, y, w, h = head
    fx, fy, fw, fh = _FACE_IN_HEAD
    sx, sy = w / _HEAD_CROP[2], h / _HEAD_CROP[3]
    return x + round(fx * sx), y + round(fy * sy), round(fw * sx), round(fh * sy)


def _hidden_share(box: Box, occluders: Sequence[Box]) -> float:
    """The share of ``box`` under the largest of ``occluders`` (boxes in front of it)."""
    x, y, w, h = box
    worst = 0.0
    for ox, oy, ow, oh in occluders:
        ix = max(0, min(x + w, ox + ow) - max(x, ox))
        iy = max(0, min(y + h, oy + oh) - max(y, oy))
        worst = max(worst, ix * iy / (w * h))
    return worst


@cache
def _noise_bank(width: int, height: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sensor noise frames (the same on every channel, as luminance noise is), split into what is
    added and what is taken away so they apply with saturating uint8 arithmetic."""
    rng = np.random.default_rng(12345)
    bank = []
    for _ in range(NOISE_BANK):
        noise = np.clip(np.rint(rng.normal(0, NOISE_SIGMA, (height, width, 1))), -64, 64).astype(np.int16)
        noise = np.repeat(noise, 3, axis=2)
        bank.append((np.clip(noise, 0, 64).astype(np.uint8), np.clip(-noise, 0, 64).astype(np.uint8)))
    return bank


@cache
def _astronaut_head() -> np.ndarray:
    from skimage import data  # the tests' dependency: the photo ships inside the scikit-image wheel

    cv2 = _cv2()
    x, y, w, h = _HEAD_CROP
    return cv2.cvtColor(data.astronaut()[y : y + h, x : x + w], cv2.COLOR_RGB2BGR)


@cache
def _head(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut's head at ``w`` x ``h`` and a soft elliptical alpha for pasting it."""
    cv2 = _cv2()
    head = cv2.resize(_astronaut_head(), (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (w // 2, h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(1.0, w / 40))
    return head, alpha[:, :, None]


def _cv2() -> Any:
    from drivers.camera.opencv import cv2_module

    return cv2_module()


# -- serving ---------------------------------------------------------------------------------------


def find_ffmpeg() -> str | None:
    """The ffmpeg binary (Debian's ``ffmpeg`` package), or None."""
    from shutil import which

    return which("ffmpeg")


#: How a :class:`SceneServer` serves: by ffmpeg over HTTP (``mjpeg``, ``mpegts``) or by GStreamer over RTSP.
SCENE_FORMATS = ("mjpeg", "mpegts", "rtsp")


@dataclass
class SceneServer:
    """Serve a video file as a live stream on loopback, looping, in real time.

    ``fmt`` is ``"mjpeg"`` (multipart JPEG over HTTP, as many IP cameras serve, copied from an MJPEG
    file), ``"mpegts"`` (H.264 in MPEG-TS over HTTP, encoded on the fly) or ``"rtsp"`` (H.264 over RTP,
    what most IP cameras serve: ffmpeg decodes the file in real time into :mod:`sim.rtsp_server`).
    ffmpeg's HTTP server takes one client at a time and ends when it leaves, so it is started again
    for the next client for as long as the server runs; the RTSP server serves every client.
    """

    video: Path
    port: int = 0
    fmt: str = "mjpeg"
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _feeder: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _running: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    sessions: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.port:
            from sim.broker import free_port

            self.port = free_port()
        if self.fmt not in SCENE_FORMATS:
            raise ValueError(f"fmt is one of {', '.join(SCENE_FORMATS)}, not {self.fmt!r}")

    @property
    def url(self) -> str:
        if self.fmt == "rtsp":
            from sim import rtsp_server

            return f"rtsp://127.0.0.1:{self.port}{rtsp_server.PATH}"
        name = "camera.mjpg" if self.fmt == "mjpeg" else "camera.ts"
        return f"http://127.0.0.1:{self.port}/{name}"

    def _command(self) -> list[str]:
        ffmpeg = find_ffmpeg()
        if ffmpeg is None:
            raise RuntimeError("ffmpeg is not installed (Debian: apt-get install ffmpeg)")
        head = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1"]
        head += ["-i", str(self.video)]
        if self.fmt == "rtsp":
            # Decoded in real time into the RTSP server's standard input, which encodes it (see _spawn).
            return [*head, "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"]
        if self.fmt == "mjpeg":
            codec = ["-c:v", "copy"] if _is_mjpeg(self.video) else ["-c:v", "mjpeg", "-q:v", "3"]
            return [*head, *codec, "-f", "mpjpeg", "-listen", "1", self.url]
        codec = ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "10", "-pix_fmt", "yuv420p"]
        # Sent as it is made: the muxer would otherwise hold 32 KiB, seconds of a 5 fps stream.
        flush = ["-flush_packets", "1", "-muxdelay", "0"]
        return [*head, *codec, *flush, "-f", "mpegts", "-listen", "1", self.url]

    def start(self) -> SceneServer:
        """Start serving (again, after ``stop()``); returns once the server listens."""
        if self._running.is_set():
            return self
        timeout = 10.0
        if self.fmt == "rtsp":
            from sim import rtsp_server

            why = rtsp_server.unavailable()
            if why is not None:
                raise RuntimeError(f"the RTSP server cannot run: {why}")
            timeout = rtsp_server.START_S
        self._running.set()
        self._thread = threading.Thread(target=self._serve, name="scene-server", daemon=True)
        self._thread.start()
        self._wait_listening(timeout)
        return self

    def _serve(self) -> None:
        logfile = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            while self._running.is_set():
                with self._lock:
                    if not self._running.is_set():
                        break
                    self._proc = self._spawn(logfile)
                    self.sessions += 1
                self._proc.wait()
                with self._lock:
                    self._end_feeder()
                if self._running.is_set():
                    time.sleep(0.05)
        finally:
            if logfile is not subprocess.DEVNULL:
                logfile.close()  # type: ignore[union-attr]

    def _spawn(self, logfile: Any) -> subprocess.Popen[bytes]:
        """Start the server: ffmpeg alone for HTTP; for RTSP, ffmpeg decoding into the RTSP server."""
        if self.fmt != "rtsp":
            return subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=logfile)
        from sim import rtsp_server

        width, height, fps = _video_format(self.video)
        feeder = subprocess.Popen(self._command(), stdout=subprocess.PIPE, stderr=logfile)
        self._feeder = feeder
        assert feeder.stdout is not None
        try:
            command = rtsp_server.server_command(self.port, width, height, fps)
            return subprocess.Popen(command, stdin=feeder.stdout, stdout=subprocess.DEVNULL, stderr=logfile)
        finally:
            feeder.stdout.close()  # the server's now: ffmpeg ends on a broken pipe when the server goes

    def _end_feeder(self) -> None:
        feeder, self._feeder = self._feeder, None
        if feeder is not None and feeder.poll() is None:
            feeder.kill()
            feeder.wait()

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _listening(self.port):
                return
            time.sleep(0.05)
        server = "the RTSP server" if self.fmt == "rtsp" else "ffmpeg"
        raise RuntimeError(f"{server} did not listen on port {self.port} within {timeout:g} s")

    def stop(self) -> None:
        """Stop serving: the server is killed and the client's connection cut (a camera switched off).
        Idempotent."""
        self._running.clear()
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
            self._end_feeder()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def stall(self) -> None:
        """The stream goes quiet with the connection left open (a hung camera): the server is paused."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo ``stall()``."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                os.kill(self._proc.pid, signal.SIGCONT)

    def play(self, timeline: Sequence[tuple[float, str]]) -> threading.Thread:
        """Carry out ``(t, "stop" | "start" | "stall" | "resume")`` from now, on a thread (returned)."""
        actions = {"stop": self.stop, "start": self.start, "stall": self.stall, "resume": self.resume}
        steps = sorted(timeline)
        for _, name in steps:
            if name not in actions:
                raise ValueError(f"unknown stream action {name!r} (known: {', '.join(actions)})")

        def run() -> None:
            t0 = time.monotonic()
            for at, name in steps:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                actions[name]()

        thread = threading.Thread(target=run, name="scene-timeline", daemon=True)
        thread.start()
        return thread

    def __enter__(self) -> SceneServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(port: int) -> bool:
    """Whether something listens on loopback ``port``, without connecting to it (ffmpeg's HTTP
    server takes the first connection as its one client)."""
    want = f"0100007F:{port:04X}"
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(r.split()[1] == want and r.split()[3] == "0A" for r in rows)


def _video_format(video: Path) -> tuple[int, int, float]:
    """A recording's width, height and frame rate (5 fps when it does not say a believable one)."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise RuntimeError(f"{video}: not a video file OpenCV can read")
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()
    return width, height, fps if 0.5 <= fps <= 120 else 5.0


def _is_mjpeg(video: Path) -> bool:
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    try:
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
    finally:
        cap.release()
    return bytes([(code >> (8 * k)) & 0xFF for k in range(4)]).decode("ascii", "replace").upper() == "MJPG"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (and serve) a simulated counter scene.")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the scene")
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second")
    parser.add_argument("--timeline", default="[]", help="JSON list of [t, action] or [t, action, {params}]")
    parser.add_argument("--walkers-every", type=float, default=15.0, help="seconds between passers-by (0: none)")
    parser.add_argument("--write", type=Path, required=True, help="the video file to write (.avi)")
    parser.add_argument("--serve", action="store_true", help="then serve it on loopback until Ctrl-C")
    parser.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    parser.add_argument("--fmt", choices=SCENE_FORMATS, default="mjpeg", help="HTTP (mjpeg, mpegts) or RTSP")
    args = parser.parse_args(argv)
    scene = CounterScene(
        json.loads(args.timeline), duration_s=args.seconds, fps=args.fps, walkers_every_s=args.walkers_every or None
    )
    scene.write(args.write)
    sys.stdout.write(f"wrote {args.write} ({scene.frame_count} frames)\n")
    if args.serve:
        with SceneServer(args.write, port=args.port, fmt=args.fmt) as server:
            sys.stdout.write(f"serving {server.url}\n")
            sys.stdout.flush()
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
