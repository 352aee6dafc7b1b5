"""evidence.upload: a clip from the device's media directory to the collector's, in chunks over a real Mosquitto.

The device side is the real uploader on a real MqttLink and a real outbox; the commune side is the
real collector (edge.server.collector.Collector, with its media receiver) on its own link and SQLite file.
The clip is a file of random bytes where the evidence recorder keeps its clips
(``state_dir/media/<camera>/<clip_id>.mp4``): the upload never looks inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.commands.claims import Claims
from edge.commands.registry import CommandContext, CommandFailed, CommandRegistry
from edge.config import BrokerAddress, SyncConfig, parse_config
from edge.config.evidence import EvidenceConfig
from edge.daemon import Daemon
from edge.exceptions import CommandRejected, ConfigError
from edge.ids import new_id
from edge.server.collector import Collector
from edge.server.media import MediaStats, media_paths
from edge.services.camera.upload import META_KEY, EvidenceUploader, UploadJob
from edge.store import Outbox
from edge.sync import LinkSettings, MqttLink, Uplink
from edge.topics import Topics
from sim.broker import MosquittoBroker
from sim.harness import collector_rows, wait_for
from tests.commands_fixtures import build_channel
from tests.test_broker_security import (  # noqa: F401 (fixtures)
    NOT_AUTHORIZED,
    PREFIX,
    ClientFactory,
    accepted,
    certs,
    client,
    probes,
    tls_broker,
)
from tests.test_camera_evidence import DISSATISFIED, SCENE, counter  # noqa: F401 (fixture)
from tests.test_camera_evidence_rig import DEFAULT_SETTINGS, WAIT, camera_rig, wait_events

COMMUNE = "gia-ray"
DEVICE = "counter-01"
CAMERA = "cam1"
CLIP_BYTES = 600_000  # 13 chunks of 48 KiB
TIMEOUT = 90.0


def media_of(collector: Collector) -> MediaStats:
    """The counters of the collector's media receiver (a SQLite collector always has one)."""
    assert collector.media is not None
    return collector.media.stats


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Rig:
    broker: MosquittoBroker
    tmp: Path
    outbox: Outbox
    registry: CommandRegistry
    collectors: list[Collector]
    links: list[MqttLink]
    uploaders: list[EvidenceUploader]
    uplinks: list[Uplink] = field(default_factory=list)

    @property
    def media(self) -> Path:
        return self.tmp / "state" / "media"

    @property
    def db(self) -> Path:
        return self.tmp / "collector.db"

    def clip(self, size: int = CLIP_BYTES) -> tuple[str, Path]:
        """A clip as the recorder leaves it: 0600 under media/<camera>/."""
        clip_id = new_id()
        path = self.media / CAMERA / f"{clip_id}.mp4"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        path.chmod(0o600)
        return clip_id, path

    def collector(self) -> Collector:
        c = Collector(self.broker.url, self.db, commune=COMMUNE, client_id=f"collector-{len(self.collectors)}").start()
        self.collectors.append(c)
        assert wait_for(c.link.connected.is_set, 20)
        return c

    def uploader(
        self, max_kbps: float = 20_000, registry: CommandRegistry | None = None, *, uplink: bool = False
    ) -> EvidenceUploader:
        """The uploader on a link of its own; ``uplink``: with the device's event uplink on the same link."""
        link = MqttLink(
            LinkSettings(
                address=BrokerAddress.parse(self.broker.url),
                client_id=f"{DEVICE}-{len(self.links)}",
                reconnect_min_s=0.1,
                reconnect_max_s=0.5,
            )
        )
        self.links.append(link)
        evidence = EvidenceConfig(upload_max_kbps=max_kbps)
        up = EvidenceUploader(
            self.media, {CAMERA: evidence}, self.outbox, link, Topics("vn", COMMUNE, DEVICE), registry
        )
        self.uploaders.append(up)
        if uplink:
            self.uplinks.append(Uplink(self.outbox, link, up.topics, SyncConfig(ack_timeout_s=5)))
        link.start()
        assert link.wait_connected(20)
        up.start()
        for u in self.uplinks:
            u.start()
        return up

    def recorded(self) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute("SELECT clip_id, device, sha256, bytes, path FROM media").fetchall()

    def upload_events(self) -> list[dict[str, Any]]:
        return [e.data for e in reversed(self.outbox.list_events(type="upload", limit=1000))]


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Rig]:
    outbox = Outbox(tmp_path / "state" / "events.db", owner=True, device_id=DEVICE)
    r = Rig(broker, tmp_path, outbox, CommandRegistry(), [], [], [])
    try:
        yield r
    finally:
        for u in r.uplinks:
            u.stop()
        for up in r.uploaders:
            up.stop()
        for link in r.links:
            link.stop()
        for c in r.collectors:
            c.stop()
        outbox.close()


