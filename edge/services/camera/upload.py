"""``evidence.upload {"clip_id"}``: an evidence clip sent to the collector in chunks over MQTT (DESIGN.md §9).

The command queues the clip for the uploader thread, which sends it on ``{prefix}/media/{clip_id}``
(QoS 1), one chunk per message, each a JSON header line, a newline and the chunk's raw bytes (the
framing and the collector's answers are described in :mod:`edge.server.media`)::

    ask     "kind":"query"  ──►  collector answers on mediaack: {"have":[[a,b],...],"complete":...}
    send    every chunk not in "have", one at a time, each awaited (PUBACK) before the next,
            paced to the camera's ``upload_max_kbps``
    ask     again; until the collector answers complete with sha256_ok

Resumable: the collector holds what it has on disk, so after a lost connection, a broker restart
or a restart of the collector the uploader asks again and sends only what is missing. The clips
queued are kept in the outbox's meta (``evidence.uploads``), so a restart of the device goes on with
them. Ratings are never held up: one chunk at a time is in flight, at a capped rate, and the
uplink's event batches go out between chunks on the same connection.

The command's ack gets ``in_progress`` results as chunks go (``sent``, ``held``) and its outcome;
an ``upload`` event (critical: it is the proof that the evidence left the device) records the
delivery or the failure either way, also for an upload resumed after a restart.

A store that refuses while an upload ends (a full disk) costs neither the outcome nor a second one.
The clip leaves the queue in the store only after its ``upload`` event is committed; until both are
done the ending is counted (:attr:`UploaderStats.store_errors`) and tried again every
:data:`STORE_RETRY_S` on the uploader's thread. A restart in between resumes the clip from the
store, the collector says it holds it whole, and its event, keyed by clip and outcome, is not
committed twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edge.commands.registry import CommandContext, CommandFailed, CommandRegistry
from edge.config.evidence import EvidenceConfig
from edge.exceptions import StoreError
from edge.jsonfmt import compact
from edge.model import EdgeModel
from edge.store import Outbox
from edge.supervisor import Loop, thread_loop
from edge.sync import MqttLink
from edge.topics import CLIP_ID_RE, Topics

log = logging.getLogger(__name__)

#: Outbox meta key of the clips queued for upload (a JSON list of clip ids, oldest first).
META_KEY = "evidence.uploads"
#: Suffixes a clip or snapshot has under ``state_dir/media/<camera>/`` (edge.services.camera.evidence).
SUFFIXES = ("mp4", "webm", "jpg")
#: How long the collector has to answer a query before it is asked again.
ANSWER_WAIT_S = 10.0
#: How long a chunk may wait for its PUBACK before the connection is taken as lost.
PUBACK_WAIT_S = 30.0
#: Rounds of sending everything missing that end without the collector holding more: then it fails.
MAX_STALLED_ROUNDS = 3
#: An ``in_progress`` ack at most this often.
PROGRESS_EVERY_S = 5.0
#: Room kept for the header line when a chunk is sized to the broker's maximum packet.
HEADER_ROOM = 512
#: How often the ending of an upload that the store refused (its event, its leaving the queue) is
#: tried again.
STORE_RETRY_S = 5.0


class UploadArgs(EdgeModel):
    """Arguments of ``evidence.upload``."""

    clip_id: str = Field(pattern=CLIP_ID_RE, description="The clip or snapshot to send (its evidence event's clip_id).")


@dataclass
class UploadJob:
    """One clip on its way to the collector."""

    clip_id: str
    camera: str
    path: Path
    ext: str
    size: int
    sha256: str
    chunk_bytes: int
    total: int
    max_kbps: float
    state: Literal["queued", "sending", "delivered", "failed"] = "queued"
    reason: str = ""
    #: Chunks sent and acknowledged by the broker, and how many of those the collector already had.
    sent: int = 0
    resent: int = 0
    #: Chunks the collector says it holds.
    held: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "clip_id": self.clip_id,
            "camera": self.camera,
            "state": self.state,
            "sha256": self.sha256,
            "bytes": self.size,
            "chunks": self.total,
            "sent": self.sent,
            "held": self.held,
        }
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class UploaderStats:
    """Counters since the uploader was made."""

    store_errors: int = 0
    """Times the store refused to record an upload's ending (its event, or the queue without it)."""


@dataclass
class _Ending:
    """An upload that has ended, waiting for the store to take its outcome."""

    job: UploadJob
    data: dict[str, Any]
    committed: bool = False


