"""The live relay: a real stream served on loopback, decoded by PyAV, read in real time like a player does.

The station is ``sim.media_server`` sending an MP3 or Ogg/Opus file (written by soundfile) paced in
real time; the fallback is a WAV opened by the player's own ``open_file_source``. Every check is on the
samples that come out of ``read()``: their frequency tells the stream (440 Hz) from the fallback
(880 Hz), their RMS the level, and the number of frames read is the output clock, the one a listener
hears by.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from drivers.audio import PcmSource, open_file_source
from edge import pki
from edge.config.sources import SourcesConfig
from edge.services.broadcast.cache import AudioCache, SourceRejected
from edge.services.broadcast.live import LiveRelaySource
from sim.broker import free_port
from sim.harness import wait_for
from sim.media_server import LiveStream, MediaServer

RATE = 48000
BLOCK = 2400  # 50 ms, what the player reads at a time
STREAM_HZ = 440.0
FALLBACK_HZ = 880.0
LEVEL_DBFS = -9.03  # a sine of amplitude 0.5
STALL_S = 2.0


def write_tone(path: Path, hz: float, seconds: float, rate: int, channels: int, **kw: Any) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    sf.write(str(path), np.repeat(x.reshape(-1, 1), channels, axis=1), rate, **kw)
    return path


@dataclass
class Heard:
    """One block as it came out: when (output clock), what, and how loud."""

    t: float
    kind: str  # silence | stream | fallback | other
    hz: float
    dbfs: float


def classify(block: np.ndarray) -> tuple[str, float, float]:
    rms = float(np.sqrt(np.mean(block.astype(np.float64) ** 2)))
    dbfs = 20 * np.log10(rms) if rms > 0 else -120.0
    if rms < 0.01:
        return "silence", 0.0, dbfs
    spectrum = np.abs(np.fft.rfft(block[:, 0] * np.hanning(block.shape[0])))
    hz = float(np.argmax(spectrum)) * RATE / block.shape[0]
    if abs(hz - STREAM_HZ) <= 30:
        return "stream", hz, dbfs
    if abs(hz - FALLBACK_HZ) <= 30:
        return "fallback", hz, dbfs
    return "other", hz, dbfs


@dataclass
class Listener:
    """Reads a source in real time, block by block, and notes what each block was."""

    src: LiveRelaySource
    heard: list[Heard] = field(default_factory=list)
    blocks: list[np.ndarray] = field(default_factory=list)
    frames: int = 0
    ended: bool = False
    _t0: float | None = None

    @property
    def now(self) -> float:
        """The output clock: seconds of audio read so far."""
        return self.frames / RATE

    def until(self, done: Callable[[Listener], bool], *, within_s: float) -> bool:
        """Read in real time until ``done(self)`` or ``within_s`` more seconds of output."""
        if self._t0 is None:
            self._t0 = time.monotonic()
        stop_at = self.now + within_s
        while self.now < stop_at and not self.ended:
            block = self.src.read(BLOCK)
            assert block.dtype == np.float32 and block.shape[1] == self.src.channels
            if block.shape[0] == 0:
                self.ended = True
                break
            assert float(np.max(np.abs(block))) <= 1.0
            kind, hz, dbfs = classify(block)
            self.heard.append(Heard(self.now, kind, hz, dbfs))
            self.blocks.append(block)
            self.frames += block.shape[0]
            if done(self):
                return True
            time.sleep(max(0.0, self._t0 + self.now - time.monotonic()))  # a sound card's pace
        return done(self)

    def count(self, kind: str, since: float = 0.0) -> int:
        return sum(1 for h in self.heard if h.kind == kind and h.t >= since)

    def first(self, kind: str, since: float = 0.0) -> Heard:
        return next(h for h in self.heard if h.kind == kind and h.t >= since)

    def last(self, kind: str, before: float) -> Heard:
        return [h for h in self.heard if h.kind == kind and h.t < before][-1]


@dataclass
class Events:
    """What on_event was told, with the listener's output time when it arrived."""

    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.seen.append((kind, data))

    @property
    def kinds(self) -> list[str]:
        with self.lock:
            return [k for k, _ in self.seen]

    def data(self, kind: str) -> dict[str, Any]:
        with self.lock:
            return next(d for k, d in self.seen if k == kind)