def assert_delivered(rig: Rig, job: UploadJob, clip_id: str, path: Path) -> Path:
    """The job ended delivered, the collector recorded the clip, and its copy is the device's byte for byte."""
    assert job.done.wait(TIMEOUT), f"upload still {job.state}: sent {job.sent}, held {job.held}"
    assert job.state == "delivered", job.reason
    [(rec_clip, rec_device, rec_sha, rec_bytes, rec_path)] = rig.recorded()
    assert (rec_clip, rec_device, rec_bytes) == (clip_id, DEVICE, path.stat().st_size)
    stored = Path(rec_path)
    assert stored == rig.db.parent / "media" / COMMUNE / DEVICE / f"{clip_id}.mp4"
    assert rec_sha == sha256(path) == sha256(stored)
    assert stored.stat().st_mode & 0o777 == 0o600
    assert not list(stored.parent.glob("*.part"))
    events = rig.upload_events()
    assert [(e["clip_id"], e["state"], e["sha256"]) for e in events] == [(clip_id, "delivered", rec_sha)]
    assert rig.outbox.get_meta(META_KEY) == "[]"
    return stored


def context(clip_id: str, progress: list[dict[str, Any]]) -> CommandContext:
    now = int(time.time())
    claims = Claims(
        v=1,
        cmd_id=new_id(),
        device=DEVICE,
        commune=COMMUNE,
        name="evidence.upload",
        args={"clip_id": clip_id},
        iat=now,
        exp=now + 300,
    )
    return CommandContext(claims, lambda result: progress.append(dict(result)))


def test_command_delivers_a_clip_with_matching_sha256(rig: Rig) -> None:
    collector = rig.collector()
    # 1 Mbit/s: 600 kB take about 5 s, so the command reports progress on the way.
    rig.uploader(max_kbps=1000, registry=rig.registry)
    clip_id, path = rig.clip()
    registration = rig.registry.get("evidence.upload")
    progress: list[dict[str, Any]] = []

    started = time.monotonic()
    result = registration.handler(registration.parse_args({"clip_id": clip_id}), context(clip_id, progress))
    took = time.monotonic() - started

    assert result is not None
    # The cap is a ceiling: a busy machine can only make the upload slower, never faster than 1 Mbit/s.
    assert path.stat().st_size * 8 / 1000 / took <= 1000, f"{path.stat().st_size} bytes in {took:.2f} s"
    assert result["state"] == "delivered" and result["sha256"] == sha256(path)
    assert result["chunks"] == 13 and result["sent"] == 13
    assert progress and all(p["state"] == "sending" for p in progress)
    assert [p["sent"] for p in progress] == sorted(p["sent"] for p in progress)
    job = rig.uploaders[0].job(clip_id)
    assert job is not None
    assert_delivered(rig, job, clip_id, path)
    media = collector.summary()["media"]
    assert media["chunks_stored"] == 13 and media["duplicates"] == 0 and media["completed"] == 1


def test_events_go_out_while_a_clip_is_uploading(rig: Rig) -> None:
    collector = rig.collector()
    up = rig.uploader(max_kbps=400, uplink=True)  # about 12 s for the clip, on the link the events use
    clip_id, path = rig.clip()
    job = up.upload(clip_id)
    assert wait_for(lambda: media_of(collector).chunks_stored >= 2, 30)

    event = rig.outbox.append("test", {"note": "pressed while a clip is on its way"}, "critical")
    rig.uplinks[0].wake()

    # The event is stored by the collector while the clip is still going: it never waited for it.
    assert wait_for(lambda: collector_rows(rig.db, "SELECT id FROM events WHERE id = ?", (event.id,)), 30)
    assert job.state == "sending" and media_of(collector).chunks_stored < 13
    assert_delivered(rig, job, clip_id, path)


