"""The panel protocol (DESIGN.md §5): CRC, frame encoding, and a parser that survives any line noise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.panel.protocol import (
    HOST_FRAMES,
    MAX_BODY,
    Ack,
    Beep,
    Btn,
    Cfg,
    Err,
    Frame,
    FrameParser,
    Hb,
    Hello,
    Led,
    Ping,
    cfg_frames,
    crc16_ccitt_false,
    frame_bytes,
    parse_body,
)
from edge.exceptions import ProtocolError

# -- CRC and encoding ------------------------------------------------------------------------------


def test_crc_is_ccitt_false_with_the_standard_check_value() -> None:
    # The catalogue check value of CRC-16/CCITT-FALSE for "123456789".
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert crc16_ccitt_false(b"") == 0xFFFF


def test_a_press_frame_looks_like_the_spec() -> None:
    assert Btn(2, 17, 123456).encode() == b"$BTN 2 17 123456*3FB1\r\n"
    assert frame_bytes("PING") == Ping().encode()
    assert Ack(65535).encode().startswith(b"$ACK 65535*")
    # Four upper-case hex digits, always.
    crc = Hb(0).encode()[-6:-2]
    assert crc == crc.upper() and len(crc) == 4


def test_every_frame_type_round_trips() -> None:
    frames: list[Frame] = [
        Hello(1, "1.2.0", "ce-panel-4", 4),
        Btn(4, 0, 0),
        Hb(4294967295),
        Err("STUCK", "2"),
        Err("BADCFG", "brightness out of range"),
    ]
    parser = FrameParser()
    assert parser.feed(b"".join(f.encode() for f in frames)) == frames
    host: list[Frame] = [Ack(7), Led("all", "thanks"), Led(3, "off"), Beep(120), Cfg((("hb_ms", "1000"),)), Ping()]
    assert FrameParser(HOST_FRAMES).feed(b"".join(f.encode() for f in host)) == host


def test_long_settings_are_split_over_several_cfg_frames() -> None:
    settings = {f"key_{i:02d}": 1000 + i for i in range(30)}
    frames = cfg_frames(settings)
    assert len(frames) > 1
    assert all(len(f.body()) <= MAX_BODY for f in frames)
    merged: dict[str, str] = {}
    for f in frames:
        merged.update(f.as_dict())
    assert merged == {k: str(v) for k, v in settings.items()}
    assert cfg_frames({"sound": True, "night": False})[0].as_dict() == {"sound": "1", "night": "0"}


@pytest.mark.parametrize(
    "body",
    [
        "BTN 0 1 2",  # buttons count from 1
        "BTN 1 65536 2",  # mseq is 16-bit
        "BTN 1 2",  # a field missing
        "BTN 1  2 3",  # double space
        "BTN 1 02 3",  # leading zero
        "BTN 1 2 4294967296",  # uptime is 32-bit
        "HELLO proto=1 fw=1.0 model=x",  # buttons missing
        "HELLO proto=1 proto=1 fw=1.0 model=x buttons=4",
        "HB",
        "ERR stuck 2",  # codes are upper case
    ],
)
def test_malformed_bodies_are_rejected(body: str) -> None:
    with pytest.raises(ProtocolError):
        parse_body(body)


def test_hello_ignores_keys_it_does_not_know() -> None:
    # A newer firmware may say more; the four fields we need are still there.
    assert parse_body("HELLO proto=1 fw=1.3 model=x buttons=4 serial=A1") == Hello(1, "1.3", "x", 4)


# -- the parser on a noisy line ----------------------------------------------------------------------


def test_frames_split_byte_by_byte_are_reassembled() -> None:
    data = Btn(1, 5, 99).encode() + Hb(100).encode()
    parser = FrameParser()
    out: list[Frame] = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    assert out == [Btn(1, 5, 99), Hb(100)]
    assert parser.counters.dropped == 0


def test_each_kind_of_bad_line_is_dropped_and_counted_under_its_own_name() -> None:
    good = Hb(1).encode()
    bad_crc = Btn(1, 1, 1).encode().replace(b"BTN 1", b"BTN 2")
    bad_grammar = frame_bytes("BTN one 2 3")
    no_crc = b"$HB 5\r\n"
    unknown = frame_bytes("FOO 1")
    wrong_direction = Ack(3).encode()  # the MCU never sends ACK
    truncated = b"$BTN 1 2"  # a new '$' arrives before the line end
    overlong = b"$" + b"A" * (MAX_BODY + 50) + b"\r\n"
    parser = FrameParser()
    out = parser.feed(
        b"noise" + bad_crc + bad_grammar + no_crc + unknown + wrong_direction + truncated + good + overlong + good
    )
    assert out == [Hb(1), Hb(1)]
    c = parser.counters
    assert (c.bad_crc, c.bad_grammar, c.unknown_verb, c.truncated, c.overlong) == (1, 2, 2, 1, 1)
    assert c.frames == 2
    assert c.garbage_bytes == len(b"noise")
    assert c.dropped == 7


def test_an_endless_line_does_not_grow_the_buffer() -> None:
    parser = FrameParser()
    parser.feed(b"$")
    for _ in range(1000):
        parser.feed(b"X" * 1000)
    assert len(parser._buf) <= MAX_BODY + 6
    assert parser.feed(Hb(7).encode()) == [Hb(7)]


# -- properties ------------------------------------------------------------------------------------

# The properties run without hypothesis's per-example deadline: a loaded CI machine must not turn a
# slow example into a failure.
mcu_frames = st.one_of(
    st.builds(
        Hello,
        proto=st.integers(0, 255),
        fw=st.from_regex(r"[0-9]{1,3}\.[0-9]{1,3}(\.[0-9]{1,3})?", fullmatch=True),
        model=st.from_regex(r"[A-Za-z0-9._+-]{1,32}", fullmatch=True),
        buttons=st.integers(1, 16),
    ),
    st.builds(Btn, button=st.integers(1, 16), mseq=st.integers(0, 65535), uptime_ms=st.integers(0, 2**32 - 1)),
    st.builds(Hb, uptime_ms=st.integers(0, 2**32 - 1)),
    st.builds(
        Err,
        code=st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True),
        text=st.from_regex(r"[a-z0-9]{1,8}( [a-z0-9]{1,8}){0,4}", fullmatch=True) | st.just(""),
    ),
)
noise_without_start = st.binary(max_size=64).map(lambda b: b.replace(b"$", b""))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.lists(st.integers(1, 64), max_size=40))
def test_any_byte_noise_never_raises(data: bytes, cuts: list[int]) -> None:
    parser = FrameParser()
    pos = 0
    for size in [*cuts, len(data)]:
        parser.feed(data[pos : pos + size])
        pos += size
    c = parser.counters
    assert c.frames + c.dropped >= 0  # counted, not raised


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(noise_without_start, mcu_frames), min_size=1, max_size=20), noise_without_start)
def test_every_frame_embedded_in_noise_without_a_dollar_is_recovered(
    chunks: list[tuple[bytes, Frame]], tail: bytes
) -> None:
    stream = b"".join(noise + frame.encode() for noise, frame in chunks) + tail
    assert FrameParser().feed(stream) == [frame for _, frame in chunks]


@settings(max_examples=100, deadline=None)
@given(st.lists(mcu_frames, min_size=1, max_size=10), st.data())
def test_how_the_stream_is_cut_into_reads_does_not_matter(frames: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(f.encode() for f in frames)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=30)))
    parser = FrameParser()
    out: list[Frame] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += parser.feed(stream[prev:cut])
        prev = cut
    assert out == frames


@settings(max_examples=300, deadline=None)
@given(mcu_frames, st.data())
def test_one_damaged_byte_never_turns_a_frame_into_a_different_frame(frame: Frame, data: st.DataObject) -> None:
    raw = frame.encode()
    pos = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    damaged = raw[:pos] + bytes([new]) + raw[pos + 1 :]
    # Followed by a good frame: the parser must be back in step for it.
    out = FrameParser().feed(damaged + Hb(42).encode())
    # Dropped, or (a CR turned into LF: the line still ends there) read as the very same frame.
    assert out in ([Hb(42)], [frame, Hb(42)])