@dataclass
class Station:
    server: MediaServer
    cache: AudioCache
    workdir: Path
    fallback_wav: Path
    mp3: bytes

    def live(self, name: str = "radio", data: bytes | None = None, seconds: float = 30.0, **kw: Any) -> LiveStream:
        return self.server.add_live(name, data if data is not None else self.mp3, seconds, **kw)

    def relay(
        self,
        url: str,
        events: Events,
        *,
        fallback: Callable[[], Any] | None = None,
        cache: AudioCache | None = None,
    ) -> LiveRelaySource:
        return LiveRelaySource(
            url,
            fallback=fallback or (lambda: open_file_source(self.fallback_wav)),
            stall_s=STALL_S,
            cache=cache or self.cache,
            on_event=events,
            rate=RATE,
            channels=2,
        )


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    mp3 = write_tone(tmp_path / "programme.mp3", STREAM_HZ, 30.0, 44100, 2, format="MP3").read_bytes()
    # The fallback is a different rate and channel count than the output: it is converted on the way.
    fallback = write_tone(tmp_path / "fallback.wav", FALLBACK_HZ, 1.0, 16000, 1)
    settings = SourcesConfig(allow_http_hosts=["127.0.0.1"], reconnect_min_s=0.2, reconnect_max_s=1.0)
    cache = AudioCache(tmp_path / "cache", settings)
    with MediaServer() as server:
        yield Station(server, cache, tmp_path, fallback, mp3)
    cache.close()


def relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("live-relay")]


def test_an_mp3_stream_is_decoded_at_the_output_rate_and_level(station: Station) -> None:
    station.live()
    events = Events()
    with station.relay(station.server.live_url("radio"), events) as src:
        assert isinstance(src, PcmSource)  # what the player plays
        assert (src.rate, src.channels, src.duration_s) == (RATE, 2, None)
        ear = Listener(src)
        assert ear.until(lambda e: e.count("stream") >= 40, within_s=15)  # two seconds of the programme

    stream = [h for h in ear.heard if h.kind == "stream"]
    assert all(abs(h.hz - STREAM_HZ) <= 20 for h in stream)
    assert np.median([h.dbfs for h in stream]) == pytest.approx(LEVEL_DBFS, abs=1.0)
    assert {h.kind for h in ear.heard} <= {"silence", "stream"}  # silence only while the buffer filled
    assert ear.first("stream").t < 5.0
    assert events.kinds == []
    left, right = np.concatenate(ear.blocks)[:, 0], np.concatenate(ear.blocks)[:, 1]
    assert np.allclose(left, right, atol=1e-3)


def test_an_ogg_opus_mono_stream_plays_on_both_channels_at_its_level(station: Station) -> None:
    opus = write_tone(
        station.workdir / "programme.opus", STREAM_HZ, 20.0, 48000, 1, format="OGG", subtype="OPUS"
    ).read_bytes()
    station.live("opus", opus, 19.2, content_type="audio/ogg", loop=False)
    events = Events()
    with station.relay(station.server.live_url("opus"), events) as src:
        ear = Listener(src)
        assert ear.until(lambda e: e.count("stream") >= 40, within_s=15)

    stream_blocks = [b for b, h in zip(ear.blocks, ear.heard, strict=True) if h.kind == "stream"]
    pcm = np.concatenate(stream_blocks)
    assert np.allclose(pcm[:, 0], pcm[:, 1])  # mono copied to both channels, not mixed down 3 dB
    assert np.median([h.dbfs for h in ear.heard if h.kind == "stream"]) == pytest.approx(LEVEL_DBFS, abs=1.0)
    assert events.kinds == []