def test_broker_kill_in_the_middle_resumes_without_resending_what_the_collector_had(rig: Rig) -> None:
    collector = rig.collector()
    up = rig.uploader(max_kbps=800)  # about 6 s for the clip
    clip_id, path = rig.clip()
    job = up.upload(clip_id)
    assert wait_for(lambda: media_of(collector).chunks_stored >= 4, 30)

    rig.broker.kill()
    assert wait_for(lambda: not rig.links[0].connected.is_set(), 20)
    held_at_kill = media_of(collector).chunks_stored
    assert held_at_kill < 13, "the clip was through before the broker was killed"
    rig.broker.start()

    assert_delivered(rig, job, clip_id, path)
    media = collector.summary()["media"]
    assert media["chunks_stored"] == 13
    # At most the one chunk whose PUBACK the kill swallowed goes twice.
    assert media["duplicates"] <= 1
    assert job.sent <= 13 + 1


def test_collector_restart_in_the_middle(rig: Rig) -> None:
    first = rig.collector()
    up = rig.uploader(max_kbps=800)
    clip_id, path = rig.clip()
    job = up.upload(clip_id)
    assert wait_for(lambda: media_of(first).chunks_stored >= 4, 30)
    first.stop()
    held = media_of(first).chunks_stored
    assert held < 13

    second = rig.collector()
    assert_delivered(rig, job, clip_id, path)
    # The new collector found what the old one had on disk and got only the rest, once each.
    assert media_of(second).chunks_stored == 13 - held
    assert media_of(second).duplicates == 0


def test_device_restart_in_the_middle_goes_on_from_the_store(rig: Rig) -> None:
    collector = rig.collector()
    first = rig.uploader(max_kbps=800)
    clip_id, path = rig.clip()
    first.upload(clip_id)
    assert wait_for(lambda: media_of(collector).chunks_stored >= 4, 30)
    first.stop()
    rig.links[0].stop()
    assert json.loads(rig.outbox.get_meta(META_KEY) or "[]") == [clip_id]
    assert rig.upload_events() == []

    second = rig.uploader(max_kbps=800)
    job = second.job(clip_id)  # resumed at start, from the queue in the store
    assert job is not None
    assert_delivered(rig, job, clip_id, path)
    assert media_of(collector).chunks_stored == 13
    assert media_of(collector).duplicates <= 1


def test_unknown_and_forged_clip_ids_are_refused(rig: Rig) -> None:
    rig.collector()
    rig.uploader(registry=rig.registry)
    registration = rig.registry.get("evidence.upload")
    # A well-formed id that no camera of this device has: a failed command, nothing sent.
    with pytest.raises(CommandFailed) as failed:
        registration.handler(registration.parse_args({"clip_id": new_id()}), context("x", []))
    assert failed.value.reason == "unknown_clip"
    # Anything but a clip id never reaches the handler: it could name a file outside the media directory.
    secret = rig.tmp / "state" / "events.db"
    for forged in ("../events", "../../state/events.db", str(secret), "*", ""):
        with pytest.raises(CommandRejected) as rejected:
            registration.parse_args({"clip_id": forged})
        assert rejected.value.reason == "invalid_args"
    # A link elsewhere under a clip's name is not a clip.
    clip_id = new_id()
    (rig.media / CAMERA).mkdir(parents=True, exist_ok=True)
    (rig.media / CAMERA / f"{clip_id}.mp4").symlink_to(secret)
    with pytest.raises(CommandFailed):
        registration.handler(registration.parse_args({"clip_id": clip_id}), context(clip_id, []))
    assert rig.recorded() == []


