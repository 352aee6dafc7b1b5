"""Presence and tamper analytics on scripted counter scenes, fed faster than real time.

Each test draws a scene with the simulator (sim.camera_scene), hands its frames to a real
SceneAnalyzer with the scene's own times (so two minutes of video take seconds), and checks the
changes against what the script did: exactly one event per change, the hold-off honoured, nothing
raised by stillness, light or passers-by. The tamper test goes through a written MJPEG file read back
by OpenCV, so compression is part of what is judged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import pytest

from drivers.camera import Frame
from edge.services.camera.analytics import (
    AnalyticsSettings,
    Change,
    PresenceChange,
    Reference,
    SceneAnalyzer,
    TamperChange,
)
from sim.camera_scene import MOVE_S, CounterScene

ON_S = 3.0
HOLD_OFF_S = 10.0
N = 10  # tamper frames: 2 s at 5 fps
SETTINGS = AnalyticsSettings(presence_on_s=ON_S, presence_hold_off_s=HOLD_OFF_S, tamper_frames=N)


def scene_frames(scene: CounterScene) -> Iterator[Frame]:
    """The scene's frames as a camera delivers them, stamped with scene time (t = 0 at frame 0)."""
    for i, (t, image) in enumerate(scene.frames()):
        yield Frame(i + 1, t, t, image)


def file_frames(path: Path, fps: float) -> Iterator[Frame]:
    """A written scene read back with OpenCV, stamped with scene time."""
    cap = cv2.VideoCapture(str(path))
    i = 0
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            t = i / fps
            yield Frame(i + 1, t, t, image)
            i += 1
    finally:
        cap.release()


def analyse(scene: CounterScene, frames: Iterator[Frame] | None = None) -> list[tuple[float, Change]]:
    analyzer = SceneAnalyzer(scene.profile, SETTINGS)
    out: list[tuple[float, Change]] = []
    for frame in frames if frames is not None else scene_frames(scene):
        out += [(frame.mono, change) for change in analyzer.feed(frame)]
    return out


def presence(changes: Sequence[tuple[float, Change]]) -> list[tuple[float, PresenceChange]]:
    return [(t, c) for t, c in changes if isinstance(c, PresenceChange)]


def tamper(changes: Sequence[tuple[float, Change]]) -> list[tuple[float, TamperChange]]:
    return [(t, c) for t, c in changes if isinstance(c, TamperChange)]


def test_presence_follows_the_officer_with_one_event_per_change_and_the_hold_off() -> None:
    scene = CounterScene(
        [
            (12, "seat"),
            (40, "leave"),
            (46, "seat"),  # back after 6 s, within the hold-off: never absent
            (70, "leave"),
            (72, "seat"),
            (90, "leave"),
        ],
        duration_s=110,
        walkers_every_s=7,
    )
    events = presence(analyse(scene))
    assert [c.state for _, c in events] == ["absent", "present", "absent"], events
    (_, first), (t_on, on), (t_off, off) = events
    assert first.since < 12  # the empty seat at the start
    # Present from the first frame the officer was in the seat, reported presence_on_s later.
    assert abs(on.since - (12 + MOVE_S)) <= 0.6
    assert on.since + ON_S <= t_on <= on.since + ON_S + 0.5
    # Absent from the moment the officer got up for good, reported once the hold-off has run.
    assert abs(off.since - 90) <= 0.6
    assert off.since + HOLD_OFF_S <= t_off <= off.since + HOLD_OFF_S + 0.5


def test_a_long_absence_and_the_return_are_one_event_each() -> None:
    scene = CounterScene([(8, "seat"), (30, "leave"), (50, "seat"), (70, "leave")], duration_s=90)
    events = presence(analyse(scene))
    assert [c.state for _, c in events] == ["absent", "present", "absent", "present", "absent"]
    sinces = [round(c.since) for _, c in events[1:]]
    assert sinces == [8 + MOVE_S, 30, 50 + MOVE_S, 70]


