"""Announcement text as Vietnamese words, so a speech engine reads what a listener expects to hear.

A text-to-speech voice reads ``8h30`` as letters and digits, ``1.500.000`` as three numbers, and
``UBND`` as an English word. Loudspeaker announcements are full of these: meeting times, dates of
vaccination rounds, fees, rainfall in mm, hotline numbers, the names of offices. :func:`normalise_vi`
rewrites them into the words an announcer would say; everything else is left as written.

The passes run in a fixed order, each on the output of the one before, and each turns digits into
words, so a later pass never reads the same digits twice:

1. lines and bullets become sentences;
2. phone numbers, digit by digit in their written groups (before anything else reads them as amounts);
3. document numbers (``123/QĐ-UBND``);
4. abbreviations (``UBND``, ``TP.``, ``KP``, ``P.`` before a name or number ...);
5. dates with a year (``2/9/2026``, ``02.09.2026``), then ranges (``7h30-11h30``, ``25/1-30/1`` → "đến"),
   then day/month and month/year dates;
6. clock times (``8h30``, ``14:00``);
7. ordinals after "thứ" and Roman numerals after "quý", "khóa", "đợt" ...;
8. every other number, with its unit (``mm``, ``km/h``, ``°C``, ``%``, ``đ``);
9. leftover symbols; spacing and punctuation tidied.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from edge.speech.numbers import NumberStyle, ordinal, read_decimal, read_digits, read_number, roman_value

Pass = Callable[[str, NumberStyle], str]

# -- 1. lines ----------------------------------------------------------------------------------

_SPACES = re.compile(r"[\u00a0\u2000-\u200b\u202f\u205f\u3000\t\f\v]")
_DASHES = re.compile(r"[\u2010-\u2015\u2212]")
_BULLET = re.compile(r"^\s*(?:[-•*+·▪►]|\u2022)\s+")


def _lines(text: str) -> str:
    """Each line a sentence: a listener cannot see the layout, only hear the pauses."""
    lines = [line for line in (_BULLET.sub("", raw).strip() for raw in text.splitlines()) if line]
    if not lines:
        return ""
    # The last line keeps its own ending: a one-line text comes back as it was written.
    ended = [line if line[-1] in ".!?:;,…" else line + "." for line in lines[:-1]]
    return " ".join([*ended, lines[-1]])


# -- 2. phone numbers --------------------------------------------------------------------------

_PHONE_WORDS = (
    r"(?:số\s+điện\s+thoại|điện\s+thoại|SĐT|sđt|ĐT|đt|hotline|Hotline|HOTLINE|đường\s+dây\s+nóng|"
    r"Đường\s+dây\s+nóng|tổng\s+đài|Tổng\s+đài|gọi\s+số|Gọi\s+số|gọi|Gọi|Zalo|zalo|fax|Fax)"
)
_GROUPED = r"(?:\+84|\(0\d{1,3}\)|\d)(?:[ .\-]?\d)+"
_LIST_JOINER = r"(?:\s*[,/]\s*|\s+hoặc\s+|\s+và\s+)"
_PHONE_CONTEXT = re.compile(
    rf"(?<!\w)({_PHONE_WORDS}(?:\s+(?:ngay|số|tới|đến|cho))*)(\s*:?\s*)"
    rf"({_GROUPED}(?:{_LIST_JOINER}{_GROUPED})*)(?![\w]|[.,]\d)"
)
_PHONE_BARE = re.compile(r"(?<![\w.,/:+])((?:\+84|\(0\d{1,3}\)|0)(?:[ .\-]?\d){8,11})(?![\w]|[.,]\d)")
_SERVICE = re.compile(r"(?<![\w.,/:])(1[89]00(?:[ .]?\d){4,6})(?![\w]|[.,]\d)")
_PHONE_SPLIT = re.compile(_LIST_JOINER)
_PHONE_GLUE = {"SĐT": "số điện thoại", "sđt": "số điện thoại", "ĐT": "điện thoại", "đt": "điện thoại"}


def _say_phone(number: str) -> str:
    """Digit by digit, with a pause between the groups as written (``024 3822 1234``)."""
    lead = ""
    if number.startswith("+84"):
        lead, number = "cộng tám tư, ", number[3:]
    groups = [g for g in re.split(r"[ .\-()]+", number) if g]
    if len(groups) == 1 and len(groups[0]) >= 10:
        # Written without spaces: read in the groups people use (0912 345 678, 024 3822 1234).
        d = groups[0]
        groups = [d[:4], d[4:7], d[7:]] if len(d) == 10 else [d[:3], d[3:7], d[7:]]
    return lead + ", ".join(read_digits(g) for g in groups)


def _digit_count(text: str) -> int:
    return sum(c.isdigit() for c in text)


_GROUP = re.compile(r"[ .\-]?[\d()]+|\+84")


def _phone_prefix(candidate: str) -> tuple[str | None, str]:
    """The longest run of whole written groups holding a phone number's 10 or 11 digits, and the rest.

    ``0912 345 678 24 hộ`` is the number 0912 345 678 followed by 24, not a 12-digit number.
    """
    best: int | None = None
    count = 0
    for group in _GROUP.finditer(candidate):
        count += _digit_count(group.group(0)) - (2 if group.group(0) == "+84" else 0)
        # +84 drops the leading 0: nine or ten digits follow it.
        if (9 <= count <= 10) if candidate.startswith("+84") else (10 <= count <= 11):
            best = group.end()
        elif best is not None or count > 11:
            break
    if best is None:
        return None, candidate
    return candidate[:best], candidate[best:]


def _phones(text: str, style: NumberStyle) -> str:
    def in_context(m: re.Match[str]) -> str:
        word = _PHONE_GLUE.get(m.group(1), m.group(1))
        numbers = _PHONE_SPLIT.split(m.group(3))
        joiners = _PHONE_SPLIT.findall(m.group(3))
        if any(_digit_count(n) < 3 for n in numbers):
            return m.group(0)  # "gọi 2 lần": a count, not a number to dial
        rest = ""
        if len(numbers) == 1 and _digit_count(numbers[0]) > 11:
            first, rest = _phone_prefix(numbers[0])
            if first is None:
                return m.group(0)
            numbers = [first]
        said = _say_phone(numbers[0])
        for joiner, number in zip(joiners, numbers[1:], strict=True):
            said += (", " if joiner.strip() in (",", "/") else f" {joiner.strip()} ") + _say_phone(number)
        return f"{word}{m.group(2)}{said}{rest}"

    def bare(m: re.Match[str]) -> str:
        number, rest = _phone_prefix(m.group(1))
        return m.group(0) if number is None else _say_phone(number) + rest

    text = _PHONE_CONTEXT.sub(in_context, text)
    text = _PHONE_BARE.sub(bare, text)
    return _SERVICE.sub(lambda m: _say_phone(m.group(1)), text)


# -- 3. document numbers -----------------------------------------------------------------------

#: The parts of an official document's number (``123/QĐ-UBND``, ``15/2026/NĐ-CP``, ``39/2020/TT-BTTTT``).
_DOC_CODES = {
    "QĐ": "quyết định",
    "NĐ": "nghị định",
    "NQ": "nghị quyết",
    "TT": "thông tư",
    "TB": "thông báo",
    "KH": "kế hoạch",
    "CT": "chỉ thị",
    "CV": "công văn",
    "BC": "báo cáo",
    "HD": "hướng dẫn",
    "CP": "chính phủ",
    "TTg": "thủ tướng",
    "QH": "quốc hội",
    "VP": "văn phòng",
    "UBND": "ủy ban nhân dân",
    "HĐND": "hội đồng nhân dân",
    "BCĐ": "ban chỉ đạo",
    "BCH": "ban chỉ huy",
    "BTTTT": "bộ thông tin và truyền thông",
    "BYT": "bộ y tế",
    "BCA": "bộ công an",
}
_DOC_NUMBER = re.compile(r"(?<![\w.,/])(\d+)((?:/\d{4})?)/((?:[A-ZĐ][A-Za-zĐđ]*)(?:-[A-ZĐ][A-Za-zĐđ]*)*)(?!\w)")


def _documents(text: str, style: NumberStyle) -> str:
    def say(m: re.Match[str]) -> str:
        parts = [read_number(int(m.group(1)), style)]
        if m.group(2):
            parts.append("năm " + read_number(int(m.group(2)[1:]), style))
        parts += [_DOC_CODES.get(code, code) for code in m.group(3).split("-")]
        return " ".join(parts)

    return _DOC_NUMBER.sub(say, text)


# -- 4. abbreviations --------------------------------------------------------------------------

#: Whole upper-case words, replaced wherever they stand.
ABBREVIATIONS = {
    "UBND": "ủy ban nhân dân",
    "HĐND": "hội đồng nhân dân",
    "UBMTTQVN": "ủy ban mặt trận tổ quốc Việt Nam",
    "UBMTTQ": "ủy ban mặt trận tổ quốc",
    "MTTQVN": "mặt trận tổ quốc Việt Nam",
    "MTTQ": "mặt trận tổ quốc",
    "UBKT": "ủy ban kiểm tra",
    "BTV": "ban thường vụ",
    "BCHQS": "ban chỉ huy quân sự",
    "BCH": "ban chỉ huy",
    "BCĐ": "ban chỉ đạo",
    "BQL": "ban quản lý",
    "BĐH": "ban điều hành",
    "QS": "quân sự",
    "DQTV": "dân quân tự vệ",
    "CAND": "công an nhân dân",
    "CSGT": "cảnh sát giao thông",
    "PCCC&CNCH": "phòng cháy chữa cháy và cứu nạn cứu hộ",
    "PCCC": "phòng cháy chữa cháy",
    "CNCH": "cứu nạn cứu hộ",
    "PCTT&TKCN": "phòng chống thiên tai và tìm kiếm cứu nạn",
    "PCTT": "phòng chống thiên tai",
    "TKCN": "tìm kiếm cứu nạn",
    "TTYT": "trung tâm y tế",
    "TYT": "trạm y tế",
    "BV": "bệnh viện",
    "BHYT": "bảo hiểm y tế",
    "BHXH": "bảo hiểm xã hội",
    "CCCD": "căn cước công dân",
    "CMND": "chứng minh nhân dân",
    "THCS": "trung học cơ sở",
    "THPT": "trung học phổ thông",
    "TTHC": "thủ tục hành chính",
    "ATGT": "an toàn giao thông",
    "ANTT": "an ninh trật tự",
    "VSATTP": "vệ sinh an toàn thực phẩm",
    "ATTP": "an toàn thực phẩm",
    "KT-XH": "kinh tế xã hội",
    "KTXH": "kinh tế xã hội",
    "TN&MT": "tài nguyên và môi trường",
    "TNMT": "tài nguyên môi trường",
    "NN&PTNT": "nông nghiệp và phát triển nông thôn",
    "GD&ĐT": "giáo dục và đào tạo",
    "LĐTB&XH": "lao động thương binh và xã hội",
    "QĐ": "quyết định",
    "NĐ-CP": "nghị định chính phủ",
    "SXH": "sốt xuất huyết",
    "TCM": "tay chân miệng",
    "HTX": "hợp tác xã",
    "NVH": "nhà văn hóa",
    "HLHPN": "hội liên hiệp phụ nữ",
    "HCCB": "hội cựu chiến binh",
    "CCB": "cựu chiến binh",
    "NCT": "người cao tuổi",
    "ĐTN": "đoàn thanh niên",
    "TNCS": "thanh niên cộng sản",
    "ĐCSVN": "Đảng Cộng sản Việt Nam",
    "CHXHCN": "cộng hòa xã hội chủ nghĩa",
    "XHCN": "xã hội chủ nghĩa",
    "TW": "trung ương",
    "VN": "Việt Nam",
    "HCM": "Hồ Chí Minh",
    "TPHCM": "thành phố Hồ Chí Minh",
    "COVID-19": "cô vít mười chín",
    "Covid-19": "cô vít mười chín",
    "covid-19": "cô vít mười chín",
    "COVID": "cô vít",
    "Covid": "cô vít",
}
_ABBREVIATION = re.compile(
    r"(?<![\w&-])(" + "|".join(re.escape(k) for k in sorted(ABBREVIATIONS, key=len, reverse=True)) + r")(?![\w&])"
)

#: Administrative units written with a dot before a name or a number: ``P. An Lạc``, ``Q.1``, ``TP.HCM``.
_PLACES_DOTTED = {
    "TP": "thành phố",
    "Tp": "thành phố",
    "tp": "thành phố",
    "TX": "thị xã",
    "Tx": "thị xã",
    "TT": "thị trấn",
    "P": "phường",
    "Q": "quận",
    "X": "xã",
    "H": "huyện",
}
_PLACE_DOTTED = re.compile(r"(?<![\w.])(TP|Tp|tp|TX|Tx|TT|P|Q|X|H)\.\s*(?=\w)")
#: Written without a dot and glued to what follows: ``KP3``, ``KP 3``, ``TDP 5``, ``QL1A``.
_PREFIXES = {"KP": "khu phố", "Kp": "khu phố", "TDP": "tổ dân phố", "KDC": "khu dân cư", "QL": "quốc lộ"}
_PREFIX = re.compile(r"(?<![\w.])(KP|Kp|TDP|KDC|QL)(?:\.\s*|(?=\d)|(?!\w))")
_TP_BARE = re.compile(r"(?<![\w.])(?:TP|Tp)(?=\s+[A-ZĐÀ-Ỹ]|HCM)")
#: "CA" is "công an" only before a place ("CA phường", "CA xã"): in capitals it is also "ca" (ca nhạc).
_POLICE = re.compile(
    r"(?<![\w.])CA(?=\s+(?:(?i:phường|xã|thị\s+trấn|quận|huyện|tỉnh|thành\s+phố)(?!\w)|TP\b|TX\.|TT\.|[PQXH]\.))"
)
#: "TT" without a dot before a name is "trung tâm" (TT Y tế, TT Văn hóa); with a dot it is "thị trấn".
_CENTRE = re.compile(r"(?<![\w.])TT(?=\s+[A-ZĐ])")
_COMRADE = re.compile(r"(?<!\w)[đĐ]/[cC](?!\w)")
_ETC = re.compile(r"(?<!\w)v\.v\.?")
_SUNDAY = re.compile(r"(?<![\w.])CN(?!\w)")


def _abbreviations(text: str, style: NumberStyle) -> str:
    def dotted(m: re.Match[str]) -> str:
        after = m.string[m.end() : m.end() + 1]
        if not (after.isdigit() or after.isupper()):
            return m.group(0)  # "P." ending a sentence, not a ward
        return _PLACES_DOTTED[m.group(1)] + " "

    def sunday(m: re.Match[str]) -> str:
        # "CN" is Sunday in a list of weekdays (thứ 7 và CN); elsewhere it is left alone.
        before = m.string[max(0, m.start() - 40) : m.start()].lower()
        return "chủ nhật" if "thứ" in before else m.group(0)

    text = _COMRADE.sub("đồng chí", text)
    text = _ETC.sub("vân vân", text)
    text = _POLICE.sub("công an", text)
    text = _TP_BARE.sub("thành phố ", text)
    text = _PLACE_DOTTED.sub(dotted, text)
    text = _PREFIX.sub(lambda m: _PREFIXES[m.group(1)] + " ", text)
    text = _CENTRE.sub("trung tâm", text)
    text = _ABBREVIATION.sub(lambda m: ABBREVIATIONS[m.group(1)], text)
    text = _SUNDAY.sub(sunday, text)
    return text.replace("&", " và ")


# -- 5. dates and ranges -----------------------------------------------------------------------

_NOT_BEFORE = r"(?<![\w.,/:])"
_NOT_AFTER = r"(?![\w/]|[.,]\d)"
_DATE_FULL = re.compile(rf"{_NOT_BEFORE}(\d{{1,2}})([/.\-])(\d{{1,2}})\2(\d{{4}}){_NOT_AFTER}")
_DATE_DAY_MONTH = re.compile(rf"{_NOT_BEFORE}(\d{{1,2}})/(\d{{1,2}}){_NOT_AFTER}")
_DATE_MONTH_YEAR = re.compile(rf"{_NOT_BEFORE}(\d{{1,2}})/(\d{{4}}){_NOT_AFTER}")
_RANGE = re.compile(r"(?<=\d)([hg'p]?)\s*-\s*(?=\d)")
#: Words after which a date needs no "ngày" of its own: the word is there, or the date is a name (đường 3/2).
_DAY_WORDS = re.compile(r"(?<!\w)(?i:ngày|mùng|mồng|đường|phố|công\s+viên|quảng\s+trường)\s*$")
#: "tháng 1/2026" and "quý 1/2026" (a quarter) need no "tháng" of their own.
_MONTH_WORD = re.compile(r"(?<!\w)(?i:tháng|quý)\s*$")


def _before(m: re.Match[str], chars: int = 40) -> str:
    """The text just before a match, where a cue word ("ngày", "tháng", "lúc") would stand."""
    return m.string[max(0, m.start() - chars) : m.start()]


def _valid_date(day: int, month: int) -> bool:
    return 1 <= day <= 31 and 1 <= month <= 12


def _full_dates(text: str, style: NumberStyle) -> str:
    def say(m: re.Match[str]) -> str:
        day, month, year = int(m.group(1)), int(m.group(3)), int(m.group(4))
        if not _valid_date(day, month):
            return m.group(0)
        lead = "" if _DAY_WORDS.search(_before(m)) else "ngày "
        return f"{lead}{read_number(day, style)} tháng {read_number(month, style)} năm {read_number(year, style)}"

    return _DATE_FULL.sub(say, text)


def _ranges(text: str, style: NumberStyle) -> str:
    """``7h30-11h30``, ``25/1-30/1``, ``100-200mm``, ``2025-2026``: the dash between two numbers is "đến"."""
    return _RANGE.sub(lambda m: f"{m.group(1)} đến ", text)


def _short_dates(text: str, style: NumberStyle) -> str:
    def day_month(m: re.Match[str]) -> str:
        day, month = int(m.group(1)), int(m.group(2))
        if not _valid_date(day, month):
            return m.group(0)  # a ratio or a house number (24/24, 123/4), read later with "trên"
        lead = "" if _DAY_WORDS.search(_before(m)) else "ngày "
        return f"{lead}{read_number(day, style)} tháng {read_number(month, style)}"

    def month_year(m: re.Match[str]) -> str:
        month, year = int(m.group(1)), int(m.group(2))
        if not 1 <= month <= 12:
            return m.group(0)
        lead = "" if _MONTH_WORD.search(_before(m)) else "tháng "
        return f"{lead}{read_number(month, style)} năm {read_number(year, style)}"

    text = _DATE_MONTH_YEAR.sub(month_year, text)
    return _DATE_DAY_MONTH.sub(day_month, text)


# -- 6. clock times ----------------------------------------------------------------------------

_TIME_H = re.compile(r"(?<![\w.,:/])(\d{1,2})(?:[hH](\d{2})?|(g)(\d{2})?)\s?(?:(phút)|p|')?(?![^\W\d_])")
#: "8g" alone is a time only after a word that announces one; otherwise it is grams.
_TIME_CUE = re.compile(r"(?<!\w)(?i:lúc|từ|đến|tới|khoảng|trước|sau|vào)\s*$")
_TIME_COLON = re.compile(r"(?<![\w.,:/])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d:]|[.,]\d)")
_MINUTES_WORD = re.compile(r"\s*phút(?!\w)")


def _say_time(hour: int, minute: int, style: NumberStyle, *, say_minutes: bool) -> str:
    out = f"{read_number(hour, style)} giờ"
    if minute == 0:
        return out
    # "tám giờ năm phút", not "tám giờ năm": a lone "năm" would be heard as "year" or lost.
    if say_minutes or minute < 10:
        return f"{out} {read_number(minute, style)} phút"
    return f"{out} {read_number(minute, style)}"


def _times(text: str, style: NumberStyle) -> str:
    def with_h(m: re.Match[str]) -> str:
        hour = int(m.group(1))
        minute_text = m.group(2) or m.group(4)
        minute = int(minute_text) if minute_text else 0
        if hour > 24 or minute > 59:
            return m.group(0)  # 48h is a duration: "giờ" is said by the units pass
        if m.group(3) and minute_text is None and not _TIME_CUE.search(_before(m)):
            return m.group(0)
        explicit = m.group(5) is not None or m.group(0).rstrip().endswith(("p", "'"))
        said = _say_time(hour, minute, style, say_minutes=explicit and minute_text is not None)
        if m.group(5) is None and m.group(0) != m.group(0).rstrip():
            said += " "  # give back the space the optional suffix took
        return said

    def with_colon(m: re.Match[str]) -> str:
        hour, minute = int(m.group(1)), int(m.group(2))
        second = int(m.group(3)) if m.group(3) else None
        if hour > 24 or minute > 59 or (second is not None and second > 59):
            return m.group(0)
        follows_minutes = bool(_MINUTES_WORD.match(m.string, m.end()))
        said = _say_time(hour, minute, style, say_minutes=second is not None)
        if follows_minutes and minute and said.endswith(" phút"):
            said = said.removesuffix(" phút")  # "8:05 phút": the text says phút itself
        if second:
            said += f" {read_number(second, style)} giây"
        return said

    text = _TIME_H.sub(with_h, text)
    return _TIME_COLON.sub(with_colon, text)


# -- 7. ordinals and Roman numerals ------------------------------------------------------------

_ORDINAL = re.compile(r"(?<!\w)((?i:thứ))\s+(\d{1,2})(?![\w]|[.,/]\d)")
_ROMAN_AFTER = re.compile(
    r"(?<!\w)((?i:lần\s+thứ|thứ|quý|khóa|khoá|kỳ|kì|đợt|phần|chương|giai\s+đoạn|đại\s+hội))\s+([IVXLC]+)(?!\w)"
)


def _ordinals(text: str, style: NumberStyle) -> str:
    def roman(m: re.Match[str]) -> str:
        value = roman_value(m.group(2))
        if value is None:
            return m.group(0)
        read = ordinal if m.group(1).lower().endswith("thứ") else read_number
        return f"{m.group(1)} {read(value, style)}"

    text = _ROMAN_AFTER.sub(roman, text)
    return _ORDINAL.sub(lambda m: f"{m.group(1)} {ordinal(int(m.group(2)), style)}", text)


# -- 8. numbers and units ----------------------------------------------------------------------

#: Units said after a number; the longest spelling is tried first (km/h before km before m).
UNITS = {
    "km/h": "ki lô mét trên giờ",
    "km²": "ki lô mét vuông",
    "km2": "ki lô mét vuông",
    "m/s": "mét trên giây",
    "mm/h": "mi li mét trên giờ",
    "mm": "mi li mét",
    "cm": "xen ti mét",
    "km": "ki lô mét",
    "kg": "ki lô gam",
    "kWh": "ki lô oát giờ",
    "kW": "ki lô oát",
    "MW": "mê ga oát",
    "ha": "héc ta",
    "m²": "mét vuông",
    "m2": "mét vuông",
    "m³": "mét khối",
    "m3": "mét khối",
    "ml": "mi li lít",
    "°C": "độ xê",
    "oC": "độ xê",
    "độ C": "độ xê",
    "%": "phần trăm",
    "VNĐ": "đồng",
    "VND": "đồng",
    "vnđ": "đồng",
    "đồng": "đồng",
    "đ": "đồng",
    "USD": "đô la Mỹ",
    "m": "mét",
    "g": "gam",
    "l": "lít",
    "h": "giờ",
}
_UNIT = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
_NUMBER = re.compile(
    r"(?<![\w.,/])(?:(?<![^\s(])(?P<neg>-))?"
    r"(?:(?P<num>\d+)/(?P<den>\d+)"
    r"|(?P<list>\d+(?:,\d+){2,})"
    r"|(?P<thousands>\d{1,3}(?:\.\d{3})+)(?:,(?P<tfrac>\d+))?"
    r"|(?P<whole>\d+),(?P<frac>\d+)"
    r"|(?P<dotted>\d+\.\d+)"
    r"|(?P<int>\d+))"
    r"(?!\d|[.,]\d)"
    rf"(?:\s?(?P<unit>{_UNIT})(?!\w))?"
)
#: "30.000đ/hộ/tháng", "3 buổi/ngày": a slash before one of these is a rate, said "mỗi".
_RATE = re.compile(
    r"(?<=\w)\s*/\s*(?=(?:ngày|tháng|năm|tuần|quý|giờ|phút|người|hộ|khẩu|lượt|lần|buổi|suất|ca|con|cái|chiếc|xe|"
    r"bao|kg|tấn|lít|ha|km|m2|m²|m3|m³|em|trẻ|cháu|học\s+sinh)(?!\w))"
)


_LEFTOVER_DIGITS = re.compile(r"\d+")
_RATE_UNIT = re.compile(r"(?<!\w)mỗi (kg|km|ha|m2|m²|m3|m³)(?!\w)")


def _say_integer(digits: str, style: NumberStyle) -> str:
    if len(digits) > 12 or (digits.startswith("0") and len(digits) > 3):
        return read_digits(digits)  # an account or card number: dictated digit by digit
    return read_number(int(digits), style)


def _numbers(text: str, style: NumberStyle) -> str:
    def say(m: re.Match[str]) -> str:
        g = m.groupdict()
        if g["num"] is not None:
            said = f"{read_number(int(g['num']), style)} trên {read_number(int(g['den']), style)}"
        elif g["list"] is not None:
            said = ", ".join(_say_integer(d, style) for d in g["list"].split(","))
        elif g["thousands"] is not None:
            whole = g["thousands"].replace(".", "")
            said = read_decimal(whole, g["tfrac"], style) if g["tfrac"] else read_number(int(whole), style)
        elif g["whole"] is not None:
            said = read_decimal(g["whole"], g["frac"], style)
        elif g["dotted"] is not None:
            left, right = g["dotted"].split(".")
            said = f"{_say_integer(left, style)} chấm {_say_integer(right, style)}"
        else:
            said = _say_integer(g["int"], style)
        if g["neg"]:
            said = "âm " + said
        unit = g["unit"]
        if unit is not None:
            said += " " + UNITS[unit]
        after = m.string[m.end() : m.end() + 1]
        if after.isalpha():
            said += " "  # 1A: "một A", not "mộtA"
        return said

    text = _RATE.sub(" mỗi ", text)
    text = _NUMBER.sub(say, text)
    # Digits in a shape no rule knows (1.50.3, 12a34): said one number at a time, never left to the voice.
    text = _LEFTOVER_DIGITS.sub(lambda m: f" {_say_integer(m.group(0), style)} ", text)
    # What follows a rate's "mỗi" may be a unit written short (đồng mỗi kg).
    return _RATE_UNIT.sub(lambda m: f"mỗi {UNITS[m.group(1)]}", text)


# -- 9. symbols and tidying --------------------------------------------------------------------

_BRACKETS = re.compile(r"\s*[()\[\]{}]\s*")
_DROP = re.compile(r"[\"“”„«»‹›*#_~|•·▪►<>^`]")
_LOOSE_DASH = re.compile(r"\s+-+\s+|^-+\s*|\s*-+$")
_WORD_DASH = re.compile(r"(?<=\w)-(?=\w)")
_SYMBOLS = {"/": " ", "+": " cộng ", "=": " bằng ", "%": " phần trăm ", "\\": " "}


def _symbols(text: str, style: NumberStyle) -> str:
    text = _BRACKETS.sub(", ", text)
    text = _DROP.sub(" ", text)
    text = _LOOSE_DASH.sub(", ", text)
    text = _WORD_DASH.sub(" ", text)
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    return text


_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?…])")
_REPEATED_COMMA = re.compile(r",(?:\s*,)+")
_COMMA_THEN_STOP = re.compile(r",\s*([.;:!?])")
_STOP_THEN_COMMA = re.compile(r"([.;:!?])\s*,")
_PUNCT_NO_SPACE = re.compile(r"([,;:!?])(?=[^\s\d.,;:!?…])")


def _tidy(text: str) -> str:
    text = _WHITESPACE.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _REPEATED_COMMA.sub(",", text)
    text = _COMMA_THEN_STOP.sub(r"\1", text)
    text = _STOP_THEN_COMMA.sub(r"\1", text)
    text = _PUNCT_NO_SPACE.sub(r"\1 ", text)
    return text.strip(" ,;")


_PASSES: tuple[Pass, ...] = (
    _phones,
    _documents,
    _abbreviations,
    _full_dates,
    _ranges,
    _short_dates,
    _times,
    _ordinals,
    _numbers,
    _symbols,
)


def normalise_vi(text: str, *, style: NumberStyle = "north") -> str:
    """``text`` as the words a Vietnamese announcer would say, on one line.

    ``style`` picks the regional number words: ``north`` reads 105 "một trăm linh năm" and 1000
    "một nghìn", ``south`` "một trăm lẻ năm" and "một ngàn".

    >>> normalise_vi("UBND phường họp lúc 8h30 ngày 2/9/2026")
    'ủy ban nhân dân phường họp lúc tám giờ ba mươi ngày hai tháng chín năm hai nghìn không trăm hai mươi sáu'
    """
    text = unicodedata.normalize("NFC", text)
    text = _SPACES.sub(" ", text)
    text = _DASHES.sub("-", text)
    text = text.replace("\u2019", "'").replace("º", "°")
    text = _lines(text)
    for step in _PASSES:
        text = step(text, style)
    return _tidy(text)