def test_collector_refuses_chunks_that_do_not_match_their_sha256(rig: Rig) -> None:
    collector = rig.collector()
    answers: list[dict[str, Any]] = []
    raw = MqttLink(LinkSettings(address=BrokerAddress.parse(rig.broker.url), client_id="forger"))
    rig.links.append(raw)
    topics = Topics("vn", COMMUNE, DEVICE)
    raw.subscribe(topics.mediaack, lambda _t, p: answers.append(json.loads(p)))
    raw.start()
    assert raw.wait_connected(20)
    clip_id = new_id()
    data = os.urandom(3000)
    header = {
        "v": 1,
        "kind": "chunk",
        "clip_id": clip_id,
        "ext": "mp4",
        "sha256": hashlib.sha256(b"another file").hexdigest(),
        "bytes": 3000,
        "chunk_bytes": 2000,
        "total": 2,
    }

    def send(topic_clip: str, index: int, **change: Any) -> None:
        line = json.dumps({**header, "index": index, **change}).encode()
        raw.publish(topics.media(topic_clip), line + b"\n" + data[index * 2000 : (index + 1) * 2000]).result(10)

    send(clip_id, 0)
    send(clip_id, 1)
    assert wait_for(lambda: len(answers) >= 2, 20)
    assert answers[0]["have"] == [[0, 0]] and not answers[0]["complete"]
    # Whole, but not the file announced: discarded, and said so.
    assert answers[1] == {"v": 1, "clip_id": clip_id, "have": [], "complete": False, "sha256_ok": False}
    assert media_of(collector).sha256_mismatches == 1
    # A header naming another clip than its topic, and a chunk of the wrong size, are refused outright.
    send(new_id(), 0)
    send(clip_id, 0, chunk_bytes=1000, total=3)
    assert wait_for(lambda: len(answers) >= 4, 20)
    assert answers[2]["error"] == "wrong_topic"
    assert answers[3]["error"] == "schema"
    assert rig.recorded() == []
    assert not list((rig.db.parent / "media").rglob("*.mp4"))


def test_acl_lets_a_device_upload_only_under_its_own_prefix(client: ClientFactory) -> None:  # noqa: F811
    server = client("server", "srv-media")
    assert [rc.value for rc in server.subscribe(f"{PREFIX}/dev/+/media/#")] == [1]
    device = client("counter-02", "media-writer")
    device.subscribe(f"{PREFIX}/dev/counter-02/mediaack")
    snoop = client("counter-01", "media-snoop")
    snoop.subscribe(f"{PREFIX}/dev/+/mediaack")
    clip = new_id()

    # Its own prefix: the chunk reaches the server, the server's answer reaches the device.
    assert accepted(device.publish(f"{PREFIX}/dev/counter-02/media/{clip}", b"chunk"))
    server.wait_for(f"{PREFIX}/dev/counter-02/media/{clip}", b"chunk")
    assert accepted(server.publish(f"{PREFIX}/dev/counter-02/mediaack", b"have"))
    device.wait_for(f"{PREFIX}/dev/counter-02/mediaack", b"have")
    # Another device's prefix, and answering itself, are refused.
    assert device.publish(f"{PREFIX}/dev/counter-01/media/{clip}", b"forged").value == NOT_AUTHORIZED
    assert device.publish(f"{PREFIX}/dev/counter-02/mediaack", b"self-ack").value == NOT_AUTHORIZED
    # The server may not upload in a device's name; another device never reads this one's answers.
    assert server.publish(f"{PREFIX}/dev/counter-01/media/{clip}", b"srv-forged").value == NOT_AUTHORIZED
    assert accepted(server.publish(f"{PREFIX}/dev/counter-01/mediaack", b"marker"))
    snoop.wait_for(f"{PREFIX}/dev/counter-01/mediaack", b"marker")
    assert (f"{PREFIX}/dev/counter-02/mediaack", b"have") not in snoop.messages
    assert b"forged" not in [p for _, p in server.messages]


# -- a low rating's clip, a signed command, a broker kill ---------------------------------------------


