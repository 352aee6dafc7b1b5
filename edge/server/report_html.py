"""The monthly report as one self-contained HTML page, in Vietnamese, that prints on A4.

The charts are drawn with matplotlib's SVG backend and put inline, text as paths (so the page
needs no font for them, and the glyphs of Vietnamese are the ones matplotlib ships); nothing is
fetched from anywhere. Every table cell that holds a figure carries it in ``data-value`` under its
CSV column name (``data-col``), so the page, the CSV files and the JSON can be checked against each
other.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable, Sequence
from typing import Any

from edge.server.report import LABELS, MISUSE_KINDS, PLAY_ENDS

LABEL_VI = {
    "very_satisfied": "Rất hài lòng",
    "satisfied": "Hài lòng",
    "neutral": "Bình thường",
    "dissatisfied": "Không hài lòng",
    "very_dissatisfied": "Rất không hài lòng",
}
MISUSE_VI = {"outside_window": "ngoài lượt đánh giá", "cooldown": "bấm lại quá nhanh", "burst": "bấm liên tục"}
PLAY_VI = {
    "finished": "Phát xong",
    "failed": "Lỗi",
    "preempted": "Bị ngắt",
    "expired": "Quá hạn",
    "cancelled": "Đã hủy",
}
PRIORITY_VI = {"normal": "Thường", "priority": "Ưu tiên", "emergency": "Khẩn cấp"}
TAMPER_VI = {
    "covered": "bị che",
    "defocused": "mất nét",
    "moved": "bị xoay",
    "frozen": "hình đứng",
    "lost": "mất tín hiệu",
}
BREAK_VI = {
    "missing": "Thiếu sự kiện",
    "altered": "Bị sửa đổi",
    "reordered": "Sai thứ tự",
    "duplicate": "Trùng số thứ tự",
    "malformed": "Chuỗi hỏng",
    "unchained": "Không có chuỗi",
}

#: The colours of the charts (also what a test looks for in a screenshot of the page).
COLOURS = {
    "very_satisfied": "#1a9850",
    "satisfied": "#91cf60",
    "neutral": "#fdd835",
    "dissatisfied": "#fc8d59",
    "very_dissatisfied": "#d73027",
    "share": "#2b6cb0",
    "below": "#e53e3e",
    "previous": "#718096",
    "threshold": "#c53030",
    "hours": "#dd6b20",
    "played": "#2f855a",
    "failed": "#c53030",
}

_CSS = """
@page { size: A4; margin: 14mm 12mm; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", "Noto Sans", Arial, sans-serif; font-size: 10pt; color: #1a202c;
       max-width: 186mm; margin: 0 auto; padding: 8mm 0; line-height: 1.35; }
