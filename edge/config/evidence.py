"""``[camera.evidence]``: when a counter camera keeps pictures, for how long, and how faces are found.

Nested in each ``[[camera]]`` section (``CameraConfig.evidence``). Pictures are kept only for a reason
(a low rating, a ``snapshot.take`` command, a tamper start), always with every face blurred and the
privacy mask blacked out before any byte is written (edge/services/camera/evidence.py).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from edge.model import EdgeModel


class EvidenceConfig(EdgeModel):
    """Evidence clips and snapshots of one camera: the ring buffer, the triggers, retention and face blur."""

    low_rating_max_score: int | None = Field(
        default=1,
        ge=1,
        description="A rating at or below this score (1 = 'Không hài lòng' on the shipped panels) records a "
        "clip around the press; null: ratings never record one.",
    )
    pre_s: float = Field(default=10.0, ge=0, le=60, description="Seconds of video before the moment in a clip.")
    post_s: float = Field(
        default=10.0, ge=0, le=60, description="Seconds of video after the moment in a clip (the clip waits for them)."
    )
    ring_s: float = Field(
        default=15.0,
        gt=0,
        le=120,
        description="Seconds of recent frames kept in memory (JPEG-compressed, never on disk); at least "
        "pre_s and post_s.",
    )
    ring_fps: float = Field(
        default=5.0, gt=0, le=30, description="Frames per second kept in the ring buffer, and so in a clip."
    )
    jpeg_quality: int = Field(
        default=85, ge=30, le=100, description="JPEG quality of the ring buffer's frames and of snapshots."
    )
    retention_days: float = Field(
        default=30,
        gt=0,
        le=3650,
        description="Clips and snapshots are deleted this many days after they were written; their "
        "evidence events stay.",
    )
    media_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=100_000,
        description="Bytes of this camera's clips and snapshots kept under state_dir/media/<camera>/, "
        "within what store.max_bytes leaves after events.db and the other cameras; to make room for a new "
        "one the oldest are deleted first. A file larger than this is not written.",
    )
    face_model: Path | None = Field(
        default=None,
        description="The CenterFace ONNX face detector (centerface.onnx); empty: "
        "$prefix/share/commune-edge/models/centerface.onnx, where the set-up step installs it. Without "
        "the model no picture is ever written.",
    )
    face_threshold: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Detector score from which a region counts as a face and is blurred; lower blurs more "
        "(a false face costs a blurred patch, a missed face costs privacy).",
    )
    upload_max_kbps: float = Field(
        default=256,
        gt=0,
        le=100_000,
        description="evidence.upload sends this camera's clips at most this fast (kilobits per second), one "
        "chunk at a time, so that events always find the uplink free.",
    )
    upload_chunk_bytes: int = Field(
        default=48 * 1024,
        ge=1024,
        le=256 * 1024,
        description="Bytes of a clip per MQTT message of an upload; smaller still if the broker announces a "
        "lower maximum packet size.",
    )

    @model_validator(mode="after")
    def _ring_holds_a_clip(self) -> EvidenceConfig:
        # The frames before the moment are taken from the ring when the clip is asked for, those after
        # it as they come: the ring has to reach back pre_s now, and post_s when the clip is complete.
        if self.ring_s < max(self.pre_s, self.post_s):
            raise ValueError(
                f"ring_s ({self.ring_s:g}) must be at least pre_s ({self.pre_s:g}) and post_s ({self.post_s:g})"
            )
        return self