def test_a_stalled_stream_fails_over_to_the_fallback_and_comes_back(station: Station) -> None:
    live = station.live()
    events = Events()
    with station.relay(station.server.live_url("radio"), events) as src:
        ear = Listener(src)
        assert ear.until(lambda e: e.count("stream") >= 30, within_s=15)

        live.stall()  # the station's encoder stops; the connection stays open and silent
        stalled_at = ear.now
        assert ear.until(lambda e: e.count("fallback", since=stalled_at) > 0, within_s=10)
        fallback_at = ear.first("fallback", since=stalled_at).t
        assert fallback_at - stalled_at <= STALL_S + 1.0
        assert wait_for(lambda: events.kinds == ["stall", "failover"], 5)  # delivered from their own thread
        assert "no data" in events.data("stall")["reason"] or "no audio" in events.data("stall")["reason"]

        # The fallback (1 s) repeats, with a pause, for as long as the stream is away.
        assert ear.until(lambda e: e.count("fallback", since=fallback_at + 1.5) > 0, within_s=5)
        between = [h.kind for h in ear.heard if fallback_at + 1.0 < h.t < fallback_at + 1.9]
        assert "silence" in between
        fallback = [h for h in ear.heard if h.kind == "fallback"]
        assert all(abs(h.hz - FALLBACK_HZ) <= 20 for h in fallback)
        # 16 kHz mono converted to 48 kHz stereo at the level it was recorded at.
        assert np.median([h.dbfs for h in fallback]) == pytest.approx(LEVEL_DBFS, abs=1.0)

        live.resume()
        resumed_at = ear.now
        assert ear.until(lambda e: e.count("stream", since=resumed_at) >= 20, within_s=15)
        assert wait_for(lambda: "resumed" in events.kinds, 5)

    assert events.kinds == ["stall", "failover", "resumed"]
    back_at = ear.first("stream", since=resumed_at).t
    last_before = ear.last("stream", before=stalled_at + STALL_S + 1.0).t + BLOCK / RATE
    assert events.data("resumed")["gap_s"] == pytest.approx(back_at - last_before, abs=0.06)
    assert src.failovers == 1 and src.gaps_s == [events.data("resumed")["gap_s"]]
    # The stream returned cleanly at a block boundary: no block mixes the two.
    assert ear.count("other") == 0
    assert live.connections >= 2  # it dialled again while the fallback played


def test_an_https_stream_is_verified_against_the_commune_ca(station: Station, tmp_path: Path) -> None:
    ca = pki.init_ca(tmp_path / "ca", commune="gia-ray")
    cert = pki.issue_broker(ca, "localhost", ips=["127.0.0.1"])
    with MediaServer(cert_file=cert.cert_path, key_file=cert.key_path) as tls:
        tls.add_live("radio", station.mp3, 30.0)
        trusted = AudioCache(tmp_path / "trusted", SourcesConfig(allow_hosts=["127.0.0.1"], ca_file=ca.cert_path))
        events = Events()
        with station.relay(tls.live_url("radio"), events, cache=trusted) as src:
            ear = Listener(src)
            assert ear.until(lambda e: e.count("stream") >= 20, within_s=15)
        assert events.kinds == []

        # Without the commune CA the certificate is not trusted: not one sample of it is played.
        untrusted = AudioCache(tmp_path / "untrusted", SourcesConfig(allow_hosts=["127.0.0.1"]))
        events = Events()
        with station.relay(tls.live_url("radio"), events, cache=untrusted) as src:
            ear = Listener(src)
            assert ear.until(lambda e: e.count("fallback") > 0, within_s=10)
            assert wait_for(lambda: "stall" in events.kinds, 5)
        assert ear.count("stream") == 0
        assert "certificate verify failed" in events.data("stall")["reason"]
        trusted.close()
        untrusted.close()


def test_a_clean_end_of_the_stream_ends_the_source(station: Station) -> None:
    short = write_tone(station.workdir / "short.mp3", STREAM_HZ, 3.0, 44100, 2, format="MP3").read_bytes()
    station.live("news", short, 3.0, loop=False)  # chunked; the final chunk ends the programme
    events = Events()
    src = station.relay(station.server.live_url("news"), events)
    ear = Listener(src)
    assert ear.until(lambda e: e.ended, within_s=15)

    assert src.read(BLOCK).shape == (0, 2)  # and stays ended
    assert src.state == "ended"
    assert wait_for(lambda: events.kinds == ["ended"], 5)
    # All three seconds of the programme were played, no more (the MP3 encoder's padding is trimmed).
    assert src.stream_frames / RATE == pytest.approx(3.0, abs=0.1)
    assert ear.count("fallback") == 0
    src.close()


def test_the_station_ending_the_programme_ends_the_source(station: Station) -> None:
    live = station.live()
    events = Events()
    with station.relay(station.server.live_url("radio"), events) as src:
        ear = Listener(src)
        assert ear.until(lambda e: e.count("stream") >= 20, within_s=15)
        live.end()
        ended_at = ear.now
        assert ear.until(lambda e: e.ended, within_s=10)
    assert ear.now - ended_at < 4.0  # what was buffered, then the end
    assert wait_for(lambda: events.kinds == ["ended"], 5)