def test_an_officer_sitting_still_for_two_minutes_stays_present() -> None:
    scene = CounterScene([(10, "seat"), (15, "still")], duration_s=15 + 120 + 5, walkers_every_s=9)
    analyzer = SceneAnalyzer(scene.profile, SETTINGS)
    events: list[Change] = []
    occupancy_while_still = []
    for frame in scene_frames(scene):
        events += analyzer.feed(frame)
        if frame.mono >= 15:
            assert analyzer.presence == "present", f"at {frame.mono:.1f} s"
            occupancy_while_still.append(analyzer.occupancy)
    assert [c.state for c in events if isinstance(c, PresenceChange)] == ["absent", "present"]
    assert not [c for c in events if isinstance(c, TamperChange)]  # stillness is not a frozen camera
    assert min(v for v in occupancy_while_still if v is not None) >= 0.3


@pytest.mark.parametrize(
    "light",
    [
        {"factor": 0.55, "ramp_s": 0},  # half the lamps switched off at once
        {"factor": 1.4, "ramp_s": 5},  # sunlight coming in
        {"left": 1.25, "right": 0.6, "ramp_s": 2},  # the window side brighter than the door side
    ],
    ids=["dimmed", "brighter", "gradient"],
)
def test_a_light_change_on_an_empty_seat_stays_absent(light: dict[str, Any]) -> None:
    scene = CounterScene([(20, "light", light), (50, "light", {"factor": 1.0, "ramp_s": 1})], duration_s=70)
    analyzer = SceneAnalyzer(scene.profile, SETTINGS)
    changes: list[Change] = []
    for frame in scene_frames(scene):
        changes += analyzer.feed(frame)
        if frame.mono >= 20:
            assert analyzer.occupancy is not None and analyzer.occupancy < 0.3, f"at {frame.mono:.1f} s"
    assert [c.state for c in changes if isinstance(c, PresenceChange)] == ["absent"]
    assert not tamper([(0.0, c) for c in changes])


def test_the_officer_is_still_seen_in_a_changed_light() -> None:
    scene = CounterScene([(10, "light", {"factor": 0.6}), (20, "seat")], duration_s=40)
    events = presence(analyse(scene))
    assert [c.state for _, c in events] == ["absent", "present"]
    assert abs(events[1][1].since - (20 + MOVE_S)) <= 0.6


TAMPERS = [
    ("covered", [(20, "cover"), (30, "uncover")]),
    ("covered", [(20, "cover", {"level": 200}), (30, "uncover")]),  # a sheet of paper: bright, featureless
    ("defocused", [(20, "blur", {"sigma": 5}), (30, "unblur")]),
    ("moved", [(20, "shift", {"dx": 48}), (30, "unshift")]),
    ("moved", [(20, "shift", {"dx": 0, "dy": -30}), (30, "unshift")]),
    ("frozen", [(20, "freeze"), (30, "unfreeze")]),
]


@pytest.mark.parametrize(("kind", "script"), TAMPERS, ids=["hand", "paper", "blur", "aside", "tilted", "frozen"])
def test_each_tamper_raises_one_start_within_5_s_and_one_end_after_recovery(
    tmp_path: Path, kind: str, script: list[Any]
) -> None:
    scene = CounterScene([(8, "seat"), *script], duration_s=45, walkers_every_s=6)
    video = scene.write(tmp_path / "scene.avi")  # through MJPEG and back, as a camera's stream arrives
    changes = analyse(scene, file_frames(video, scene.fps))
    events = tamper(changes)
    assert [(c.kind, c.state) for _, c in events] == [(kind, "start"), (kind, "end")], events
    (t_start, start), (t_end, end) = events
    assert 20 < t_start <= 25
    assert 30 < t_end <= 35
    assert start.incident and start.incident == end.incident
    # The officer was seated before and after: the tamper is not read as the officer leaving.
    assert [c.state for _, c in presence(changes)] == ["absent", "present"]


