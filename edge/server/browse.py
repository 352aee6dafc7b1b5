"""Browsing the collector's database in Datasette: Vietnamese titles, column descriptions, and the
questions a commune asks most often as canned queries.

Datasette reads the file through read-only connections, so browsing next to a running collector
never changes what it stored. Times in the queries are Vietnam's (UTC+7): SQLite reads the offset
every ``ts`` carries, converts to UTC, and ``'+7 hours'`` brings it to local time.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from edge.server.db import CollectorDbError, is_postgres_url, open_db

log = logging.getLogger(__name__)

#: Minutes without any event after which a device is listed as offline (health comes every 5 min).
DEFAULT_OFFLINE_MINUTES = 30

_EVENT_COLUMNS = {
    "id": "Mã sự kiện (UUIDv7), duy nhất; sự kiện gửi lại được lưu một lần",
    "device": "Mã thiết bị gửi sự kiện",
    "commune": "Mã xã của thiết bị",
    "epoch": "Mã ngẫu nhiên của cơ sở dữ liệu trên thiết bị; seq bắt đầu lại khi epoch đổi",
    "seq": "Số thứ tự của sự kiện trên thiết bị, trong epoch, không bao giờ dùng lại",
    "type": "Loại sự kiện: rating, broadcast, presence, tamper, evidence, health, security, panel, test",
    "priority": "Mức ưu tiên lưu giữ trên thiết bị: critical, normal, bulk",
    "ts": "Thời điểm trên đồng hồ thiết bị, ISO 8601 kèm múi giờ",
    "clock_synced": "1 nếu đồng hồ thiết bị đã đồng bộ (NTP) lúc ghi sự kiện",
    "data": "Nội dung sự kiện (JSON); phiếu đánh giá và lượt phát loa có trường chain (chuỗi băm)",
    "received_at": "Thời điểm máy chủ xã lưu sự kiện",
}

_CHAIN_COLUMNS = {
    "commune": "Mã xã",
    "device": "Mã thiết bị",
    "epoch": "Epoch mà chuỗi được tạo",
    "events": "Số sự kiện của chuỗi đã nhận",
    "length": "Số thứ tự lớn nhất đã biết (nhận được, hoặc do thiết bị báo khi epoch kết thúc)",
    "verified": "Các sự kiện số 1 đến số này đều có mặt và khớp mã băm",
    "whole": "1 nếu chuỗi toàn vẹn, không có lỗi nào",
    "breaks": "Số lỗi phát hiện",
    "first_break_kind": "Loại lỗi đầu tiên: missing, altered, reordered, duplicate, malformed, unchained",
    "first_break_n": "Vị trí lỗi đầu tiên trong chuỗi",
    "first_break": "Mô tả lỗi đầu tiên",
    "detail": "Toàn bộ kết quả kiểm tra (JSON)",
    "updated_at": "Lần kiểm tra gần nhất",
}

_THIS_MONTH = "coalesce(nullif(:month, ''), strftime('%Y-%m', 'now', '+7 hours'))"

QUERIES: dict[str, dict[str, Any]] = {
    "ratings_by_officer": {
        "title": "Phiếu đánh giá theo cán bộ trong tháng",
        "description": (
            "Số phiếu hợp lệ, số phiếu hài lòng (hài lòng + rất hài lòng) và tỷ lệ hài lòng của từng cán bộ "
            "trong tháng này (giờ Việt Nam), hoặc tháng ghi ở ô month (YYYY-MM). Lượt bấm bị đánh dấu "
            "không hợp lệ không được tính, chỉ đếm riêng."
        ),
        "sql": f"""SELECT commune, officer, votes, satisfied,
       round(100.0 * satisfied / votes, 1) AS share_satisfied,
       flagged, counters
FROM (
    SELECT commune,
           coalesce(json_extract(data, '$.officer'), '') AS officer,
           sum(json_extract(data, '$.misuse') IS NULL) AS votes,
           sum(json_extract(data, '$.misuse') IS NULL
               AND json_extract(data, '$.label') IN ('very_satisfied', 'satisfied')) AS satisfied,
           sum(json_extract(data, '$.misuse') IS NOT NULL) AS flagged,
           group_concat(DISTINCT json_extract(data, '$.counter')) AS counters
    FROM events
    WHERE type = 'rating' AND strftime('%Y-%m', ts, '+7 hours') = {_THIS_MONTH}
    GROUP BY commune, officer
)
ORDER BY commune, share_satisfied DESC, officer""",
    },
    "devices_offline": {
        "title": "Thiết bị mất liên lạc",
        "description": (
            "Thiết bị không gửi sự kiện nào trong số phút ghi ở ô minutes "
            f"(mặc định {DEFAULT_OFFLINE_MINUTES}; thiết bị gửi tình trạng 5 phút một lần)."
        ),
        "sql": f"""SELECT commune, device, max(received_at) AS last_received, count(*) AS events