class EvidenceUploader:
    """Sends evidence clips to the collector; registers ``evidence.upload``. ``start()``/``stop()``."""

    def __init__(
        self,
        media_dir: Path,
        configs: Mapping[str, EvidenceConfig],
        outbox: Outbox,
        link: MqttLink,
        topics: Topics,
        registry: CommandRegistry | None = None,
    ) -> None:
        self.media_dir = media_dir
        self.configs = dict(configs)
        self.outbox = outbox
        self.link = link
        self.topics = topics
        self._cond = threading.Condition()
        self._queue: deque[UploadJob] = deque()
        self._jobs: dict[str, UploadJob] = {}
        self._answers: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._meta_lock = threading.Lock()  # the queue in the store is read, changed and written back
        self.stats = UploaderStats()
        # Ended uploads whose event or removal from the stored queue the store refused (uploader thread).
        self._endings: dict[str, _Ending] = {}
        link.subscribe(topics.mediaack, self._on_ack)
        if registry is not None:
            self.register(registry)

    def register(self, registry: CommandRegistry) -> None:
        """Register ``evidence.upload``: on a lane of its own (``serial``), since the handler waits for
        the upload's outcome, and uploads must never take the places of ``rating.open`` and the like."""
        registry.register(
            "evidence.upload",
            UploadArgs,
            self._cmd_upload,
            description="Send an evidence clip or snapshot to the collector (resumable, sha256-verified).",
            serial=True,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        for clip_id in self._stored_queue():
            try:
                self.upload(clip_id, persist=False)
                log.info("evidence upload of %s goes on after the restart", clip_id)
            except CommandFailed as exc:
                log.warning("evidence upload of %s not resumed: %s", clip_id, exc)
                try:
                    self._forget(clip_id)
                except StoreError as err:  # still queued: the next start tries again
                    self.stats.store_errors += 1
                    log.error("evidence upload of %s stays queued in the store: %s", clip_id, err)
        self._thread = threading.Thread(target=self._run, name="evidence-upload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(PUBACK_WAIT_S + 5)
            self._thread = None

    def reconfigure(self, config: Any) -> None:
        """The rate and chunk size of clips queued from now on follow the cameras' new settings."""
        self.configs = {cam.name: cam.evidence for cam in config.camera}

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def loops(self) -> list[Loop]:
        """The uploader's thread: one upload's failure ends that upload, never the thread."""
        return [thread_loop("evidence-upload", lambda: self._thread)]

    # -- queueing ----------------------------------------------------------------------------------

    def upload(self, clip_id: str, *, persist: bool = True) -> UploadJob:
        """Queue ``clip_id`` (the same job if it is queued already); raises :exc:`CommandFailed`
        ``unknown_clip`` if no camera of this device has it."""
        with self._cond:
            job = self._jobs.get(clip_id)
            if job is not None and not job.done.is_set():
                return job
        job = self._job(clip_id)
        # One step under the queue's lock: an earlier upload of the clip whose ending is being
        # settled must not take it off the queue in the store after this one put it there.
        with self._meta_lock:
            if persist:
                self._remember(clip_id)  # in the store first: a restart from here on goes on with it
            with self._cond:
                self._jobs[clip_id] = job
                self._queue.append(job)
                self._cond.notify_all()
        log.info("evidence upload of %s queued (%d bytes, %d chunks)", clip_id, job.size, job.total)
        return job

    def job(self, clip_id: str) -> UploadJob | None:
        """The latest upload of ``clip_id`` since this uploader started (queued, running or ended)."""
        with self._cond:
            return self._jobs.get(clip_id)

    def _locate(self, clip_id: str) -> tuple[str, Path, str]:
        for camera in sorted(self.configs):
            for ext in SUFFIXES:
                path = self.media_dir / camera / f"{clip_id}.{ext}"
                # A clip is a plain file the recorder wrote; a link could point anywhere.
                if path.is_file() and not path.is_symlink():
                    return camera, path, ext
        raise CommandFailed("unknown_clip", f"no camera of this device has a clip {clip_id} (expired, or never taken)")

    def _job(self, clip_id: str) -> UploadJob:
        camera, path, ext = self._locate(clip_id)
        digest = hashlib.sha256()
        size = 0
        try:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                    size += len(block)
        except OSError as exc:
            raise CommandFailed("unreadable_clip", f"{path}: {exc}") from exc
        if size == 0:
            raise CommandFailed("unreadable_clip", f"{path} is empty")
        cfg = self.configs[camera]
        chunk = cfg.upload_chunk_bytes
        limit = self.link.max_payload_bytes(self.topics.media(clip_id))
        if limit is not None:
            chunk = max(1024, min(chunk, limit - HEADER_ROOM))
        return UploadJob(
            clip_id, camera, path, ext, size, digest.hexdigest(), chunk, -(-size // chunk), cfg.upload_max_kbps
        )

    def _stored_queue(self) -> list[str]:
        raw = self.outbox.get_meta(META_KEY)
        try:
            value = json.loads(raw) if raw else []
        except ValueError:
            log.error("the queue of evidence uploads in the store is unreadable (%r); it is dropped", raw)
            return []
        return [c for c in value if isinstance(c, str)] if isinstance(value, list) else []

    def _remember(self, clip_id: str) -> None:
        """Add ``clip_id`` to the queue in the store (with ``_meta_lock`` held)."""
        queued = self._stored_queue()
        if clip_id not in queued:
            self.outbox.set_meta(META_KEY, compact([*queued, clip_id]))

    def _forget(self, clip_id: str, *, ended: UploadJob | None = None) -> None:
        """Take ``clip_id`` off the queue in the store; with ``ended``, only while that is still the
        clip's latest upload (not once the clip was queued again)."""
        with self._meta_lock:
            if ended is not None and self._jobs.get(clip_id) is not ended:
                return
            queued = self._stored_queue()
            if clip_id in queued:
                self.outbox.set_meta(META_KEY, compact([c for c in queued if c != clip_id]))

    # -- the command -------------------------------------------------------------------------------

    def _cmd_upload(self, args: UploadArgs, ctx: CommandContext | None) -> dict[str, Any]:
        job = self.upload(args.clip_id)
        reported = (0, 0)
        last = -PROGRESS_EVERY_S
        while not job.done.wait(0.5):
            if self._stop.is_set():
                raise CommandFailed(
                    "interrupted", "the device is stopping; the upload goes on at its next start", job.result()
                )
            now = time.monotonic()
            if ctx is not None and (job.sent, job.held) != reported and now - last >= PROGRESS_EVERY_S:
                reported, last = (job.sent, job.held), now
                ctx.progress(job.result())
        if job.state != "delivered":
            raise CommandFailed(job.reason or "upload_failed", f"clip {job.clip_id} not delivered", job.result())
        return job.result()

    # -- answers (network thread) ------------------------------------------------------------------

    def _on_ack(self, topic: str, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
        except ValueError:
            log.warning("an unreadable mediaack (%d bytes) is ignored", len(payload))
            return
        if not isinstance(ack, dict) or ack.get("v") != 1 or not isinstance(ack.get("clip_id"), str):
            log.warning("a mediaack that is not version 1 is ignored")
            return
        with self._cond:
            job = self._jobs.get(ack["clip_id"])
            if job is None:
                return
            have = ack.get("have")
            if isinstance(have, list):
                job.held = _count_ranges(have)
            if "ask" in ack:
                self._answers[job.clip_id] = ack
                self._cond.notify_all()

    # -- the uploader thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    if self._endings:
                        self._cond.wait(STORE_RETRY_S)
                        break
                    self._cond.wait()
            if self._endings:
                self._settle_endings()
            with self._cond:
                if self._stop.is_set():
                    return
                if not self._queue:
                    continue
                job = self._queue[0]
            job.state = "sending"
            try:
                self._send(job)
            except OSError as exc:
                # Most likely retention deleted the clip on the way: nothing more to send.
                job.state, job.reason = "failed", "unreadable_clip"
                log.error("evidence upload of %s: the clip cannot be read: %s", job.clip_id, exc)
            except Exception:
                # One upload's bug must not end the uploader: the next clip still goes.
                job.state, job.reason = "failed", "internal_error"
                log.exception("evidence upload of %s failed", job.clip_id)
            if self._stop.is_set() and job.state == "sending":
                return  # stays queued in the store: the next start goes on with it
            self._finish(job)

    def _finish(self, job: UploadJob) -> None:
        ending = _Ending(job, job.result())
        self._settle(ending)
        with self._cond:
            self._queue.popleft()
        job.done.set()
        if job.state == "delivered":
            log.info("evidence %s delivered: %d chunks, %d sent by this run", job.clip_id, job.total, job.sent)
        else:
            log.error("evidence %s not delivered: %s", job.clip_id, job.reason)

    def _settle(self, ending: _Ending) -> bool:
        """Commit the ``upload`` event, then take the clip off the queue in the store; False (kept
        for :meth:`_settle_endings`) if the store refused either. In that order, so that a restart
        before both are done resumes the clip rather than losing its outcome."""
        job = ending.job
        try:
            if not ending.committed:
                key = f"upload:{job.clip_id}:{job.state}"  # a retry, or an upload resumed after a restart
                self.outbox.append("upload", ending.data, "critical", dedupe_key=key)
                ending.committed = True
            self._forget(job.clip_id, ended=job)
        except StoreError as exc:
            self.stats.store_errors += 1
            if self._endings.get(job.clip_id) is not ending:
                log.error(
                    "evidence upload of %s ended %s, but the store refused to record it (again every %.0f s): %s",
                    job.clip_id,
                    job.state,
                    STORE_RETRY_S,
                    exc,
                )
            self._endings[job.clip_id] = ending
            return False
        if self._endings.pop(job.clip_id, None) is not None:
            log.info("evidence upload of %s: its ending is recorded now", job.clip_id)
        return True

    def _settle_endings(self) -> None:
        for ending in list(self._endings.values()):
            if self._stop.is_set() or not self._settle(ending):
                return  # the store still refuses: the rest waits for the next round

    def _send(self, job: UploadJob) -> None:
        ask = 0
        stalled = 0
        held_after_round: int | None = None
        while not self._stop.is_set():
            if not self.link.connected.is_set():
                self._stop.wait(0.5)
                continue
            ask += 1
            answer = self._ask(job, ask)
            if answer is None:
                self._stop.wait(0.5)
                continue
            if answer.get("error"):
                job.state, job.reason = "failed", str(answer["error"])
                return
            if answer.get("complete") and answer.get("sha256_ok"):
                job.state, job.held = "delivered", job.total
                return
            have = _indexes(answer.get("have"))
            if held_after_round is not None and len(have) <= held_after_round:
                # Everything missing went out and the broker took it, yet the collector holds no more
                # (it discarded a clip whose sha256 did not match, or it cannot store): give up soon.
                stalled += 1
                if stalled >= MAX_STALLED_ROUNDS:
                    job.state, job.reason = "failed", "not_verified"
                    return
            missing = [i for i in range(job.total) if i not in have]
            held_after_round = len(have) if self._send_chunks(job, missing) else None

    def _ask(self, job: UploadJob, ask: int) -> dict[str, Any] | None:
        """Publish a query and wait for its answer; None if it did not come (ask again)."""
        with self._cond:
            self._answers.pop(job.clip_id, None)
        fut = self.link.publish(self.topics.media(job.clip_id), self._message(job, "query", ask=ask), qos=1)
        deadline = time.monotonic() + ANSWER_WAIT_S
        with self._cond:
            while not self._stop.is_set():
                answer = self._answers.get(job.clip_id)
                if answer is not None and answer.get("ask") == ask:
                    return answer
                left = deadline - time.monotonic()
                if left <= 0 or (fut.done() and fut.exception() is not None):
                    break
                self._cond.wait(min(left, 0.5))
        return None

    def _send_chunks(self, job: UploadJob, indexes: list[int]) -> bool:
        """Send ``indexes`` one at a time at the job's rate; False if the connection failed on the way."""
        rate = job.max_kbps * 1000 / 8  # bytes per second
        with job.path.open("rb") as f:
            for index in indexes:
                if self._stop.is_set():
                    return False
                f.seek(index * job.chunk_bytes)
                data = f.read(job.chunk_bytes)
                started = time.monotonic()
                fut = self.link.publish(self.topics.media(job.clip_id), self._message(job, "chunk", index, data=data))
                try:
                    fut.result(PUBACK_WAIT_S)
                except Exception as exc:  # LinkError, a timeout: ask what arrived once connected again
                    log.info("evidence upload of %s: chunk %d not acknowledged (%s)", job.clip_id, index, exc)
                    return False
                job.sent += 1
                # The cap holds on average over each chunk: wait out what the chunk's size allows.
                if self._stop.wait(max(0.0, started + len(data) / rate - time.monotonic())):
                    return False
        return True

    def _message(
        self, job: UploadJob, kind: str, index: int | None = None, *, ask: int | None = None, data: bytes = b""
    ) -> bytes:
        header: dict[str, Any] = {
            "v": 1,
            "kind": kind,
            "clip_id": job.clip_id,
            "ext": job.ext,
            "sha256": job.sha256,
            "bytes": job.size,
            "chunk_bytes": job.chunk_bytes,
            "total": job.total,
        }
        if index is not None:
            header["index"] = index
        if ask is not None:
            header["ask"] = ask
        return compact(header).encode() + b"\n" + data


def _count_ranges(have: list[Any]) -> int:
    return len(_indexes(have))


def _indexes(have: Any) -> set[int]:
    """The chunk indexes in a ``have`` list of inclusive ranges (anything malformed counts as none)."""
    out: set[int] = set()
    if not isinstance(have, list):
        return out
    for item in have:
        if (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(x, int) for x in item)
            and 0 <= item[0] <= item[1]
        ):
            out.update(range(item[0], min(item[1], item[0] + 1_000_000) + 1))
    return out