h1 { font-size: 16pt; margin: 0 0 2mm; }
h2 { font-size: 13pt; margin: 7mm 0 2mm; border-bottom: 1px solid #cbd5e0; padding-bottom: 1mm; break-after: avoid; }
h3 { font-size: 11pt; margin: 4mm 0 1mm; break-after: avoid; }
p.meta { color: #4a5568; margin: 0 0 4mm; }
.figures { display: flex; flex-wrap: wrap; gap: 3mm; margin: 3mm 0; }
.figure-box { border: 1px solid #cbd5e0; border-radius: 2mm; padding: 2mm 3mm; min-width: 40mm; flex: 1; }
.figure-box b { display: block; font-size: 14pt; }
figure { margin: 2mm 0 4mm; break-inside: avoid; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { font-size: 9pt; color: #4a5568; }
table { border-collapse: collapse; width: 100%; font-size: 8.5pt; margin: 2mm 0 4mm; }
th, td { border: 1px solid #cbd5e0; padding: 1mm 1.5mm; text-align: right; vertical-align: top; }
th { background: #edf2f7; }
td.t, th.t { text-align: left; }
thead { display: table-header-group; }
tr { break-inside: avoid; }
.ok { color: #276749; font-weight: bold; }
.bad { color: #c53030; font-weight: bold; }
.muted { color: #718096; }
code { font-size: 7.5pt; word-break: break-all; }
footer { margin-top: 8mm; font-size: 8.5pt; color: #4a5568; }
@media print { body { padding: 0; } a { color: inherit; text-decoration: none; } }
"""


# -- numbers the Vietnamese way ------------------------------------------------------------------


def fmt_int(n: int | None) -> str:
    return "–" if n is None else f"{n:,}".replace(",", ".")


def fmt_pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}".replace(".", ",") + "%"


def fmt_pp(v: float | None) -> str:
    if v is None:
        return "–"
    return ("+" if v > 0 else "") + f"{v:.1f}".replace(".", ",") + " điểm"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = round(seconds)
    if s < 60:
        return f"{s} giây"
    h, m = divmod(s // 60, 60)
    return f"{h} giờ {m:02d} phút" if h else f"{m} phút"


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text))


def _value(v: Any) -> str:
    """A cell's value as the CSV holds it."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    return str(v)


def _pairs(counts: dict[str, int]) -> str:
    """``{"a": 1, "b": 2}`` as the CSV writes it: ``a=1 b=2``."""
    return " ".join(f"{k}={v}" for k, v in counts.items())


def _td(col: str, value: Any, text: str | None = None, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    shown = _e(value) if text is None else text
    return f'<td{attr} data-col="{col}" data-value="{_e(_value(value))}">{shown}</td>'


# -- charts ----------------------------------------------------------------------------------------


def _svg(draw: Callable[[Any], None], name: str, height_in: float, caption: str) -> str:
    """A matplotlib figure drawn by ``draw(fig)`` as an inline SVG with its ids made unique."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context(
        {
            "svg.fonttype": "path",
            "svg.hashsalt": name,
            "font.family": "DejaVu Sans",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    ):
        fig = Figure(figsize=(7.0, height_in), layout="constrained")
        draw(fig)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    # Several SVGs in one page share one id space: give each its own prefix.
    text = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', text)
    text = re.sub(
        r'<svg([^>]*?) width="[^"]*" height="[^"]*"',
        rf'<svg\1 width="100%" role="img" aria-label="{_e(caption)}" data-chart="{name}"',
        text,
        count=1,
    )
    return f"<figure>{text}<figcaption>{_e(caption)}</figcaption></figure>"


def _pct_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0f}%"))


def _share_chart(rows: Sequence[dict[str, Any]], names: list[str], threshold: float, name: str, title: str) -> str:
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ys = list(range(len(rows)))[::-1]
        shares = [r["share_satisfied"] or 0.0 for r in rows]
        colours = [COLOURS["below"] if r.get("below_threshold") else COLOURS["share"] for r in rows]
        ax.barh(ys, shares, color=colours, height=0.6)
        prev = [(y, (r["previous"] or {}).get("share_satisfied")) for y, r in zip(ys, rows, strict=True)]
        px = [(y, v) for y, v in prev if v is not None]
        if px:
            ax.scatter(
                [v for _, v in px],
                [y for y, _ in px],
                marker="D",
                s=22,
                color=COLOURS["previous"],
                zorder=3,
                label="Tháng trước",
            )
        ax.axvline(threshold, color=COLOURS["threshold"], linestyle="--", linewidth=1.2, label=f"Ngưỡng {threshold:g}%")
        for y, r in zip(ys, rows, strict=True):
            # Right of the bar and of last month's marker, so neither hides the figure.
            at = max(r["share_satisfied"] or 0.0, (r["previous"] or {}).get("share_satisfied") or 0.0)
            ax.text(at + 2, y, fmt_pct(r["share_satisfied"]), va="center", fontsize=8)
        ax.set_yticks(ys, names)
        ax.set_xlim(0, 110)
        _pct_axis(ax)
        ax.set_xlabel("Tỷ lệ hài lòng (hài lòng + rất hài lòng trên số phiếu hợp lệ)")
        fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)

    return _svg(draw, name, 1.2 + 0.32 * len(rows), title)


def _distribution_chart(rows: Sequence[dict[str, Any]], names: list[str], name: str, title: str) -> str:
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ys = list(range(len(rows)))[::-1]
        left = [0.0] * len(rows)
        for label in LABELS:
            counts = [r["by_label"][label] for r in rows]
            if not any(counts):
                continue
            ax.barh(ys, counts, left=left, color=COLOURS[label], height=0.6, label=LABEL_VI[label])
            left = [a + b for a, b in zip(left, counts, strict=True)]
        ax.set_yticks(ys, names)
        ax.set_xlabel("Số phiếu hợp lệ")
        fig.legend(loc="outside lower center", ncol=5, fontsize=8, frameon=False)

    return _svg(draw, name, 1.4 + 0.32 * len(rows), title)


def _hours_chart(hours: Sequence[int], name: str, title: str) -> str:
    used = [h for h in range(24) if hours[h]]
    lo, hi = (min(used), max(used)) if used else (7, 17)

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        xs = list(range(lo, hi + 1))
        ax.bar(xs, [hours[h] for h in xs], color=COLOURS["hours"], width=0.7)
        ax.set_xticks(xs, [str(h) for h in xs])
        ax.set_ylabel("Số phiếu hợp lệ")
        ax.set_xlabel("Giờ trong ngày (giờ Việt Nam)")

    return _svg(draw, name, 2.4, title)


def _loudspeaker_chart(rows: Sequence[dict[str, Any]], name: str, title: str) -> str:
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        xs = list(range(len(rows)))
        ax.bar(
            [x - 0.18 for x in xs],
            [r["finished"] for r in rows],
            width=0.36,
            color=COLOURS["played"],
            label="Phát xong",
        )
        ax.bar([x + 0.18 for x in xs], [r["failed"] for r in rows], width=0.36, color=COLOURS["failed"], label="Lỗi")
        ax.set_xticks(xs, [r["device"] for r in rows], rotation=20 if len(rows) > 6 else 0)
        ax.set_ylabel("Lượt phát")
        ax.legend(fontsize=8, frameon=False)

    return _svg(draw, name, 2.4, title)


# -- the page --------------------------------------------------------------------------------------


def _month_vi(month: str) -> str:
    year, mon = month.split("-")
    return f"tháng {int(mon)}/{year}"


def _tally_cells(r: dict[str, Any]) -> str:
    cells = [_td("counted", r["counted"], fmt_int(r["counted"]))]
    cells += [_td(label, r["by_label"][label], fmt_int(r["by_label"][label])) for label in LABELS]
    share_cls = "bad" if r.get("below_threshold") else ""
    cells.append(_td("share_satisfied", r["share_satisfied"], fmt_pct(r["share_satisfied"]), share_cls))
    prev = (r["previous"] or {}).get("share_satisfied")
    cells.append(_td("previous_share_satisfied", prev, fmt_pct(prev)))
    cells.append(_td("change_pp", r["change_pp"], fmt_pp(r["change_pp"])))
    flagged = r["flagged"]
    kinds = ", ".join(f"{MISUSE_VI.get(k, k)} {v}" for k, v in r["flagged_by_kind"].items() if v)
    cells.append(
        _td("flagged", flagged, fmt_int(flagged) + (f'<br><span class="muted">{_e(kinds)}</span>' if kinds else ""))
    )
    return "".join(cells)


def _tally_head(first: str) -> str:
    labels = "".join(f"<th>{_e(LABEL_VI[label])}</th>" for label in LABELS)
    return (
        f'<thead><tr><th class="t">{first}</th><th>Phiếu hợp lệ</th>{labels}<th>Tỷ lệ hài lòng</th>'
        "<th>Tháng trước</th><th>Thay đổi</th><th>Bấm không hợp lệ (đã loại)</th></tr></thead>"
    )


def _counters(report: dict[str, Any], multi: bool) -> str:
    rows = report["counters"]
    out = ['<section id="counters"><h2>1. Kết quả theo quầy</h2>']
    if not rows:
        return out[0] + '<p class="muted">Không có phiếu đánh giá nào trong tháng.</p></section>'
    names = [(f"{r['commune']}/" if multi else "") + r["counter"] for r in rows]
    out.append(_share_chart(rows, names, report["settings"]["threshold"], "counter-share", "Tỷ lệ hài lòng theo quầy"))
    out.append(_distribution_chart(rows, names, "counter-labels", "Phân bố phiếu theo mức độ hài lòng, theo quầy"))
    out.append('<table id="counters-table">' + _tally_head("Quầy") + "<tbody>")
    for r, shown in zip(rows, names, strict=True):
        out.append(
            f'<tr data-key="{_e(r["commune"])}/{_e(r["counter"])}"><td class="t">{_e(shown)}'
            f'<br><span class="muted">{_e(", ".join(r["devices"]))}</span></td>{_tally_cells(r)}</tr>'
        )
    t = report["totals"]
    out.append(
        f'<tr data-key="total"><td class="t"><b>Toàn xã</b></td>{_tally_cells(t)}</tr></tbody></table></section>'
    )
    return "".join(out)


def _officers(report: dict[str, Any]) -> str:
    rows = report["officers"]
    settings = report["settings"]
    out = ['<section id="officers"><h2>2. Kết quả theo cán bộ</h2>']
    if not rows:
        return out[0] + '<p class="muted">Không có phiếu đánh giá nào trong tháng.</p></section>'
    names = [r["officer"] or "(chưa rõ cán bộ)" for r in rows]
    out.append(_share_chart(rows, names, settings["threshold"], "officer-share", "Tỷ lệ hài lòng theo cán bộ"))
    below = [r for r in rows if r["below_threshold"]]
    if below:
        listed = ", ".join(f"{_e(r['officer'])} ({fmt_pct(r['share_satisfied'])})" for r in below)
        out.append(f'<p id="below-threshold" class="bad">Cán bộ dưới ngưỡng {settings["threshold"]:g}%: {listed}</p>')
    else:
        out.append(
            f'<p id="below-threshold" class="ok">Không có cán bộ nào dưới ngưỡng {settings["threshold"]:g}%.</p>'
        )
    out.append(f'<p class="muted">Chỉ xét ngưỡng với cán bộ có từ {settings["min_votes"]} phiếu hợp lệ trở lên.</p>')
    out.append(
        '<table id="officers-table">' + _tally_head("Cán bộ").replace("</tr></thead>", "<th>Quầy</th></tr></thead>")
    )
    out.append("<tbody>")
    for r, shown in zip(rows, names, strict=True):
        key = f"{r['commune']}/{r['officer'] or ''}"
        out.append(
            f'<tr data-key="{_e(key)}"><td class="t">{_e(shown)}</td>{_tally_cells(r)}'
            + _td("counters", " ".join(r["counters"]), _e(", ".join(r["counters"])), "t")
            + "</tr>"
        )
    out.append("</tbody></table></section>")
    return "".join(out)


def _hours(report: dict[str, Any], multi: bool) -> str:
    out = ['<section id="hours"><h2>3. Giờ cao điểm</h2>']
    t = report["totals"]
    if not t["counted"]:
        return out[0] + '<p class="muted">Không có dữ liệu.</p></section>'
    out.append(_hours_chart(t["hours"], "hours", "Số phiếu hợp lệ theo giờ trong ngày, toàn xã"))
    out.append(
        '<table id="busiest-table"><thead><tr><th class="t">Quầy</th><th class="t">Giờ đông nhất</th></tr>'
        "</thead><tbody>"
    )
    for r in report["counters"]:
        shown = (f"{r['commune']}/" if multi else "") + r["counter"]
        hours = ", ".join(f"{h}h–{h + 1}h ({r['hours'][h]} phiếu)" for h in r["busiest_hours"])
        out.append(
            f'<tr data-key="{_e(r["commune"])}/{_e(r["counter"])}"><td class="t">{_e(shown)}</td>'
            f'<td class="t" data-col="busiest_hours" data-value="{_e(" ".join(str(h) for h in r["busiest_hours"]))}">'
            f"{_e(hours)}</td></tr>"
        )
    out.append("</tbody></table></section>")
    return "".join(out)


def _loudspeakers(report: dict[str, Any]) -> str:
    out = ['<section id="loudspeakers"><h2>4. Loa truyền thanh</h2>']
    devices, items = report["loudspeakers"], report["broadcasts"]
    if not devices:
        return out[0] + '<p class="muted">Không có lượt phát nào trong tháng.</p></section>'
    out.append(_loudspeaker_chart(devices, "loudspeakers", "Lượt phát xong và lượt lỗi theo cụm loa"))
    heads = "".join(f"<th>{_e(PLAY_VI[s])}</th>" for s in PLAY_ENDS)

    def cells(r: dict[str, Any]) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in r["failure_reasons"].items())
        return (
            "".join(_td(s, r[s], fmt_int(r[s]), "bad" if s == "failed" and r[s] else "") for s in PLAY_ENDS)
            + _td("played_s", r["played_s"], fmt_duration(r["played_s"]))
            + _td("failure_reasons", _pairs(r["failure_reasons"]), _e(reasons), "t")
        )

    out.append("<h3>Theo cụm loa</h3>")
    out.append(
        f'<table id="loudspeakers-table"><thead><tr><th class="t">Cụm loa</th>{heads}<th>Thời lượng phát</th>'
        '<th class="t">Nguyên nhân lỗi</th></tr></thead><tbody>'
    )
    for r in devices:
        out.append(
            f'<tr data-key="{_e(r["commune"])}/{_e(r["device"])}"><td class="t">{_e(r["device"])}</td>{cells(r)}</tr>'
        )
    out.append("</tbody></table><h3>Theo bản tin</h3>")
    out.append(
        f'<table id="broadcasts-table"><thead><tr><th class="t">Bản tin</th><th class="t">Mức ưu tiên</th>{heads}'
        '<th>Thời lượng phát</th><th class="t">Nguyên nhân lỗi</th></tr></thead><tbody>'
    )
    for r in items:
        prio = PRIORITY_VI.get(r["priority"] or "", r["priority"] or "–")
        out.append(
            f'<tr data-key="{_e(r["broadcast_id"])}"><td class="t"><code>{_e(r["broadcast_id"])}</code></td>'
            f'<td class="t" data-col="priority" data-value="{_e(r["priority"] or "")}">{_e(prio)}</td>{cells(r)}</tr>'
        )
    out.append("</tbody></table></section>")
    return "".join(out)


def _cameras(report: dict[str, Any], multi: bool) -> str:
    out = ['<section id="cameras"><h2>5. Camera tại quầy</h2>']
    rows = report["cameras"]
    if not rows:
        return out[0] + '<p class="muted">Không có sự cố camera hay lượt vắng mặt nào trong tháng.</p></section>'
    out.append(
        '<table id="cameras-table"><thead><tr><th class="t">Quầy</th><th>Sự cố camera</th><th class="t">Loại</th>'
        "<th>Thời gian sự cố</th><th>Số lần vắng mặt (giờ hành chính)</th><th>Thời gian vắng mặt</th>"
        "</tr></thead><tbody>"
    )
    for r in rows:
        shown = (f"{r['commune']}/" if multi else "") + r["counter"]
        kinds = ", ".join(f"{TAMPER_VI.get(k, k)} {v}" for k, v in r["tamper_by_kind"].items())
        out.append(
            f'<tr data-key="{_e(r["commune"])}/{_e(r["counter"])}"><td class="t">{_e(shown)}</td>'
            + _td(
                "tamper_incidents",
                r["tamper_incidents"],
                fmt_int(r["tamper_incidents"]),
                "bad" if r["tamper_incidents"] else "",
            )
            + _td("tamper_by_kind", _pairs(r["tamper_by_kind"]), _e(kinds), "t")
            + _td("tamper_s", r["tamper_s"], fmt_duration(r["tamper_s"]))
            + _td("absences", r["absences"], fmt_int(r["absences"]))
            + _td("absent_office_s", r["absent_office_s"], fmt_duration(r["absent_office_s"]))
            + "</tr>"
        )
    out.append(
        '</tbody></table><p class="muted">Giờ hành chính: thứ Hai đến thứ Sáu, '
        f"{_e(report['settings']['office_hours'])}.</p></section>"
    )
    return "".join(out)


def _break_vi(b: dict[str, Any]) -> str:
    kind, n, to_n, seq = b["kind"], b["n"], b["to_n"], b["seq"]
    if kind == "missing":
        if to_n:
            return f"Không nhận được các sự kiện số {n}–{to_n} ({to_n - n + 1} sự kiện)"
        return f"Không nhận được sự kiện số {n}"
    if kind == "altered":
        return f"Sự kiện số {n} (seq {seq}) không khớp mã băm đã ghi trong chuỗi: dữ liệu đã bị thay đổi"
    if kind == "reordered":
        return f"Sự kiện số {n} (seq {seq}) được lưu trước sự kiện đứng trước nó trong chuỗi"
    if kind == "duplicate":
        return f"Có hơn một sự kiện mang số {n}"
    if kind == "malformed":
        return f"Sự kiện seq {seq} có trường chuỗi không hợp lệ"
    return f"Sự kiện seq {seq} không có trường chuỗi"


def _chains(report: dict[str, Any]) -> str:
    out = ['<section id="chains"><h2>6. Tính toàn vẹn dữ liệu (chuỗi băm của từng thiết bị)</h2>']
    chains = report["chains"]
    if not chains:
        return out[0] + '<p class="muted">Chưa có sự kiện nào được xâu chuỗi.</p></section>'
    out.append(
        '<p class="muted">Mỗi phiếu đánh giá và mỗi lượt phát loa mang số thứ tự và mã băm SHA-256 '
        "của sự kiện trước nó, "
        "nên một phiếu bị xóa trên thiết bị, bị mất trên đường truyền hay bị sửa đều bị phát hiện.</p>"
    )
    out.append(
        '<table id="chains-table"><thead><tr><th class="t">Thiết bị</th><th class="t">Epoch</th>'
        '<th class="t">Trạng thái</th>'
        "<th>Sự kiện nhận được</th><th>Độ dài chuỗi</th><th>Đã xác minh</th><th>Số lỗi</th></tr></thead><tbody>"
    )
    for s in chains:
        state = '<span class="ok">Toàn vẹn</span>' if s["whole"] else '<span class="bad">Có lỗi</span>'
        out.append(
            f'<tr data-key="{_e(s["commune"])}/{_e(s["device"])}/{_e(s["epoch"])}"><td class="t">{_e(s["device"])}</td>'
            f'<td class="t"><code>{_e(s["epoch"])}</code></td>'
            f'<td class="t" data-col="whole" data-value="{int(s["whole"])}">{state}</td>'
            + _td("events", s["events"], fmt_int(s["events"]))
            + _td("length", s["length"], fmt_int(s["length"]))
            + _td("verified", s["verified"], fmt_int(s["verified"]))
            + _td("breaks", len(s["breaks"]), fmt_int(len(s["breaks"])), "bad" if s["breaks"] else "")
            + "</tr>"
        )
    out.append("</tbody></table>")
    breaks = [(s, b) for s in chains for b in s["breaks"]]
    if breaks:
        out.append(
            '<h3>Các lỗi phát hiện</h3><table id="breaks-table"><thead><tr><th class="t">Thiết bị</th>'
            '<th class="t">Loại lỗi</th><th class="t">Chi tiết</th></tr></thead><tbody>'
        )
        for s, b in breaks:
            out.append(
                f'<tr data-key="{_e(s["commune"])}/{_e(s["device"])}/{_e(s["epoch"])}" data-kind="{_e(b["kind"])}"'
                f' data-n="{_e(_value(b["n"]))}"><td class="t">{_e(s["device"])}</td>'
                f'<td class="t bad">{_e(BREAK_VI.get(b["kind"], b["kind"]))}</td>'
                f'<td class="t">{_e(_break_vi(b))}'
                + (f"<br><code>{_e(b['id'])}</code>" if b["id"] else "")
                + "</td></tr>"
            )
        out.append("</tbody></table>")
    out.append("</section>")
    return "".join(out)


def render(report: dict[str, Any]) -> str:
    """The report (as :func:`edge.server.report.build` makes it) as one HTML page."""
    t = report["totals"]
    communes = {c["commune"] for c in report["counters"]} | {o["commune"] for o in report["officers"]}
    multi = report["commune"] is None and len(communes) > 1
    where = (
        f"xã {report['commune']}"
        if report["commune"]
        else ("các xã " + ", ".join(sorted(communes)) if communes else "")
    )
    chains_ok = report["chains_whole"]
    broken = sum(1 for c in report["chains"] if not c["whole"])
    title = f"Báo cáo mức độ hài lòng {_month_vi(report['month'])}"
    summary = [
        ("Phiếu hợp lệ", fmt_int(t["counted"]), "total-counted"),
        ("Tỷ lệ hài lòng", fmt_pct(t["share_satisfied"]), "total-share"),
        ("So với tháng trước", fmt_pp(t["change_pp"]), "total-change"),
        ("Bấm không hợp lệ (đã loại)", fmt_int(t["flagged"]), "total-flagged"),
        (
            "Dữ liệu",
            '<span class="ok">toàn vẹn</span>' if chains_ok else f'<span class="bad">{broken} chuỗi có lỗi</span>',
            "total-chains",
        ),
    ]
    boxes = "".join(f'<div class="figure-box" id="{i}">{_e(k)}<b>{v}</b></div>' for k, v, i in summary)
    notes = "".join(f"<li>{_e(n)}</li>" for n in report["notes"])
    misuse = ", ".join(MISUSE_VI[k] for k in MISUSE_KINDS)
    return (
        '<!DOCTYPE html>\n<html lang="vi"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1>"
        f'<p class="meta">{_e(where)} · từ {_e(report["period"]["from"][:10])} đến hết '
        f"{_e(_last_day(report))} (giờ Việt Nam, UTC{_e(report['utc_offset'])}) · lập lúc "
        f"{_e(report['generated_at'][:16].replace('T', ' '))}</p>"
        f'</header><div class="figures" id="summary">{boxes}</div>'
        + _counters(report, multi)
        + _officers(report)
        + _hours(report, multi)
        + _loudspeakers(report)
        + _cameras(report, multi)
        + _chains(report)
        + "<footer><p>Cách tính: tỷ lệ hài lòng = (số phiếu “Hài lòng” + “Rất hài lòng”) / số phiếu hợp lệ, "
        "như chỉ số SIPAS. "
        f"Lượt bấm bị đánh dấu không hợp lệ ({_e(misuse)}) không được tính vào tỷ lệ nhưng được thống kê riêng. "
        "Thời gian theo giờ ghi trên từng sự kiện, đổi sang giờ Việt Nam.</p>"
        + (f"<ul>{notes}</ul>" if notes else "")
        + "</footer></body></html>\n"
    )


def _last_day(report: dict[str, Any]) -> str:
    from datetime import date, timedelta

    end = date.fromisoformat(report["period"]["to"][:10])
    return (end - timedelta(days=1)).isoformat()
