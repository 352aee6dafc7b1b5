"""Vietnamese number words: how a loudspeaker announcer reads amounts, years, decimals and digits.

The rules a listener expects (and that espeak-ng, reading digits itself, gets wrong for anything
past a few digits):

- units after a tens digit change: ``21`` "hai mươi mốt" (but ``11`` "mười một", ``101`` "một trăm
  linh một"), ``25`` "hai mươi lăm" and ``15`` "mười lăm" (but ``105`` "một trăm linh năm"), ``24``
  "hai mươi tư" (but ``14`` "mười bốn");
- ``10`` is "mười", ``20``–``90`` are "… mươi";
- a zero tens digit before a unit is "linh" (northern) or "lẻ" (southern): ``105``, ``2006``;
- inside a larger number every three-digit group after the first is read in full, so a zero
  hundreds digit is "không trăm": ``2026`` "hai nghìn không trăm hai mươi sáu";
- a group that is all zeros is skipped: ``1.500.000`` "một triệu năm trăm nghìn";
- groups are nghìn (northern) or ngàn (southern), triệu, tỷ; past a thousand billion the tỷ repeats
  ("nghìn tỷ").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NumberStyle = Literal["north", "south"]

DIGIT_WORDS = ("không", "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín")

_BILLION = 10**9


@dataclass(frozen=True)
class _Words:
    linh: str
    thousand: str


_STYLES: dict[str, _Words] = {
    "north": _Words(linh="linh", thousand="nghìn"),
    "south": _Words(linh="lẻ", thousand="ngàn"),
}


def read_digits(digits: str) -> str:
    """Each digit by its name, as a phone number is read: ``"0912"`` → "không chín một hai"."""
    return " ".join(DIGIT_WORDS[int(d)] for d in digits if d.isdigit())


def _read_group(n: int, *, full: bool, words: _Words) -> list[str]:
    """A group of three digits (0 < n < 1000); ``full``: a higher group was read, so say "không trăm"."""
    hundreds, tens, units = n // 100, n // 10 % 10, n % 10
    out: list[str] = []
    if hundreds or full:
        out += [DIGIT_WORDS[hundreds], "trăm"]
    if tens == 0:
        if units:
            if out:
                out.append(words.linh)
            out.append(DIGIT_WORDS[units])
    elif tens == 1:
        out.append("mười")
        if units:
            out.append("lăm" if units == 5 else DIGIT_WORDS[units])
    else:
        out += [DIGIT_WORDS[tens], "mươi"]
        if units:
            out.append({1: "mốt", 4: "tư", 5: "lăm"}.get(units, DIGIT_WORDS[units]))
    return out


def _below_billion(n: int, *, full: bool, words: _Words) -> list[str]:
    out: list[str] = []
    for value, name in (
        (n // 1_000_000 % 1000, "triệu"),
        (n // 1000 % 1000, words.thousand),
        (n % 1000, ""),
    ):
        if value == 0:
            continue
        out += _read_group(value, full=full or bool(out), words=words)
        if name:
            out.append(name)
    return out


def _words(n: int, *, full: bool, words: _Words) -> list[str]:
    if n < _BILLION:
        return _below_billion(n, full=full, words=words)
    high, low = divmod(n, _BILLION)
    out = [*_words(high, full=full, words=words), "tỷ"]
    if low:
        out += _below_billion(low, full=True, words=words)
    return out


def read_number(n: int, style: NumberStyle = "north") -> str:
    """The Vietnamese words for the whole number ``n`` (negative numbers start with "âm")."""
    if n < 0:
        return "âm " + read_number(-n, style)
    if n == 0:
        return DIGIT_WORDS[0]
    return " ".join(_words(n, full=False, words=_STYLES[style]))


def read_decimal(whole: str, fraction: str, style: NumberStyle = "north") -> str:
    """``2,5`` → "hai phẩy năm", ``3,05`` → "ba phẩy không năm", ``2,25`` → "hai phẩy hai mươi lăm".

    Up to three decimals are read as a number (leading zeros as "không"), as announcers do; more
    than three are read digit by digit, which is how long fractions are dictated.
    """
    head = read_number(int(whole), style)
    if len(fraction) > 3:
        return f"{head} phẩy {read_digits(fraction)}"
    zeros = len(fraction) - len(fraction.lstrip("0"))
    rest = fraction[zeros:]
    parts = [DIGIT_WORDS[0]] * zeros + ([read_number(int(rest), style)] if rest else [])
    return f"{head} phẩy {' '.join(parts)}"


def ordinal(n: int, style: NumberStyle = "north") -> str:
    """After "thứ": 1 is "nhất" and 4 is "tư" (thứ tư, Wednesday; lần thứ tư); the rest as numbers."""
    return {1: "nhất", 4: "tư"}.get(n) or read_number(n, style)


_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}


def roman_value(text: str) -> int | None:
    """The value of a Roman numeral up to ``C`` in canonical form (``XIV``), or None."""
    if not text or any(c not in _ROMAN for c in text):
        return None
    total = 0
    for i, c in enumerate(text):
        value = _ROMAN[c]
        if i + 1 < len(text) and _ROMAN[text[i + 1]] > value:
            total -= value
        else:
            total += value
    return total if 0 < total <= 100 and to_roman(total) == text else None


def to_roman(n: int) -> str:
    """``14`` → ``"XIV"`` (1 ≤ n ≤ 100); used to accept only canonical numerals."""
    out = ""
    for value, sign in ((100, "C"), (90, "XC"), (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV")):
        while n >= value:
            out += sign
            n -= value
    return out + "I" * n