def test_each_incident_has_its_own_id() -> None:
    scene = CounterScene([(10, "cover"), (15, "uncover"), (25, "cover"), (30, "uncover")], duration_s=40)
    events = tamper(analyse(scene))
    assert [(c.kind, c.state) for _, c in events] == [("covered", "start"), ("covered", "end")] * 2
    assert events[0][1].incident == events[1][1].incident != events[2][1].incident == events[3][1].incident


@pytest.mark.slow  # ten minutes of scene drawn, encoded, decoded and judged: half a minute
def test_ten_minutes_of_normal_counter_life_raise_no_tamper(tmp_path: Path) -> None:
    script: list[tuple[Any, ...]] = [(30, "seat"), (200, "still"), (260, "work"), (300, "leave")]
    script += [(320, "seat"), (500, "leave")]
    script += [(400, "light", {"factor": 0.7, "ramp_s": 20}), (560, "light", {"factor": 1.0, "ramp_s": 20})]
    scene = CounterScene(script, duration_s=600, walkers_every_s=6, seed=4)
    assert len(scene.walkers) > 60
    # Through MJPEG and back, as the tamper tests' scenes are: compression is part of what is judged, so
    # what must raise nothing here is judged on the same pictures as what must raise something there.
    video = scene.write(tmp_path / "ten-minutes.avi")
    judged: list[float] = []

    def noted(frames: Iterator[Frame]) -> Iterator[Frame]:
        for frame in frames:
            judged.append(frame.mono)
            yield frame

    changes = analyse(scene, noted(file_frames(video, scene.fps)))
    assert len(judged) == scene.frame_count == 3000 and judged[-1] >= 599  # every frame of the ten minutes
    assert tamper(changes) == []
    assert [c.state for _, c in presence(changes)] == ["absent", "present", "absent", "present", "absent"]


def test_lost_needs_n_ticks_without_a_frame_and_ends_after_n_frames() -> None:
    scene = CounterScene([], duration_s=12, walkers_every_s=None)
    analyzer = SceneAnalyzer(scene.profile, SETTINGS)
    frames = list(scene_frames(scene))
    for frame in frames[:30]:
        analyzer.feed(frame)
    assert [analyzer.missed(100.0 + k) for k in range(N - 1)] == [[]] * (N - 1)
    (start,) = analyzer.missed(200.0)
    assert isinstance(start, TamperChange)
    assert (start.kind, start.state, start.at) == ("lost", "start", 200.0)
    assert analyzer.missed(201.0) == []
    ends = [c for frame in frames[30 : 30 + N] for c in analyzer.feed(frame) if isinstance(c, TamperChange)]
    assert [(c.kind, c.state, c.incident) for c in ends] == [("lost", "end", start.incident)]


def test_a_calibrated_reference_survives_a_restart(tmp_path: Path) -> None:
    scene = CounterScene([(15, "seat")], duration_s=30, walkers_every_s=None)
    frames = list(scene_frames(scene))
    first = SceneAnalyzer(scene.profile, SETTINGS)
    first.calibrate()
    for frame in frames[:40]:
        first.feed(frame)
    assert first.new_reference is not None and first.new_reference.how == "calibrated"
    path = tmp_path / "cam.reference.npz"
    first.new_reference.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    stored = Reference.load(path)
    assert stored is not None and stored.how == "calibrated" and stored.size == (640, 480)
    # After a restart with the officer already seated, the stored reference still says the seat is taken.
    second = SceneAnalyzer(scene.profile, SETTINGS, stored)
    states = [c.state for frame in frames[100:] for c in second.feed(frame) if isinstance(c, PresenceChange)]
    assert states == ["present"]


def test_an_unreadable_reference_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "cam.reference.npz"
    path.write_bytes(b"not a reference")
    assert Reference.load(path) is None
    assert Reference.load(tmp_path / "missing.npz") is None
