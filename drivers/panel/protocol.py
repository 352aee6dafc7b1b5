"""The panel firmware protocol, version 1 (DESIGN.md §5; written up in firmware_config/PROTOCOL.md).

Line frames in ASCII: ``$`` BODY ``*`` CRC ``\\r\\n``. CRC is CRC-16/CCITT-FALSE of BODY as four
upper-case hex digits. BODY is a verb and single-space-separated fields, printable ASCII without ``$``
and ``*``.

This module is pure: it encodes typed frames to bytes and turns a byte stream back into typed frames.
The :class:`FrameParser` is incremental, never raises on input, drops and counts anything that is not
a valid frame, and resynchronises at the next ``$``.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

from edge.exceptions import ProtocolError

PROTOCOL_VERSION = 1

#: Longest BODY accepted (bytes). Longer lines are dropped as overlong. A UART line buffer on a small
#: MCU is typically 128 bytes; ``$``, ``*CRC`` and CRLF take 8 of them.
MAX_BODY = 120

MAX_BUTTONS = 16
MAX_MSEQ = 0xFFFF
MAX_UPTIME_MS = 0xFFFFFFFF  # a uint32 millisecond counter; wraps after 49.7 days
MAX_BEEP_MS = 5000

LedMode = Literal["off", "on", "blink", "thanks"]
LED_MODES: tuple[LedMode, ...] = ("off", "on", "blink", "thanks")

_START = ord("$")
_LF = ord("\n")
_NUMBER = re.compile(r"0|[1-9][0-9]{0,9}")
_TOKEN = re.compile(r"[A-Za-z0-9._+-]{1,32}")
_CFG_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_CFG_VALUE = re.compile(r"[!-~]{1,32}")  # printable, no space; `$`, `*` and `=` excluded below
_ERR_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,15}")


# -- CRC -------------------------------------------------------------------------------------------


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0 (check: ``123456789`` → 0x29B1).

    That is the XMODEM CRC that :func:`binascii.crc_hqx` computes, started at 0xFFFF instead of 0.
    """
    return binascii.crc_hqx(data, 0xFFFF)


def frame_bytes(body: str) -> bytes:
    """Wrap a BODY into a complete frame: ``$BODY*CRC\\r\\n``."""
    raw = body.encode("ascii")
    return b"$" + raw + b"*" + f"{crc16_ccitt_false(raw):04X}".encode("ascii") + b"\r\n"


# -- field helpers ---------------------------------------------------------------------------------


