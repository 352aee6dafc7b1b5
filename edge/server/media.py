"""Evidence uploads at the collector: chunks stored as they come, the file recorded once whole and verified.

A device sends a clip on ``{prefix}/media/{clip_id}`` (DESIGN.md §9 "Upload"), one MQTT message per
chunk, each framed as one line of JSON, a newline, then the chunk's raw bytes::

    {"v":1,"kind":"chunk","clip_id":"0193…","ext":"mp4","sha256":"…","bytes":812345,
     "chunk_bytes":49152,"total":17,"index":3}\\n<49152 bytes>

A message of ``"kind":"query"`` (no ``index``, nothing after the newline) asks what the collector
holds. Every message is answered on ``{prefix}/mediaack``::

    {"v":1,"clip_id":"0193…","have":[[0,5],[7,7]],"complete":false,"sha256_ok":false}

``have`` lists the chunk indexes held (inclusive ranges); ``complete`` with ``sha256_ok`` true means the
file is recorded. An answer to a query echoes its ``ask`` number; an upload that can never be taken
carries ``error`` (a word) and ``detail``.

Durable first, then answered: a chunk is written into ``<clip_id>.<ext>.part`` at its offset and
flushed to disk, and only then is its index committed to ``media_chunks`` and counted in ``have``.
So after a restart of the collector (or a lost connection) the device sends only what is missing.
Once every chunk is held the part file is hashed; if its sha256 is the one the device announced it is
renamed to ``media_dir/<commune>/<device>/<clip_id>.<ext>`` (0600) and a row goes into ``media``; if
not, the chunks are discarded and the answer says ``sha256_ok: false``, ``have: []``.

The device in the topic is the sender: the broker's ACL lets a device write only under its own prefix,
so nothing here trusts a device name in the payload. Messages are handled on a thread of their own (a
chunk's write and fsync must not hold up the network thread, which carries every device's events).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from edge.clock import now_iso
from edge.jsonfmt import compact
from edge.model import EdgeModel
from edge.store import ranges_of
from edge.topics import CLIP_ID_RE, parse_device_topic

log = logging.getLogger(__name__)

_CLIP_ID = re.compile(CLIP_ID_RE)
#: The largest chunk the collector takes (the device's default is 48 KiB, under any sane broker cap).
MAX_CHUNK_BYTES = 256 * 1024
#: The largest clip the collector takes: a device keeps at most ``media_max_bytes`` per camera anyway.
DEFAULT_MAX_CLIP_BYTES = 512 * 1024 * 1024
#: Messages waiting to be handled, at most; past it the oldest is dropped (its device asks again).
MAX_WAITING = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS media (
    commune     TEXT NOT NULL,
    device      TEXT NOT NULL,
    clip_id     TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    path        TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (commune, device, clip_id)
);
CREATE TABLE IF NOT EXISTS media_parts (
    commune     TEXT NOT NULL,
    device      TEXT NOT NULL,
    clip_id     TEXT NOT NULL,
    ext         TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    chunk_bytes INTEGER NOT NULL,
    total       INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    PRIMARY KEY (commune, device, clip_id)
);
CREATE TABLE IF NOT EXISTS media_chunks (
    commune TEXT NOT NULL,
    device  TEXT NOT NULL,
    clip_id TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    PRIMARY KEY (commune, device, clip_id, idx)
);
"""


class ChunkHeader(EdgeModel):
    """The JSON line in front of every ``media/{clip_id}`` message."""

    v: Literal[1] = Field(description="Contract version.")
    kind: Literal["chunk", "query"] = Field(description="A chunk of the clip, or a question: what is held?")
    clip_id: str = Field(pattern=CLIP_ID_RE, description="The clip, as in its evidence event and the topic.")
    ext: Literal["mp4", "webm", "jpg"] = Field(description="The file's suffix on the device.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the whole file.")
    bytes: int = Field(ge=1, description="Size of the whole file.")
    chunk_bytes: int = Field(ge=1, le=MAX_CHUNK_BYTES, description="Size of every chunk but the last.")
    total: int = Field(ge=1, description="Number of chunks: ceil(bytes / chunk_bytes).")
    index: int | None = Field(default=None, ge=0, description="This chunk's index (kind chunk only).")
    ask: int | None = Field(default=None, ge=0, description="A query's number, echoed in its answer.")


@dataclass
class MediaStats:
    messages: int = 0
    chunks_stored: int = 0
    #: Chunks that arrived again after they were held (a lost PUBACK, a resend after a reconnect).
    duplicates: int = 0
    completed: int = 0
    sha256_mismatches: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    dropped_overload: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "chunks_stored": self.chunks_stored,
            "duplicates": self.duplicates,
            "completed": self.completed,
            "sha256_mismatches": self.sha256_mismatches,
            "rejected": dict(self.rejected),
            "dropped_overload": self.dropped_overload,
        }