FROM events
GROUP BY commune, device
HAVING julianday(max(received_at))
       < julianday('now', '-' || coalesce(nullif(:minutes, ''), '{DEFAULT_OFFLINE_MINUTES}') || ' minutes')
ORDER BY last_received""",
    },
    "failed_broadcasts": {
        "title": "Lượt phát loa bị lỗi",
        "description": "Các bản tin mà cụm loa báo phát lỗi, mới nhất trước, kèm nguyên nhân.",
        "sql": """SELECT ts, commune, device,
       json_extract(data, '$.broadcast_id') AS broadcast_id,
       json_extract(data, '$.priority') AS priority,
       json_extract(data, '$.reason') AS reason,
       json_extract(data, '$.detail') AS detail,
       json_extract(data, '$.zones') AS zones
FROM events
WHERE type = 'broadcast' AND json_extract(data, '$.state') = 'failed'
ORDER BY ts DESC""",
    },
    "tamper_incidents": {
        "title": "Sự cố camera (bị che, mất nét, bị xoay, hình đứng, mất tín hiệu)",
        "description": "Mỗi sự cố một dòng: lúc bắt đầu, lúc kết thúc (trống nếu chưa kết thúc) và thời lượng.",
        "sql": """SELECT commune, device,
       json_extract(data, '$.camera') AS camera,
       json_extract(data, '$.counter') AS counter,
       json_extract(data, '$.incident') AS incident,
       max(json_extract(data, '$.kind')) AS kind,
       min(CASE WHEN json_extract(data, '$.state') = 'start' THEN ts END) AS started,
       max(CASE WHEN json_extract(data, '$.state') = 'end' THEN ts END) AS ended,
       round((julianday(max(CASE WHEN json_extract(data, '$.state') = 'end' THEN ts END))
              - julianday(min(CASE WHEN json_extract(data, '$.state') = 'start' THEN ts END))) * 86400) AS seconds
FROM events
WHERE type = 'tamper'
GROUP BY commune, device, camera, incident
ORDER BY started DESC""",
    },
}


def sqlite_file(db: str | Path) -> Path:
    """``db`` as the SQLite file Datasette serves; a PostgreSQL URL is refused with what to do instead."""
    if is_postgres_url(db):
        raise CollectorDbError(
            "edge browse serves the collector's SQLite file in Datasette, not a PostgreSQL database: "
            "for PostgreSQL use its own tools (psql, pgAdmin; the tables are events and chains), "
            "or edge report / edge verify --db with the same URL"
        )
    return Path(db)


def metadata(db: Path) -> dict[str, Any]:
    """Datasette metadata for the collector database at ``db``."""
    return {
        "title": "Dữ liệu thiết bị của xã",
        "description": (
            "Sự kiện do các thiết bị gửi về máy chủ xã: phiếu đánh giá tại bộ phận Một cửa, lượt phát "
            "của loa truyền thanh, camera tại quầy và tình trạng thiết bị."
        ),
        "databases": {
            db.stem: {
                "title": "Máy chủ xã: sự kiện đã nhận",
                "description": "Mỗi sự kiện được lưu một lần theo mã (id); thứ tự rowid là thứ tự nhận.",
                "tables": {
                    "events": {
                        "title": "Sự kiện từ thiết bị",
                        "description": "Một dòng cho mỗi sự kiện; nội dung ở cột data (JSON).",
                        "columns": _EVENT_COLUMNS,
                        "sort_desc": "received_at",
                    },
                    "chains": {
                        "title": "Tính toàn vẹn: chuỗi băm của từng thiết bị",
                        "description": ("Kết quả kiểm tra chuỗi băm theo thiết bị và epoch (edge verify --record)."),
                        "columns": _CHAIN_COLUMNS,
                    },
                },
                "queries": QUERIES,
            }
        },
    }


def write_metadata(db: Path, path: Path) -> Path:
    path.write_text(json.dumps(metadata(db), ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def serve(db: Path, *, host: str = "127.0.0.1", port: int = 8001, metadata_out: Path | None = None) -> int:
    """Serve ``db`` in Datasette until interrupted; returns Datasette's exit status."""
    open_db(sqlite_file(db)).close()  # a clear error for a file that is not a collector database
    from datasette.cli import cli

    with tempfile.TemporaryDirectory(prefix="edge-browse-") as tmp:
        meta = write_metadata(db, metadata_out or Path(tmp) / "metadata.json")
        log.info("serving %s on http://%s:%d/ (metadata %s)", db, host, port, meta)
        result = cli.main(
            ["serve", str(db), "--metadata", str(meta), "--host", host, "--port", str(port)],
            prog_name="edge browse",
            standalone_mode=False,
        )
    return int(result or 0)