def test_a_low_rating_s_clip_is_uploaded_on_a_signed_command_through_a_broker_kill(
    tmp_path: Path,
    broker: MosquittoBroker,
    signing_key: Ed25519PrivateKey,
    counter: Any,  # noqa: F811
) -> None:
    """The whole path of the acceptance: a citizen presses "dissatisfied" on the simulated panel, the
    recorder writes the clip linked to that rating, the commune asks for it with a signed
    ``evidence.upload``, the broker is killed while the chunks are on their way, and the collector ends
    up with the same bytes (sha256) as the device."""
    collector = Collector(broker.url, tmp_path / "collector.db", commune=COMMUNE, client_id="collector-e2e").start()
    channel = build_channel(tmp_path, broker, signing_key, lambda _registry: None)
    uploader: EvidenceUploader | None = None
    try:
        rating, citizen, notes, _ = counter(outbox=channel.outbox)
        with camera_rig(tmp_path, SCENE, outbox=channel.outbox) as rig:
            rating.add_observer(rig.recorder.on_rating)  # as the camera service wires it
            rating.add_observer(notes)
            assert rig.feeder.wait_frames(int(DEFAULT_SETTINGS.pre_s * 10) + 5)  # pre_s of frames in the ring
            citizen.press_done()
            notes.wait("window")
            citizen.press(DISSATISFIED)
            [note] = notes.wait("rating")
            [event] = wait_events(rig, 1)
            assert (event["reason"], event["rating_id"], event["window_id"]) == (
                "low_rating",
                note["id"],
                note["window_id"],
            )
            clip = rig.recorder.dir / Path(event["file"]).name
            size = clip.stat().st_size
            assert size == event["bytes"] and sha256(clip) == event["sha256"]
            # Small chunks, paced so that the clip takes about 8 s whatever its size.
            settings = DEFAULT_SETTINGS.model_copy(
                update={"upload_chunk_bytes": 4096, "upload_max_kbps": max(4.0, size * 8 / 1000 / 8)}
            )
            uploader = EvidenceUploader(
                rig.media, {"cam1": settings}, channel.outbox, channel.link, channel.channel.topics
            )
            uploader.register(channel.registry)
            uploader.start()
            total = -(-size // 4096)
            assert total >= 6, f"a {size}-byte clip is too small to be cut in the middle"

            cmd_id, _ = channel.send("evidence.upload", {"clip_id": event["clip_id"]})
            assert wait_for(lambda: media_of(collector).chunks_stored >= total // 3, WAIT)
            broker.kill()
            assert wait_for(lambda: not channel.link.connected.is_set(), 20)
            assert media_of(collector).chunks_stored < total, "the clip was through before the broker was killed"
            broker.start()

            ack = channel.sender.wait_ack(cmd_id, TIMEOUT + WAIT)
            assert ack is not None and ack["state"] == "succeeded", channel.sender.acks(cmd_id)
            assert ack["result"]["sha256"] == event["sha256"]
            assert "in_progress" in channel.states(cmd_id)
            with sqlite3.connect(tmp_path / "collector.db") as conn:
                [(sha, stored)] = conn.execute("SELECT sha256, path FROM media WHERE clip_id = ?", (event["clip_id"],))
            assert sha == event["sha256"] == sha256(Path(stored))
            assert Path(stored).read_bytes() == clip.read_bytes()
            assert media_of(collector).chunks_stored == total and media_of(collector).duplicates <= 1
    finally:
        if uploader is not None:
            uploader.stop()
        channel.stop()
        collector.stop()


def test_where_the_collector_keeps_uploads(tmp_path: Path) -> None:
    db = tmp_path / "collector.db"
    assert media_paths(db, None) == (db, tmp_path / "media")
    assert media_paths(db, tmp_path / "clips") == (db, tmp_path / "clips")
    # A PostgreSQL collector names no directory: it takes uploads only when given one.
    url = "postgresql://collector@db.example/edge"
    assert media_paths(url, None) is None
    assert media_paths(url, tmp_path / "m") == (tmp_path / "m" / "media.db", tmp_path / "m")


def test_a_counter_daemon_with_a_camera_offers_evidence_upload(tmp_path: Path) -> None:
    config = parse_config(
        {
            "device": {"id": DEVICE, "commune": COMMUNE, "roles": ["counter"]},
            "mqtt": {"broker": "mqtt://127.0.0.1:1"},
            "store": {"state_dir": str(tmp_path / "state")},
            "camera": [
                {
                    "name": "q1-cam",
                    "source": "/dev/video63",
                    "profile": "sim-counter-640x480",
                    "evidence": {"upload_max_kbps": 64, "upload_chunk_bytes": 16384},
                }
            ],
        }
    )
    daemon = Daemon(config)
    try:
        assert "evidence.upload" in daemon.registry
        assert daemon.registry.get("evidence.upload").serial
        [uploader] = [s for s in daemon.services if isinstance(s, EvidenceUploader)]
        assert uploader.media_dir == tmp_path / "state" / "media"
        assert uploader.configs["q1-cam"].upload_max_kbps == 64
        assert uploader.configs["q1-cam"].upload_chunk_bytes == 16384
        assert (daemon.topics.mediaack, 1) in daemon.link.stats.subscriptions
    finally:
        daemon.outbox.close()
    # Out of range: a clear error with its key path.
    with pytest.raises(ConfigError, match=r"camera\[0\]\.evidence\.upload_max_kbps: Input should be greater than 0"):
        parse_config(
            {
                "device": {"id": DEVICE, "commune": COMMUNE, "roles": ["counter"]},
                "mqtt": {"broker": "mqtt://127.0.0.1:1"},
                "camera": [
                    {
                        "name": "q1-cam",
                        "source": "/dev/video63",
                        "profile": "sim-counter-640x480",
                        "evidence": {"upload_max_kbps": 0},
                    }
                ],
            }
        )


def test_a_clip_deleted_before_its_turn_fails_with_its_reason_and_the_next_one_goes(rig: Rig) -> None:
    collector = rig.collector()
    up = rig.uploader(max_kbps=800)
    first_id, first_path = rig.clip()
    doomed_id, doomed = rig.clip(100_000)
    next_id, next_path = rig.clip(100_000)
    jobs = [up.upload(first_id), up.upload(doomed_id), up.upload(next_id)]
    assert wait_for(lambda: media_of(collector).chunks_stored >= 2, 30)
    doomed.unlink()  # as retention would, while it waits its turn

    assert all(job.done.wait(TIMEOUT) for job in jobs)
    assert [(job.state, job.reason) for job in jobs] == [
        ("delivered", ""),
        ("failed", "unreadable_clip"),
        ("delivered", ""),
    ]
    assert sorted((r[0], r[2]) for r in rig.recorded()) == sorted(
        [(first_id, sha256(first_path)), (next_id, sha256(next_path))]
    )
    states = {(e["clip_id"], e["state"]) for e in rig.upload_events()}
    assert states == {(first_id, "delivered"), (doomed_id, "failed"), (next_id, "delivered")}
    assert rig.outbox.get_meta(META_KEY) == "[]"


def test_a_store_that_refuses_to_take_a_delivered_clip_off_its_queue_loses_nothing_and_repeats_nothing(
    rig: Rig,
) -> None:
    """The clip is delivered and its ``upload`` event committed; then the store refuses to take the clip
    off the queue of uploads (a trigger in the device's events.db does it, as a full disk or a locked
    file would, through the real outbox). The uploader counts it and goes on with the next clip; a
    restart in between resumes the clip, which the collector holds whole, and commits no second
    event; once the store takes the change, the queue is empty."""
    collector = rig.collector()
    first = rig.uploader()
    clip_id, path = rig.clip(100_000)
    with sqlite3.connect(rig.outbox.path) as conn:
        conn.execute(
            f"CREATE TRIGGER refuse_forgetting BEFORE UPDATE ON meta WHEN NEW.key = '{META_KEY}'"
            f" AND instr(NEW.value, '{clip_id}') = 0"
            " BEGIN SELECT RAISE(ABORT, 'the queue of uploads cannot be written'); END"
        )

    job = first.upload(clip_id)

    assert job.done.wait(TIMEOUT) and job.state == "delivered", job.result()
    assert [(e["clip_id"], e["state"]) for e in rig.upload_events()] == [(clip_id, "delivered")]
    assert json.loads(rig.outbox.get_meta(META_KEY) or "[]") == [clip_id]  # still queued: nothing lost
    assert first.stats.store_errors >= 1
    assert first.thread is not None and first.thread.is_alive()
    other_id, other = rig.clip(100_000)
    other_job = first.upload(other_id)
    assert other_job.done.wait(TIMEOUT) and other_job.state == "delivered", other_job.result()

    first.stop()  # the device restarts while the store still refuses
    rig.links[0].stop()
    second = rig.uploader()
    resumed = second.job(clip_id)
    assert resumed is not None and resumed.done.wait(TIMEOUT) and resumed.state == "delivered"
    assert resumed.sent == 0  # the collector had it whole: nothing went twice
    with sqlite3.connect(rig.outbox.path) as conn:
        conn.execute("DROP TRIGGER refuse_forgetting")

    assert wait_for(lambda: rig.outbox.get_meta(META_KEY) == "[]", 30), rig.outbox.get_meta(META_KEY)
    events = sorted((e["clip_id"], e["state"]) for e in rig.upload_events())
    assert events == sorted([(clip_id, "delivered"), (other_id, "delivered")])  # one each, restart or not
    assert sorted((r[0], r[2]) for r in rig.recorded()) == sorted([(clip_id, sha256(path)), (other_id, sha256(other))])
    assert media_of(collector).completed == 2