def test_a_cut_connection_is_not_an_end(station: Station) -> None:
    live = station.live(framing="close")  # Icecast: no length, the end of the body is the close
    events = Events()
    with station.relay(station.server.live_url("radio"), events) as src:
        ear = Listener(src)
        assert ear.until(lambda e: e.count("stream") >= 20, within_s=15)
        live.drop()
        cut_at = ear.now
        assert wait_for(lambda: live.connections >= 2, 10)
        assert ear.until(lambda e: e.count("stream", since=cut_at + 2.0) >= 20, within_s=15)
        assert not ear.ended and src.state == "stream"
    assert "ended" not in events.kinds


def test_an_unreachable_stream_plays_the_fallback_and_close_is_prompt(station: Station) -> None:
    events = Events()
    src = station.relay(f"http://127.0.0.1:{free_port()}/live/radio", events)
    ear = Listener(src)
    assert ear.until(lambda e: e.count("fallback") > 0, within_s=10)
    assert ear.first("fallback").t <= STALL_S + 1.0
    assert wait_for(lambda: events.kinds == ["stall", "failover"], 5)
    assert "refused" in events.data("stall")["reason"].lower()

    started = time.monotonic()
    src.close()
    assert time.monotonic() - started < 3.0
    assert src.read(BLOCK).shape[0] == 0
    assert wait_for(lambda: relay_threads() == [], 10)


def test_a_stream_that_is_not_audio_is_a_stall_not_an_end(station: Station) -> None:
    page = b"<html><body>" + b"Radio is down for maintenance. " * 400 + b"</body></html>"
    station.server.add_file("/live/page", page, content_type="audio/mpeg")
    events = Events()
    with station.relay(station.server.url("/live/page"), events) as src:
        ear = Listener(src)
        assert ear.until(lambda e: e.count("fallback") > 0, within_s=10)
        assert not ear.ended
        assert wait_for(lambda: events.kinds[:2] == ["stall", "failover"], 5)
    assert ear.count("stream") == 0
    assert events.data("stall")["reason"] == "cannot open the stream: Invalid data found when processing input"


def test_a_404_is_reported_as_the_reason(station: Station) -> None:
    events = Events()
    with station.relay(station.server.url("/live/nothing"), events) as src:
        ear = Listener(src)
        assert ear.until(lambda e: e.count("fallback") > 0, within_s=10)
        assert wait_for(lambda: "stall" in events.kinds, 5)
    assert "HTTP 404" in events.data("stall")["reason"]


def test_a_fallback_that_cannot_be_opened_is_reported_and_silence_plays(station: Station) -> None:
    def broken() -> Any:
        return open_file_source(station.workdir / "no-such-file.wav")

    events = Events()
    with station.relay(f"http://127.0.0.1:{free_port()}/live/radio", events, fallback=broken) as src:
        ear = Listener(src)
        assert ear.until(lambda e: e.now > STALL_S + 1.0 and "failover" in events.kinds, within_s=10)
        assert wait_for(lambda: "fallback_failed" in events.kinds, 5)
    assert {h.kind for h in ear.heard} == {"silence"}
    assert "no-such-file.wav" in events.data("fallback_failed")["reason"]


def test_a_stream_on_a_host_not_allowed_is_refused_at_once(station: Station) -> None:
    events = Events()
    before = set(relay_threads())
    for url, reason in [
        ("http://radio.example.org/live", "host_not_allowed"),
        ("https://127.0.0.1/live", "host_not_allowed"),  # https is allow_hosts, empty here
        ("rtsp://127.0.0.1/live", "bad_url"),
    ]:
        with pytest.raises(SourceRejected) as err:
            station.relay(url, events)
        assert err.value.reason == reason
    with pytest.raises(ValueError, match="stall_s"):
        LiveRelaySource(
            station.server.live_url("radio"),
            fallback=lambda: open_file_source(station.fallback_wav),
            stall_s=0.0,
            cache=station.cache,
            on_event=events,
        )
    assert set(relay_threads()) <= before  # nothing was started
    assert station.server.requests == []
