"""The Vietnamese normaliser: what the loudspeaker says for what a commune office writes.

The golden file holds real-looking announcements (storm warnings, vaccination rounds, meetings,
fees, hotlines); the other tests pin one rule each, including the places where a naive rule would
read the wrong thing (CA nhạc, P. at the end of a sentence, 8 hộ, 500g).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.speech import normalise_vi, read_number
from edge.speech.numbers import NumberStyle, read_decimal, roman_value, to_roman

GOLDEN = Path(__file__).parent / "golden" / "speech_announcements.txt"


@dataclass
class Case:
    text: str
    said: str
    style: NumberStyle


def golden_cases() -> list[Case]:
    cases: list[Case] = []
    lines: list[str] = []
    style: NumberStyle = "north"
    for raw in GOLDEN.read_text(encoding="utf-8").splitlines():
        if raw.startswith("#") or not raw.strip():
            continue
        if raw == "@south":
            style = "south"
        elif raw.startswith("< "):
            lines.append(raw[2:])
        elif raw.startswith("> "):
            cases.append(Case("\n".join(lines), raw[2:], style))
            lines, style = [], "north"
        else:
            raise AssertionError(f"unexpected golden line: {raw!r}")
    return cases


CASES = golden_cases()


def test_the_golden_file_has_twenty_and_more_announcements() -> None:
    assert len(CASES) >= 25
    assert any("\n" in c.text for c in CASES)  # a notice laid out in lines
    assert any(c.style == "south" for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.text[:48] for c in CASES])
def test_golden_announcement(case: Case) -> None:
    said = normalise_vi(case.text, style=case.style)
    assert said == case.said
    assert not re.search(r"\d", said), "every digit is said as a word"
    assert normalise_vi(said, style=case.style) == said, "normalising twice changes nothing"


def test_the_interface_example() -> None:
    assert normalise_vi("UBND phường họp lúc 8h30 ngày 2/9/2026") == (
        "ủy ban nhân dân phường họp lúc tám giờ ba mươi ngày hai tháng chín năm hai nghìn không trăm hai mươi sáu"
    )


def test_decomposed_unicode_from_some_keyboards_is_read_the_same() -> None:
    text = "Họp lúc 8h30 ngày 25/1 tại hội trường KP 3"
    assert normalise_vi(unicodedata.normalize("NFD", text)) == normalise_vi(text)


VIETNAMESE_TEXT = st.text(
    alphabet=st.sampled_from(list("0123456789 .,:;/-+%()'\"&hgpđĐ°CkmKPQTXUBNDaăâeêoôơuưyAĂÂÁÀẢÃẠạờởỡợ\n\t")),
    max_size=80,
)


@given(VIETNAMESE_TEXT)
def test_any_text_becomes_one_line_of_words(text: str) -> None:
    said = normalise_vi(text)
    assert "\n" not in said and said == said.strip()
    assert not re.search(r"[0-9]", said), said  # no digit is left for the voice to guess at
    assert "  " not in said


# -- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "không"),
        (5, "năm"),
        (10, "mười"),
        (11, "mười một"),
        (14, "mười bốn"),
        (15, "mười lăm"),
        (20, "hai mươi"),
        (21, "hai mươi mốt"),
        (24, "hai mươi tư"),
        (25, "hai mươi lăm"),
        (101, "một trăm linh một"),
        (104, "một trăm linh bốn"),
        (105, "một trăm linh năm"),
        (110, "một trăm mười"),
        (115, "một trăm mười lăm"),
        (121, "một trăm hai mươi mốt"),
        (1000, "một nghìn"),
        (1005, "một nghìn không trăm linh năm"),
        (1050, "một nghìn không trăm năm mươi"),
        (2026, "hai nghìn không trăm hai mươi sáu"),
        (10_005, "mười nghìn không trăm linh năm"),
        (1_500_000, "một triệu năm trăm nghìn"),
        (1_000_050, "một triệu không trăm năm mươi"),
        (1_005_000, "một triệu không trăm linh năm nghìn"),
        (2_500_000_000, "hai tỷ năm trăm triệu"),
        (1_000_000_000_000, "một nghìn tỷ"),
    ],
)
def test_vietnamese_number_words(n: int, words: str) -> None:
    assert read_number(n) == words


def test_southern_number_words() -> None:
    assert read_number(105, "south") == "một trăm lẻ năm"
    assert read_number(2006, "south") == "hai ngàn không trăm lẻ sáu"
    assert normalise_vi("105 hộ", style="south") == "một trăm lẻ năm hộ"


@pytest.mark.parametrize(
    ("whole", "fraction", "words"),
    [
        ("2", "5", "hai phẩy năm"),
        ("0", "5", "không phẩy năm"),
        ("3", "05", "ba phẩy không năm"),
        ("2", "25", "hai phẩy hai mươi lăm"),
        ("1", "125", "một phẩy một trăm hai mươi lăm"),
        ("3", "14159", "ba phẩy một bốn một năm chín"),
    ],
)
def test_decimals(whole: str, fraction: str, words: str) -> None:
    assert read_decimal(whole, fraction) == words


_DIGITS = {"không": 0, "một": 1, "mốt": 1, "hai": 2, "ba": 3, "bốn": 4, "tư": 4, "năm": 5, "lăm": 5}
_DIGITS |= {"sáu": 6, "bảy": 7, "tám": 8, "chín": 9}
_GROUPS = {"nghìn": 1000, "ngàn": 1000, "triệu": 1_000_000}


def parse_vietnamese(words: str) -> int:
    """An independent reading of number words back into a number, to check read_number against."""
    big = total = triple = digit = 0
    for word in words.split():
        if word in _DIGITS:
            digit = _DIGITS[word]
        elif word == "mười":
            triple += 10
        elif word == "mươi":
            triple, digit = triple + digit * 10, 0
        elif word == "trăm":
            triple, digit = triple + digit * 100, 0
        elif word in ("linh", "lẻ"):
            continue
        elif word in _GROUPS:
            total, triple, digit = total + (triple + digit) * _GROUPS[word], 0, 0
        elif word == "tỷ":
            big, total, triple, digit = (big + total + triple + digit) * 10**9, 0, 0, 0
        else:
            raise AssertionError(f"not a number word: {word!r} in {words!r}")
    return big + total + triple + digit


@given(st.integers(min_value=0, max_value=10**15 - 1), st.sampled_from(["north", "south"]))
def test_every_number_reads_back_to_itself_and_follows_the_spoken_rules(n: int, style: NumberStyle) -> None:
    words = read_number(n, style)
    assert parse_vietnamese(words) == n
    assert not re.search(r"mươi một|mươi năm|mười năm|mươi bốn", words), words  # mốt, lăm, tư after tens
    assert not re.search(r"(linh|lẻ) (mốt|lăm|tư)|^(mốt|lăm|tư)|(?<!mươi )mốt|(?<!mươi )(?<!mười )lăm", words), words


@given(st.integers(min_value=1, max_value=100))
def test_roman_numerals_round_trip(n: int) -> None:
    assert roman_value(to_roman(n)) == n


def test_only_canonical_roman_numerals_are_numbers() -> None:
    assert roman_value("IIII") is None and roman_value("VX") is None and roman_value("ABC") is None


# -- one rule each -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("8h30", "tám giờ ba mươi"),
        ("8h", "tám giờ"),
        ("8h05", "tám giờ năm phút"),
        ("8h30p", "tám giờ ba mươi phút"),
        ("8h30 phút", "tám giờ ba mươi phút"),
        ("7h30'", "bảy giờ ba mươi phút"),
        ("14:00", "mười bốn giờ"),
        ("14:05 phút", "mười bốn giờ năm phút"),
        ("20:30:15", "hai mươi giờ ba mươi phút mười lăm giây"),
        ("7 giờ 15", "bảy giờ mười lăm"),
        ("lúc 7g30", "lúc bảy giờ ba mươi"),
        ("lúc 9g", "lúc chín giờ"),
        ("500g muối", "năm trăm gam muối"),
        ("8 hộ gia đình", "tám hộ gia đình"),
        ("trong 48h tới", "trong bốn mươi tám giờ tới"),
        ("từ 7h30-11h30", "từ bảy giờ ba mươi đến mười một giờ ba mươi"),
        ("tỷ số 25:70", "tỷ số hai mươi lăm: bảy mươi"),  # no such time: read as two numbers
    ],
)
def test_times(text: str, said: str) -> None:
    assert normalise_vi(text) == said


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("họp 25/1", "họp ngày hai mươi lăm tháng một"),
        ("họp ngày 25/1", "họp ngày hai mươi lăm tháng một"),
        ("Ngày 25/1", "Ngày hai mươi lăm tháng một"),
        ("mùng 1/1", "mùng một tháng một"),
        ("ngày 2/9/2026", "ngày hai tháng chín năm hai nghìn không trăm hai mươi sáu"),
        ("hạn 02.09.2026", "hạn ngày hai tháng chín năm hai nghìn không trăm hai mươi sáu"),
        ("từ 25/1-30/1", "từ ngày hai mươi lăm tháng một đến ngày ba mươi tháng một"),
        ("tháng 1/2026", "tháng một năm hai nghìn không trăm hai mươi sáu"),
        ("quý 1/2026", "quý một năm hai nghìn không trăm hai mươi sáu"),
        ("đường 3/2", "đường ba tháng hai"),
        ("trực 24/24h", "trực hai mươi tư trên hai mươi tư giờ"),
        ("nhà 123/4", "nhà một trăm hai mươi ba trên bốn"),
        ("năm 2025-2026", "năm hai nghìn không trăm hai mươi lăm đến hai nghìn không trăm hai mươi sáu"),
    ],
)
def test_dates(text: str, said: str) -> None:
    assert normalise_vi(text) == said


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("0912 345 678", "không chín một hai, ba bốn năm, sáu bảy tám"),
        ("0912.345.678", "không chín một hai, ba bốn năm, sáu bảy tám"),
        ("0912-345-678", "không chín một hai, ba bốn năm, sáu bảy tám"),
        ("0912345678", "không chín một hai, ba bốn năm, sáu bảy tám"),
        ("024 3822 1234", "không hai bốn, ba tám hai hai, một hai ba bốn"),
        ("(024) 3822 1234", "không hai bốn, ba tám hai hai, một hai ba bốn"),
        ("02438221234", "không hai bốn, ba tám hai hai, một hai ba bốn"),
        ("+84 912 345 678", "cộng tám tư, chín một hai, ba bốn năm, sáu bảy tám"),
        ("gọi 0912 345 678 24 giờ", "gọi không chín một hai, ba bốn năm, sáu bảy tám hai mươi tư giờ"),
        ("ĐT: 3822 1234", "điện thoại: ba tám hai hai, một hai ba bốn"),
        ("SĐT 0912345678", "số điện thoại không chín một hai, ba bốn năm, sáu bảy tám"),
        ("gọi 113, 114 hoặc 115", "gọi một một ba, một một bốn hoặc một một năm"),
        ("gọi 2 lần", "gọi hai lần"),
        ("tổng đài 1900 1234", "tổng đài một chín không không, một hai ba bốn"),
        ("có 113 hộ", "có một trăm mười ba hộ"),
        ("số CCCD 079123456789", "số căn cước công dân không bảy chín một hai ba bốn năm sáu bảy tám chín"),
    ],
)
def test_phone_numbers_are_read_digit_by_digit(text: str, said: str) -> None:
    assert normalise_vi(text) == said


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("1.500.000 đồng", "một triệu năm trăm nghìn đồng"),
        ("1.500.000đ", "một triệu năm trăm nghìn đồng"),
        ("200.000 VNĐ", "hai trăm nghìn đồng"),
        ("2,5 triệu đồng", "hai phẩy năm triệu đồng"),
        ("1.234,5 kg", "một nghìn hai trăm ba mươi tư phẩy năm ki lô gam"),
        ("30.000đ/hộ/tháng", "ba mươi nghìn đồng mỗi hộ mỗi tháng"),
        ("25.000 đ/kg", "hai mươi lăm nghìn đồng mỗi ki lô gam"),
        ("mưa 150mm", "mưa một trăm năm mươi mi li mét"),
        ("mưa 100-200 mm", "mưa một trăm đến hai trăm mi li mét"),
        ("cách 250 km", "cách hai trăm năm mươi ki lô mét"),
        ("gió 60 km/h", "gió sáu mươi ki lô mét trên giờ"),
        ("nhiệt độ -5°C", "nhiệt độ âm năm độ xê"),
        ("nhiệt độ 30oC", "nhiệt độ ba mươi độ xê"),
        ("giảm 30%", "giảm ba mươi phần trăm"),
        ("2,05 ha", "hai phẩy không năm héc ta"),
        ("120 m2", "một trăm hai mươi mét vuông"),
        ("các tổ 1,2,3", "các tổ một, hai, ba"),
        ("phiên bản 2.5", "phiên bản hai chấm năm"),
        ("QL1A", "quốc lộ một A"),
    ],
)
def test_amounts_and_units(text: str, said: str) -> None:
    assert normalise_vi(text) == said


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("UBND xã", "ủy ban nhân dân xã"),
        ("HĐND, MTTQ, BCH", "hội đồng nhân dân, mặt trận tổ quốc, ban chỉ huy"),
        ("PCCC và PCTT", "phòng cháy chữa cháy và phòng chống thiên tai"),
        ("TP. Thủ Đức", "thành phố Thủ Đức"),
        ("TP.HCM", "thành phố Hồ Chí Minh"),
        ("TP Huế", "thành phố Huế"),
        ("P. An Lạc", "phường An Lạc"),
        ("P.7, Q.3", "phường bảy, quận ba"),
        ("TX. Dĩ An", "thị xã Dĩ An"),
        ("TT. Phú Mỹ", "thị trấn Phú Mỹ"),
        ("TT Văn hóa", "trung tâm Văn hóa"),
        ("KP 3, KP3, KP.3", "khu phố ba, khu phố ba, khu phố ba"),
        ("CA phường và CA xã", "công an phường và công an xã"),
        ("CA TP. Thủ Đức", "công an thành phố Thủ Đức"),
        ("CHƯƠNG TRÌNH CA NHẠC", "CHƯƠNG TRÌNH CA NHẠC"),
        ("ấp ở khu P.", "ấp ở khu P."),
        ("Đ/c Chủ tịch", "đồng chí Chủ tịch"),
        ("thứ 2 đến thứ 7 và CN", "thứ hai đến thứ bảy và chủ nhật"),
        ("thứ 4", "thứ tư"),
        ("lần thứ 1", "lần thứ nhất"),
        ("quý IV", "quý bốn"),
        ("Đại hội lần thứ XIV", "Đại hội lần thứ mười bốn"),
        ("COVID-19", "cô vít mười chín"),
        ("số 123/QĐ-UBND", "số một trăm hai mươi ba quyết định ủy ban nhân dân"),
        ("gạo, muối, v.v.", "gạo, muối, vân vân"),
    ],
)
def test_abbreviations(text: str, said: str) -> None:
    assert normalise_vi(text) == said


def test_layout_becomes_sentences() -> None:
    notice = "THÔNG BÁO\n- Thời gian: 8h ngày 5/3\n- Địa điểm: NVH KP 2\n\n* Mang theo CCCD"
    assert normalise_vi(notice) == (
        "THÔNG BÁO. Thời gian: tám giờ ngày năm tháng ba. Địa điểm: nhà văn hóa khu phố hai. "
        "Mang theo căn cước công dân"
    )


def test_symbols_a_voice_would_read_aloud_are_dropped_or_said() -> None:
    assert normalise_vi('Lưu ý: "mang theo" (bản chính) & bản sao *') == "Lưu ý: mang theo, bản chính, và bản sao"