def _int(text: str, what: str, lo: int, hi: int) -> int:
    if not _NUMBER.fullmatch(text):
        raise ProtocolError(f"{what} must be a decimal number, got {text!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise ProtocolError(f"{what} must be {lo}..{hi}, got {value}")
    return value


def _token(text: str, what: str) -> str:
    if not _TOKEN.fullmatch(text):
        raise ProtocolError(f"{what} must be 1-32 characters of [A-Za-z0-9._+-], got {text!r}")
    return text


def _arity(fields_: list[str], verb: str, n: int) -> None:
    if len(fields_) != n:
        raise ProtocolError(f"{verb} takes {n} field(s), got {len(fields_)}")


def _check_text(text: str, what: str) -> str:
    if any(c in "$*\r\n" or not " " <= c <= "~" for c in text):
        raise ProtocolError(f"{what} must be printable ASCII without '$' or '*'")
    return text


# -- frames ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FrameBase:
    verb: ClassVar[str]

    def body(self) -> str:
        """The frame's BODY (verb and fields), without framing or CRC."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """The complete frame on the wire."""
        body = self.body()
        _check_text(body, "BODY")
        if len(body) > MAX_BODY:
            raise ProtocolError(f"BODY is {len(body)} bytes, more than {MAX_BODY}")
        return frame_bytes(body)


# MCU → host


@dataclass(frozen=True)
class Hello(_FrameBase):
    """``HELLO proto=<n> fw=<ver> model=<id> buttons=<n>``: sent at boot and in answer to PING."""

    verb: ClassVar[str] = "HELLO"
    proto: int
    fw: str
    model: str
    buttons: int

    def body(self) -> str:
        return f"HELLO proto={self.proto} fw={self.fw} model={self.model} buttons={self.buttons}"

    @classmethod
    def parse(cls, args: list[str]) -> Hello:
        pairs: dict[str, str] = {}
        for arg in args:
            key, sep, value = arg.partition("=")
            if not sep or not key:
                raise ProtocolError(f"HELLO field {arg!r} is not key=value")
            if key in pairs:
                raise ProtocolError(f"HELLO repeats {key!r}")
            pairs[key] = value
        missing = [k for k in ("proto", "fw", "model", "buttons") if k not in pairs]
        if missing:
            raise ProtocolError(f"HELLO lacks {', '.join(missing)}")
        # Unknown keys are ignored on purpose: a newer firmware may tell us more.
        return cls(
            proto=_int(pairs["proto"], "proto", 0, 255),
            fw=_token(pairs["fw"], "fw"),
            model=_token(pairs["model"], "model"),
            buttons=_int(pairs["buttons"], "buttons", 1, MAX_BUTTONS),
        )


@dataclass(frozen=True)
class Btn(_FrameBase):
    """``BTN <button> <mseq> <uptime_ms>``: a press, repeated unchanged until the host ACKs ``mseq``."""

    verb: ClassVar[str] = "BTN"
    button: int
    mseq: int
    uptime_ms: int

    def body(self) -> str:
        return f"BTN {self.button} {self.mseq} {self.uptime_ms}"

    @classmethod
    def parse(cls, args: list[str]) -> Btn:
        _arity(args, "BTN", 3)
        return cls(
            button=_int(args[0], "button", 1, MAX_BUTTONS),
            mseq=_int(args[1], "mseq", 0, MAX_MSEQ),
            uptime_ms=_int(args[2], "uptime_ms", 0, MAX_UPTIME_MS),
        )


@dataclass(frozen=True)
class Hb(_FrameBase):
    """``HB <uptime_ms>``: heartbeat, every ``hb_ms`` (1 s unless configured)."""

    verb: ClassVar[str] = "HB"
    uptime_ms: int

    def body(self) -> str:
        return f"HB {self.uptime_ms}"

    @classmethod
    def parse(cls, args: list[str]) -> Hb:
        _arity(args, "HB", 1)
        return cls(uptime_ms=_int(args[0], "uptime_ms", 0, MAX_UPTIME_MS))


@dataclass(frozen=True)
class Err(_FrameBase):
    """``ERR <code> <text>``: something the MCU wants reported (``STUCK 2``, ``BADCFG foo``...)."""

    verb: ClassVar[str] = "ERR"
    code: str
    text: str = ""

    def body(self) -> str:
        return f"ERR {self.code} {self.text}" if self.text else f"ERR {self.code}"

    @classmethod
    def parse(cls, args: list[str]) -> Err:
        if not args:
            raise ProtocolError("ERR needs a code")
        if not _ERR_CODE.fullmatch(args[0]):
            raise ProtocolError(f"ERR code must be [A-Z][A-Z0-9_]*, got {args[0]!r}")
        return cls(code=args[0], text=" ".join(args[1:]))


# host → MCU


@dataclass(frozen=True)
class Ack(_FrameBase):
    """``ACK <mseq>``: the press ``mseq`` is committed; stop repeating it."""

    verb: ClassVar[str] = "ACK"
    mseq: int

    def body(self) -> str:
        return f"ACK {self.mseq}"

    @classmethod
    def parse(cls, args: list[str]) -> Ack:
        _arity(args, "ACK", 1)
        return cls(mseq=_int(args[0], "mseq", 0, MAX_MSEQ))


@dataclass(frozen=True)
class Led(_FrameBase):
    """``LED <button|all> <off|on|blink|thanks>``."""

    verb: ClassVar[str] = "LED"
    target: int | Literal["all"]
    mode: LedMode

    def body(self) -> str:
        return f"LED {self.target} {self.mode}"

    @classmethod
    def parse(cls, args: list[str]) -> Led:
        _arity(args, "LED", 2)
        target: int | Literal["all"] = "all" if args[0] == "all" else _int(args[0], "LED target", 1, MAX_BUTTONS)
        if args[1] not in LED_MODES:
            raise ProtocolError(f"LED mode must be one of {', '.join(LED_MODES)}, got {args[1]!r}")
        return cls(target=target, mode=args[1])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Beep(_FrameBase):
    """``BEEP <ms>``: sound the buzzer for ``ms`` milliseconds (1..5000)."""

    verb: ClassVar[str] = "BEEP"
    ms: int

    def body(self) -> str:
        return f"BEEP {self.ms}"

    @classmethod
    def parse(cls, args: list[str]) -> Beep:
        _arity(args, "BEEP", 1)
        return cls(ms=_int(args[0], "ms", 1, MAX_BEEP_MS))


@dataclass(frozen=True)
class Cfg(_FrameBase):
    """``CFG <key>=<value> ...``: settings from the hardware profile, sent after every HELLO."""

    verb: ClassVar[str] = "CFG"
    settings: tuple[tuple[str, str], ...]

    def body(self) -> str:
        return "CFG " + " ".join(f"{k}={v}" for k, v in self.settings)

    def as_dict(self) -> dict[str, str]:
        """The settings as a dict."""
        return dict(self.settings)

    @classmethod
    def parse(cls, args: list[str]) -> Cfg:
        if not args:
            raise ProtocolError("CFG needs at least one key=value")
        return cls(settings=tuple(_cfg_pair(arg) for arg in args))


def _cfg_pair(arg: str) -> tuple[str, str]:
    key, sep, value = arg.partition("=")
    if not sep:
        raise ProtocolError(f"CFG field {arg!r} is not key=value")
    if not _CFG_KEY.fullmatch(key):
        raise ProtocolError(f"CFG key must be [a-z][a-z0-9_]*, got {key!r}")
    if not _CFG_VALUE.fullmatch(value) or any(c in "$*=" for c in value):
        raise ProtocolError(f"CFG value for {key} must be 1-32 printable characters without $*=")
    return key, value


@dataclass(frozen=True)
class Ping(_FrameBase):
    """``PING``: ask the MCU for HELLO."""

    verb: ClassVar[str] = "PING"

    def body(self) -> str:
        return "PING"

    @classmethod
    def parse(cls, args: list[str]) -> Ping:
        _arity(args, "PING", 0)
        return cls()


McuFrame = Hello | Btn | Hb | Err
HostFrame = Ack | Led | Beep | Cfg | Ping
Frame = McuFrame | HostFrame

#: What each side accepts from the other.
MCU_FRAMES: tuple[type[McuFrame], ...] = (Hello, Btn, Hb, Err)
HOST_FRAMES: tuple[type[HostFrame], ...] = (Ack, Led, Beep, Cfg, Ping)


def cfg_frames(settings: Mapping[str, object]) -> list[Cfg]:
    """Split profile settings into as few CFG frames as fit in :data:`MAX_BODY` each.

    Booleans are sent as ``1``/``0`` so that firmware needs to parse only numbers and tokens.
    """
    out: list[Cfg] = []
    chunk: list[tuple[str, str]] = []
    for key, raw in settings.items():
        value = ("1" if raw else "0") if isinstance(raw, bool) else str(raw)
        pair = _cfg_pair(f"{key}={value}")
        if chunk and len(Cfg(tuple([*chunk, pair])).body()) > MAX_BODY:
            out.append(Cfg(tuple(chunk)))
            chunk = []
        chunk.append(pair)
    if chunk:
        out.append(Cfg(tuple(chunk)))
    return out


def parse_body(body: str, accept: Iterable[type[Frame]] = MCU_FRAMES) -> Frame:
    """Parse one BODY (already CRC-checked) into a typed frame; raise :exc:`ProtocolError` if it is bad.

    A verb this side does not accept raises :exc:`UnknownVerb` (a :exc:`ProtocolError`).
    """
    _check_text(body, "BODY")
    verb, *args = body.split(" ")
    for cls in accept:
        if cls.verb == verb:
            if any(a == "" for a in args):
                raise ProtocolError("fields must be separated by single spaces")
            return cls.parse(args)  # type: ignore[attr-defined, no-any-return]
    raise UnknownVerb(f"unknown verb {verb!r}")


class UnknownVerb(ProtocolError):
    """A well-formed frame whose verb this side does not know (or that the other side must not send)."""


# -- parser ----------------------------------------------------------------------------------------


@dataclass
class ParserCounters:
    """What the parser has seen. Every dropped frame is counted under exactly one reason."""

    frames: int = 0
    """Valid frames delivered."""
    bad_crc: int = 0
    """Well-formed lines whose CRC did not match (line noise)."""
    bad_grammar: int = 0
    """Lines with a valid CRC field but a malformed BODY, or with no parsable ``*CRC`` part."""
    unknown_verb: int = 0
    """CRC-valid frames with a verb this side does not accept."""
    overlong: int = 0
    """Lines longer than :data:`MAX_BODY`, dropped without buffering them."""
    truncated: int = 0
    """Frames cut short by a new ``$`` before their end of line."""
    garbage_bytes: int = 0
    """Bytes outside any frame (between a line end and the next ``$``, including the tail of an
    overlong line); CR and LF are not counted."""

    @property
    def dropped(self) -> int:
        """Frames dropped for any reason."""
        return self.bad_crc + self.bad_grammar + self.unknown_verb + self.overlong + self.truncated

    def as_dict(self) -> dict[str, int]:
        """The counters, plus ``dropped``, as a plain dict."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["dropped"] = self.dropped
        return out


class FrameParser:
    """Incremental parser: ``feed(bytes) -> list[Frame]``. Never raises on input; counts drops.

    Frames may arrive split across any number of reads. Anything between a line end and the next ``$``
    is garbage. A ``$`` inside a frame means the frame was cut short (a byte lost on the wire): the
    partial frame is dropped and a new one starts there. A line longer than ``max_body`` is dropped and
    the parser waits for the next ``$``. Not thread-safe: one reader feeds it.
    """

    def __init__(self, accept: Iterable[type[Frame]] = MCU_FRAMES, max_body: int = MAX_BODY) -> None:
        self.accept = tuple(accept)
        self.max_body = max_body
        # BODY + "*" + 4 hex + optional "\r": the longest line we keep buffering.
        self._max_line = max_body + 6
        self.counters = ParserCounters()
        self._buf = bytearray()
        self._in_frame = False

    def reset(self) -> None:
        """Forget a partial frame (e.g. after the port was reopened). Not counted as a drop."""
        self._buf.clear()
        self._in_frame = False

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data`` and return the complete valid frames it finished, in order."""
        out: list[Frame] = []
        i, n = 0, len(data)
        while i < n:
            if not self._in_frame:
                start = data.find(b"$", i)
                end = n if start < 0 else start
                self.counters.garbage_bytes += sum(1 for b in data[i:end] if b not in (0x0D, 0x0A))
                if start < 0:
                    return out
                self._in_frame = True
                self._buf.clear()
                i = start + 1
                continue
            # Inside a frame: take bytes up to the next '$' or '\n', whichever comes first.
            j = i
            while j < n and data[j] != _LF and data[j] != _START:
                j += 1
            self._buf += data[i:j]
            if len(self._buf) > self._max_line:
                # Stop buffering at once (a stream of noise must not grow memory) and hunt for the
                # next '$'; the tail of this line is counted as garbage bytes.
                self.counters.overlong += 1
                self._in_frame = False
                self._buf.clear()
                i = j
                continue
            if j == n:
                return out
            if data[j] == _START:
                self.counters.truncated += 1
                self._buf.clear()
                i = j + 1  # still in a frame: the new one starts here
                continue
            # End of line.
            frame = self._finish(bytes(self._buf))
            if frame is not None:
                out.append(frame)
            self._in_frame = False
            self._buf.clear()
            i = j + 1
        return out

    def _finish(self, line: bytes) -> Frame | None:
        if line.endswith(b"\r"):
            line = line[:-1]
        body, star, crc = line.rpartition(b"*")
        if not star or len(crc) != 4 or not all(c in b"0123456789ABCDEF" for c in crc):
            self.counters.bad_grammar += 1
            return None
        if len(body) > self.max_body:
            self.counters.overlong += 1
            return None
        if crc16_ccitt_false(body) != int(crc, 16):
            self.counters.bad_crc += 1
            return None
        try:
            frame = parse_body(body.decode("ascii"), self.accept)
        except UnicodeDecodeError:
            self.counters.bad_grammar += 1
            return None
        except UnknownVerb:
            self.counters.unknown_verb += 1
            return None
        except ProtocolError:
            self.counters.bad_grammar += 1
            return None
        self.counters.frames += 1
        return frame