class Refused(Exception):
    """A message that can never be taken; ``reason`` is a countable word."""

    def __init__(self, reason: str, detail: str, clip_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.clip_id = clip_id


Publish = Callable[[str, bytes], Any]


class MediaReceiver:
    """Takes evidence uploads for the collector. ``on_message`` is its MQTT handler (quick, network
    thread); ``start()``/``stop()`` run the thread that stores and answers."""

    def __init__(
        self,
        db: str | Path,
        media_dir: str | Path,
        publish: Publish,
        *,
        root: str = "vn",
        max_clip_bytes: int = DEFAULT_MAX_CLIP_BYTES,
    ) -> None:
        self.media_dir = Path(media_dir)
        self.media_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root
        self.max_clip_bytes = max_clip_bytes
        self.stats = MediaStats()
        self._publish = publish
        # A connection of its own to the collector's database (WAL): the event store's connection
        # belongs to the collector thread.
        self.conn = sqlite3.connect(Path(db), isolation_level=None, check_same_thread=False, timeout=15.0)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.executescript(_SCHEMA)
        self._waiting: deque[tuple[str, bytes]] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- threads -----------------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        """The MQTT handler for ``media_filter(root, commune)``: queue the message for the media thread."""
        with self._cond:
            self._waiting.append((topic, payload))
            while len(self._waiting) > MAX_WAITING:
                # Nothing is lost: an unanswered chunk is asked about and sent again by its device.
                self._waiting.popleft()
                self.stats.dropped_overload += 1
            self._cond.notify()

    def start(self) -> MediaReceiver:
        self._thread = threading.Thread(target=self._run, name="collector-media", daemon=True)
        self._thread.start()
        return self

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                topic, payload = self._waiting.popleft()
            try:
                self.handle(topic, payload)
            except (OSError, sqlite3.Error) as exc:
                # Not answered, so the device asks again and sends what is still missing.
                log.error("media: could not store a message on %s: %s", topic, exc)

    # -- one message -------------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        """Store one ``media/{clip_id}`` message and answer it; returns the answer (None: unanswerable)."""
        self.stats.messages += 1
        where = parse_device_topic(topic)
        if where is None or not where.rest.startswith("media/"):
            self._count("wrong_topic", topic, "")
            return None
        topic_clip = where.rest[len("media/") :]
        if not _CLIP_ID.match(topic_clip):
            self._count("bad_clip_id", topic, "the topic names no clip id")
            return None
        ack_topic = f"{self.root}/{where.commune}/dev/{where.device}/mediaack"
        try:
            header, data = self._parse(topic_clip, payload)
            answer = self._take(where.commune, where.device, header, data)
        except Refused as exc:
            self._count(exc.reason, topic, exc.detail)
            answer = {
                "v": 1,
                "clip_id": topic_clip,
                "have": [],
                "complete": False,
                "sha256_ok": False,
                "error": exc.reason,
                "detail": exc.detail[:300],
            }
        self._publish(ack_topic, compact(answer).encode())
        return answer

    def _count(self, reason: str, topic: str, detail: str) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        log.warning("media: refused a message on %s: %s %s", topic, reason, detail)

    def _parse(self, topic_clip: str, payload: bytes) -> tuple[ChunkHeader, bytes]:
        line, sep, data = payload.partition(b"\n")
        if not sep:
            raise Refused("schema", "no header line")
        try:
            header = ChunkHeader.model_validate(json.loads(line))
        except (ValueError, ValidationError) as exc:
            first = exc.errors(include_url=False)[0] if isinstance(exc, ValidationError) else None
            detail = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}" if first else str(exc)
            raise Refused("schema", detail) from None
        if header.clip_id != topic_clip:
            raise Refused("wrong_topic", f"clip_id {header.clip_id} on media/{topic_clip}")
        if header.bytes > self.max_clip_bytes:
            raise Refused("too_large", f"{header.bytes} bytes, over this collector's {self.max_clip_bytes}")
        if header.total != -(-header.bytes // header.chunk_bytes):
            raise Refused("schema", f"total {header.total} does not fit {header.bytes} bytes in {header.chunk_bytes}")
        if header.kind == "chunk":
            if header.index is None or header.index >= header.total:
                raise Refused("schema", f"index {header.index} of {header.total} chunks")
            expected = min(header.chunk_bytes, header.bytes - header.index * header.chunk_bytes)
            if len(data) != expected:
                raise Refused("schema", f"chunk {header.index} has {len(data)} bytes, not {expected}")
        elif data:
            raise Refused("schema", "a query carries no data")
        return header, data

    def _take(self, commune: str, device: str, h: ChunkHeader, data: bytes) -> dict[str, Any]:
        key = (commune, device, h.clip_id)
        answer: dict[str, Any] = {"v": 1, "clip_id": h.clip_id}
        if h.ask is not None:
            answer["ask"] = h.ask
        done = self.conn.execute(
            "SELECT sha256 FROM media WHERE commune = ? AND device = ? AND clip_id = ?", key
        ).fetchone()
        if done is not None:
            if done[0] != h.sha256:
                raise Refused("clip_exists", "this clip is recorded with another sha256", h.clip_id)
            if h.kind == "chunk":
                self.stats.duplicates += 1
            return {**answer, "have": [[0, h.total - 1]], "complete": True, "sha256_ok": True}
        part = self._part(commune, device, h)
        have = self._have(key)
        if h.kind == "chunk" and h.index is not None:
            if h.index in have:
                self.stats.duplicates += 1
            else:
                self._write_chunk(part, h, data)
                self.conn.execute(
                    "INSERT OR IGNORE INTO media_chunks (commune, device, clip_id, idx) VALUES (?, ?, ?, ?)",
                    (*key, h.index),
                )
                have.add(h.index)
                self.stats.chunks_stored += 1
        if len(have) == h.total:
            return {**answer, **self._finish(commune, device, h, part)}
        return {**answer, "have": ranges_of(have), "complete": False, "sha256_ok": False}

    def _dir(self, commune: str, device: str) -> Path:
        path = self.media_dir / commune / device
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def _part(self, commune: str, device: str, h: ChunkHeader) -> Path:
        """The part file of this upload, begun afresh when the device announces another file."""
        key = (commune, device, h.clip_id)
        row = self.conn.execute(
            "SELECT ext, sha256, bytes, chunk_bytes FROM media_parts WHERE commune = ? AND device = ? AND clip_id = ?",
            key,
        ).fetchone()
        part = self._dir(commune, device) / f"{h.clip_id}.{h.ext}.part"
        if row is not None and tuple(row) == (h.ext, h.sha256, h.bytes, h.chunk_bytes):
            return part
        if row is not None:
            log.warning("media: %s/%s %s is announced anew (another size or sha256); begun again", *key)
            self._discard(key, self._dir(commune, device) / f"{h.clip_id}.{row[0]}.part")
        self.conn.execute(
            "INSERT INTO media_parts (commune, device, clip_id, ext, sha256, bytes, chunk_bytes, total, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*key, h.ext, h.sha256, h.bytes, h.chunk_bytes, h.total, now_iso()),
        )
        return part

    def _have(self, key: tuple[str, str, str]) -> set[int]:
        rows = self.conn.execute(
            "SELECT idx FROM media_chunks WHERE commune = ? AND device = ? AND clip_id = ?", key
        ).fetchall()
        return {int(r[0]) for r in rows}

    @staticmethod
    def _write_chunk(part: Path, h: ChunkHeader, data: bytes) -> None:
        assert h.index is not None
        fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, h.index * h.chunk_bytes)
            os.fsync(fd)  # on disk before the index is committed and answered
        finally:
            os.close(fd)

    def _discard(self, key: tuple[str, str, str], part: Path) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("DELETE FROM media_chunks WHERE commune = ? AND device = ? AND clip_id = ?", key)
            self.conn.execute("DELETE FROM media_parts WHERE commune = ? AND device = ? AND clip_id = ?", key)
            self.conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        part.unlink(missing_ok=True)

    def _finish(self, commune: str, device: str, h: ChunkHeader, part: Path) -> dict[str, Any]:
        key = (commune, device, h.clip_id)
        final = self._dir(commune, device) / f"{h.clip_id}.{h.ext}"
        # A restart between the rename and the commit below leaves the final file and no part.
        source = part if part.exists() else final
        digest = _sha256(source) if source.exists() else None
        if digest != h.sha256:
            self.stats.sha256_mismatches += 1
            log.warning(
                "media: %s/%s %s: sha256 %s, the device announced %s; the chunks are discarded",
                commune,
                device,
                h.clip_id,
                digest,
                h.sha256,
            )
            self._discard(key, part)
            return {"have": [], "complete": False, "sha256_ok": False}
        if source == part:
            os.chmod(part, 0o600)
            os.replace(part, final)
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                "INSERT OR REPLACE INTO media (commune, device, clip_id, sha256, bytes, path, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, h.sha256, h.bytes, str(final), now_iso()),
            )
            self.conn.execute("DELETE FROM media_chunks WHERE commune = ? AND device = ? AND clip_id = ?", key)
            self.conn.execute("DELETE FROM media_parts WHERE commune = ? AND device = ? AND clip_id = ?", key)
            self.conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        self.stats.completed += 1
        log.info("media: %s/%s %s recorded (%d bytes, sha256 verified) at %s", *key, h.bytes, final)
        return {"have": [[0, h.total - 1]], "complete": True, "sha256_ok": True}


def media_paths(db: str | Path, media_dir: Path | None) -> tuple[Path, Path] | None:
    """Where uploads go for the collector database ``db``: ``(index database, media directory)``, or
    None when this collector takes none.

    Beside a SQLite database, its ``media`` tables share the file and the clips go to ``media/`` next
    to it (or to ``media_dir``). A PostgreSQL URL names no directory: only with ``media_dir`` does the
    collector take uploads, keeping their index in ``media.db`` there; the clips' files are local to
    one server, so one collector of a group is given ``--media``.
    """
    if str(db).startswith(("postgresql://", "postgres://")):
        if media_dir is None:
            log.info("no --media directory: this collector takes no evidence uploads")
            return None
        media_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return media_dir / "media.db", media_dir
    return Path(db), media_dir or Path(db).parent / "media"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
