"""Live relay of the commune station's stream, with failover (DESIGN.md §8, ``source.stream``).

:class:`LiveRelaySource` is a :class:`~drivers.audio.base.PcmSource` that the player reads like a
file. Behind it, three threads:

- the **network** thread dials the stream (HTTP or Icecast, MP3, Ogg/Opus, Ogg/Vorbis or AAC), reads
  its bytes with a read timeout of ``stall_s`` and, when the connection fails, dials again after a
  doubling wait (``reconnect_min_s`` .. ``reconnect_max_s`` of ``[broadcast.sources]``);
- per connection, a **decoder** thread: PyAV (FFmpeg's demuxers and decoders) reads the bytes the
  network thread hands it through a pipe and resamples them to the source's fixed rate;
- the **fallback** thread keeps about a second of the fallback (a cached file or rendered speech,
  from the ``fallback`` factory) decoded and ready, so failing over costs ``read()`` nothing.

Why PyAV: libsndfile (soundfile) needs a seekable file and cannot decode a network stream as it
arrives; PyAV's wheel carries FFmpeg, reads from any object with ``read()``, demuxes MP3, Ogg and
ADTS AAC as they arrive, and its ``AudioResampler`` converts the stream and the fallback to one rate.

What a listener hears:

1. the stream, after ``prebuffer_s`` of it has arrived (silence until then);
2. when no audio has arrived for ``stall_s`` (the server is silent, unreachable, answers an error, or
   sends what does not decode): ``on_event("stall")`` then ``on_event("failover")``, and the fallback
   from its beginning at the next block, **repeated** (with ``fallback_gap_s`` of silence between
   plays) for as long as the stream is away, while the stream is dialled again in the background;
3. when ``prebuffer_s`` of the stream has arrived again: ``on_event("resumed", {"gap_s": ...})`` and the
   stream from the next block; ``gap_s`` is the time between the last stream sample before the stall
   and the first one after, on the output clock;
4. a **clean end** of the stream (the server completes a response that has a length or chunked
   framing) ends the source: ``read()`` returns 0 frames and ``on_event("ended")``. A connection closed
   without such an end (an Icecast server whose source dropped) is a stall, not an end.

``read()`` never waits on the network: it returns the stream, the fallback or silence at once.
Events are delivered in order from a thread of their own, so a slow ``on_event`` (writing the outbox)
never delays the audio.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import numpy as np
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from drivers.audio.base import PcmSource
from edge.services.broadcast.cache import MAX_REDIRECTS, AudioCache, SourceRejected, network_reason

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

#: Bytes read from the network at a time.
CHUNK_BYTES = 16 * 1024

#: Content types and the FFmpeg demuxer for each; anything else is probed, and must turn out to be one.
STREAM_FORMATS = {
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mpeg3": "mp3",
    "audio/ogg": "ogg",
    "application/ogg": "ogg",
    "audio/opus": "ogg",
    "audio/vorbis": "ogg",
    "audio/aac": "aac",
    "audio/aacp": "aac",
    "audio/x-aac": "aac",
}

#: Seconds of fallback kept decoded ahead of need.
FALLBACK_AHEAD_S = 1.0

#: Wait before the fallback factory is tried again after it failed.
FALLBACK_RETRY_S = 5.0

_REDIRECTS = (301, 302, 303, 307, 308)
_LAYOUTS = {1: "mono", 2: "stereo"}


def fit_channels(block: np.ndarray, channels: int) -> np.ndarray:
    """``block`` (frames, n) with ``channels`` columns: mono copied to each, several averaged to mono.

    Done here rather than by FFmpeg's resampler, whose mono-to-stereo matrix lowers the level by 3 dB:
    the fallback must come out as loud as it was recorded.
    """
    have = block.shape[1]
    if have == channels:
        return block
    if channels == 1:
        return block.mean(axis=1, keepdims=True, dtype=np.float32)
    if have == 1:
        return np.repeat(block, channels, axis=1)
    return block[:, [i % have for i in range(channels)]]


class _Pipe:
    """Bytes from the network thread to the decoder: ``read()`` blocks until there are some or the end."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._closed = False
        self.received = 0
        self.undecodable = False
        """Set by the decoder when what came is not audio it can play (then the end is no clean end)."""

    def write(self, data: bytes) -> None:
        with self._cond:
            self._buf += data
            self.received += len(data)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def read(self, n: int = -1) -> bytes:
        with self._cond:
            while not self._buf and not self._closed:
                self._cond.wait()
            if n < 0:
                n = len(self._buf)
            data = bytes(self._buf[:n])
            del self._buf[:n]
            return data


class _PcmQueue:
    """Decoded stream audio waiting to be played: at most ``cap`` frames (the oldest are dropped)."""

    def __init__(self, channels: int, cap: int) -> None:
        self._blocks: deque[np.ndarray] = deque()
        self._channels = channels
        self._cap = cap
        self._lock = threading.Lock()
        self.frames = 0
        self.last_push = time.monotonic()
        """When stream audio last arrived (the stall clock)."""
        self.min_gen = 0
        self.dropped = 0

    def push(self, block: np.ndarray, gen: int) -> None:
        with self._lock:
            if gen < self.min_gen:
                return  # audio from a connection already given up for stalled
            self._blocks.append(block)
            self.frames += block.shape[0]
            self.last_push = time.monotonic()
            while self.frames > self._cap:
                # The player is not keeping up (not started yet, or a clock slower than the station's):
                # a live relay stays live, so the oldest audio goes.
                extra = self.frames - self._cap
                head = self._blocks[0]
                if head.shape[0] <= extra:
                    self._blocks.popleft()
                    self.frames -= head.shape[0]
                    self.dropped += head.shape[0]
                else:
                    self._blocks[0] = head[extra:]
                    self.frames -= extra
                    self.dropped += extra

    def pop(self, frames: int) -> np.ndarray:
        out: list[np.ndarray] = []
        want = frames
        with self._lock:
            while want > 0 and self._blocks:
                head = self._blocks[0]
                if head.shape[0] <= want:
                    out.append(self._blocks.popleft())
                    want -= head.shape[0]
                else:
                    out.append(head[:want])
                    self._blocks[0] = head[want:]
                    want = 0
            self.frames -= frames - want
        if not out:
            return np.zeros((0, self._channels), dtype=np.float32)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def clear(self, min_gen: int) -> None:
        """Drop everything, and from now on what connections older than ``min_gen`` decode."""
        with self._lock:
            self._blocks.clear()
            self.frames = 0
            self.min_gen = min_gen


class _Resampler:
    """Float blocks of one rate and channel count to the output's, through PyAV's resampler."""

    def __init__(self, rate: int, channels: int) -> None:
        self.rate = rate
        self.channels = channels
        self._rs: av.AudioResampler | None = None
        self._from: int | None = None

    def convert(self, block: np.ndarray, rate: int) -> np.ndarray:
        import av

        block = fit_channels(np.asarray(block, dtype=np.float32), self.channels)
        if rate == self.rate:
            return block
        if self._rs is None or self._from != rate:
            self._rs = av.AudioResampler(format="flt", layout=_LAYOUTS[self.channels], rate=self.rate)
            self._from = rate
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(block).reshape(1, -1), format="flt", layout=_LAYOUTS[self.channels]
        )
        frame.rate = rate
        return self._collect(self._rs.resample(frame))

    def flush(self) -> np.ndarray:
        """What the resampler still holds (at the end of a fallback play)."""
        if self._rs is None:
            return np.zeros((0, self.channels), dtype=np.float32)
        out = self._collect(self._rs.resample(None))
        self._rs = None
        return out

    def _collect(self, frames: list[Any]) -> np.ndarray:
        arrays = [f.to_ndarray().reshape(-1, self.channels) for f in frames]
        if not arrays:
            return np.zeros((0, self.channels), dtype=np.float32)
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class LiveRelaySource:
    """A live HTTP/Icecast stream as a :class:`PcmSource`, with a fallback while it is away.

    ``url`` must pass ``cache.check_url`` (raises :exc:`SourceRejected` at once otherwise); the
    connection uses the cache's TLS rules and timeouts. Rate and channels are fixed at start
    (``rate``, ``channels``): the stream and the fallback are both converted to them. Events (see the
    module docstring): ``stall``, ``failover``, ``fallback_failed``, ``resumed``, ``ended``.
    """

    def __init__(
        self,
        url: str,
        *,
        fallback: Callable[[], PcmSource],
        stall_s: float,
        cache: AudioCache,
        on_event: Callable[[str, dict[str, Any]], None],
        rate: int = 48000,
        channels: int = 2,
        prebuffer_s: float = 1.0,
        fallback_gap_s: float = 1.0,
    ) -> None:
        cache.check_url(url)
        if not (isinstance(stall_s, int | float) and math.isfinite(stall_s) and 0.5 <= stall_s <= 600):
            raise ValueError(f"stall_s must be between 0.5 and 600 seconds, got {stall_s!r}")
        if channels not in _LAYOUTS:
            raise ValueError(f"channels must be 1 or 2, got {channels!r}")
        if not 8000 <= rate <= 192000:
            raise ValueError(f"rate must be 8000 to 192000, got {rate!r}")
        self.url = url
        self.rate = rate
        self.channels = channels
        self.duration_s: float | None = None
        self.stall_s = float(stall_s)
        self._cache = cache
        self._on_event = on_event
        self._fallback_factory = fallback
        self._prebuffer = max(1, int(prebuffer_s * rate))
        self._fallback_gap = int(fallback_gap_s * rate)

        self._closing = threading.Event()
        self._ended = threading.Event()  # the stream ended cleanly and every frame of it is queued
        self._lock = threading.Lock()  # connection state shared by the threads
        self._read_lock = threading.Lock()  # read() and close()
        self._queue = _PcmQueue(channels, cap=2 * self._prebuffer + rate)
        self._gen = 0
        self._resp: Any = None
        self._aborted = False  # the current connection was shut down on purpose
        self._problem: str | None = None  # why no audio is arriving, when known

        # Consumer state (under _read_lock).
        self._mode = "waiting"  # waiting (prebuffering) | stream | fallback | ended
        self._out_frames = 0
        self._last_stream_out = 0  # output frame just after the last stream frame played
        self.failovers = 0
        """Times the fallback was switched to."""
        self.gaps_s: list[float] = []
        """Each gap in the stream that was bridged, in seconds (as in the ``resumed`` events)."""
        self.stream_frames = 0
        """Frames of the stream played (the rest was fallback or silence)."""

        # Fallback: decoded ahead by its own thread.
        self._fb_cond = threading.Condition()
        self._fb_blocks: deque[np.ndarray] = deque()
        self._fb_frames = 0
        self._fb_reset = False
        self._fb_failed_reported = False

        self._events: deque[tuple[str, dict[str, Any]] | None] = deque()
        self._events_cond = threading.Condition()

        self._threads = [
            threading.Thread(target=self._run_events, name="live-relay-events", daemon=True),
            threading.Thread(target=self._run_network, name="live-relay-net", daemon=True),
            threading.Thread(target=self._run_fallback, name="live-relay-fallback", daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def threads(self) -> list[threading.Thread]:
        """The relay's own threads while it runs (events, network, fallback; the network thread owns the
        decoder it starts for each connection); none once :meth:`close` began. The network thread also
        ends at a clean end of the stream."""
        return [] if self._closing.is_set() else list(self._threads)

    # -- PcmSource ---------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """What is being played: ``waiting`` (for the stream), ``stream``, ``fallback`` or ``ended``."""
        return self._mode

    def read(self, frames: int) -> np.ndarray:
        """``frames`` frames of stream, fallback or silence; fewer only at a clean end (0: ended)."""
        if frames <= 0:
            raise ValueError(f"frames must be positive, got {frames!r}")
        with self._read_lock:
            if self._closing.is_set() or self._mode == "ended":
                return self._silence(0)
            block = self._next(frames)
            self._out_frames += block.shape[0]
            return block

    def close(self) -> None:
        """Stop every thread and drop the connection. Idempotent; returns within about a second."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._abort_connection()
        with self._fb_cond:
            self._fb_cond.notify_all()
        with self._events_cond:
            self._events.append(None)
            self._events_cond.notify_all()
        deadline = time.monotonic() + 1.0
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._read_lock:
            self._mode = "ended"

    def __enter__(self) -> LiveRelaySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what read() plays -------------------------------------------------------------------------

    def _next(self, frames: int) -> np.ndarray:
        now = time.monotonic()
        ended = self._ended.is_set()
        stale = not ended and now - self._queue.last_push > self.stall_s
        if self._mode in ("waiting", "stream") and stale:
            self._failover(now)
        if self._mode == "fallback":
            if ended and self._queue.frames == 0:
                return self._end()
            if self._queue.frames >= self._prebuffer or ended:
                self._resume()
            else:
                return self._fallback_block(frames)
        if self._mode == "waiting":
            if self._queue.frames >= self._prebuffer or ended:
                self._mode = "stream"
            else:
                return self._silence(frames)
        block = self._queue.pop(frames)
        if block.shape[0]:
            self.stream_frames += block.shape[0]
            self._last_stream_out = self._out_frames + block.shape[0]
        if block.shape[0] < frames:
            if ended:
                return block if block.shape[0] else self._end()
            # Underrun: the station's clock is slower than the sound card's, or the network jittered.
            # Build the buffer up again rather than play a stutter of tiny pieces.
            self._mode = "waiting"
            block = np.concatenate([block, self._silence(frames - block.shape[0])])
        return block

    def _failover(self, now: float) -> None:
        with self._lock:
            gen = self._gen
            problem = self._problem or f"no audio for {now - self._queue.last_push:.1f} s"
        # Give the current connection up: what it still has to decode is from before the stall, and
        # whatever it is sending now is not audio. Its late frames are dropped by generation, and
        # _open() closes it if it was only being made.
        self._queue.clear(min_gen=gen + 1)
        self._abort_connection()
        silent_s = round(now - self._queue.last_push, 3)
        at_s = round(self._out_frames / self.rate, 3)
        self.failovers += 1
        self._mode = "fallback"
        log.warning("live stream %s stalled (%s); playing the fallback", self.url, problem)
        self._emit("stall", {"url": self.url, "reason": problem, "silent_s": silent_s, "at_s": at_s})
        self._emit("failover", {"url": self.url, "reason": problem, "failovers": self.failovers, "at_s": at_s})

    def _resume(self) -> None:
        gap_s = round((self._out_frames - self._last_stream_out) / self.rate, 3)
        self.gaps_s.append(gap_s)
        self._mode = "stream"
        with self._fb_cond:  # the next failover starts the fallback from its beginning again
            self._fb_reset = True
            self._fb_blocks.clear()
            self._fb_frames = 0
            self._fb_cond.notify_all()
        log.info("live stream %s is back after %.1f s", self.url, gap_s)
        self._emit("resumed", {"url": self.url, "gap_s": gap_s, "at_s": round(self._out_frames / self.rate, 3)})

    def _end(self) -> np.ndarray:
        self._mode = "ended"
        log.info("live stream %s ended", self.url)
        self._emit(
            "ended",
            {"url": self.url, "played_s": round(self._out_frames / self.rate, 3), "failovers": self.failovers},
        )
        return self._silence(0)

    def _fallback_block(self, frames: int) -> np.ndarray:
        out: list[np.ndarray] = []
        want = frames
        with self._fb_cond:
            while want > 0 and self._fb_blocks:
                head = self._fb_blocks[0]
                if head.shape[0] <= want:
                    out.append(self._fb_blocks.popleft())
                    want -= head.shape[0]
                else:
                    out.append(head[:want])
                    self._fb_blocks[0] = head[want:]
                    want = 0
            self._fb_frames -= frames - want
            self._fb_cond.notify_all()
        if want:  # the fallback is not ready (or failed): silence rather than wait
            out.append(self._silence(want))
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _silence(self, frames: int) -> np.ndarray:
        return np.zeros((frames, self.channels), dtype=np.float32)

    # -- events ------------------------------------------------------------------------------------

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        with self._events_cond:
            self._events.append((kind, data))
            self._events_cond.notify_all()

    def _run_events(self) -> None:
        while True:
            with self._events_cond:
                while not self._events:
                    self._events_cond.wait()
                item = self._events.popleft()
            if item is None:
                return
            try:
                self._on_event(*item)
            except Exception:
                log.exception("live relay event handler failed on %s", item[0])

    # -- network -----------------------------------------------------------------------------------

    def _run_network(self) -> None:
        settings = self._cache.settings
        delay = settings.reconnect_min_s
        while not self._closing.is_set():
            with self._lock:
                self._gen += 1
                gen = self._gen
            got_audio_before = self._queue.last_push
            outcome = self._connect_once(gen)
            if outcome == "ended" or self._closing.is_set():
                return
            if self._queue.last_push != got_audio_before:
                delay = settings.reconnect_min_s  # it worked for a while: the next try is soon
            if self._closing.wait(delay):
                return
            delay = min(delay * 2, settings.reconnect_max_s)

    def _connect_once(self, gen: int) -> str:
        """One connection: ``ended`` (clean end, all decoded) or ``lost``; ``self._problem`` says why."""
        resp = self._open(gen)
        if resp is None:
            return "lost"
        ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        framed = bool(resp.chunked) or resp.headers.get("Content-Length") is not None
        pipe = _Pipe()
        decoder = threading.Thread(
            target=self._run_decoder, args=(pipe, STREAM_FORMATS.get(ctype), gen), name="live-relay-decode", daemon=True
        )
        decoder.start()
        clean = False
        try:
            while not self._closing.is_set():
                try:
                    chunk = resp.read1(CHUNK_BYTES, decode_content=False)
                except ReadTimeoutError:
                    self._set_problem(f"no data for {self.stall_s:g} s")
                    break
                except (Urllib3Error, OSError, ValueError) as exc:  # ValueError: read on a shut-down response
                    with self._lock:
                        ours = self._aborted  # given up on purpose: the reason is already known
                    if not ours:
                        self._set_problem(f"connection lost: {exc}")
                    break
                if not chunk:
                    clean = framed
                    if not framed:
                        self._set_problem("the server closed the stream")
                    break
                pipe.write(chunk)
        finally:
            with self._lock:
                self._resp = None
            pipe.close()
            resp.close()
            decoder.join(timeout=5.0)
        if clean and not pipe.undecodable and not self._closing.is_set():
            self._ended.set()
            return "ended"
        return "lost"

    def _open(self, gen: int) -> Any:
        """GET the stream (following allowed redirects); None with ``self._problem`` set when it fails."""
        url = self.url
        timeout = self._cache.timeout(read_s=self.stall_s)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self._cache.pool.request(
                    "GET",
                    url,
                    preload_content=False,
                    redirect=False,
                    decode_content=False,
                    timeout=timeout,
                    retries=False,
                )
            except Urllib3Error as exc:
                self._set_problem(f"unreachable: {network_reason(exc)}")
                return None
            if resp.status in _REDIRECTS:
                target = urljoin(url, resp.headers.get("Location", ""))
                resp.close()
                try:
                    self._cache.check_url(target)
                except SourceRejected as exc:
                    self._set_problem(f"redirected where it may not go: {exc}")
                    return None
                url = target
                continue
            if resp.status != 200:
                self._set_problem(f"HTTP {resp.status} {resp.reason or ''}".rstrip())
                resp.close()
                return None
            with self._lock:
                # A failover while this connection was being made gave it up already (see _failover).
                given_up = self._closing.is_set() or gen < self._queue.min_gen
                if not given_up:
                    self._resp = resp
                    self._aborted = False
            if given_up:
                resp.close()
                return None
            return resp
        self._set_problem("too many redirects")
        return None

    def _abort_connection(self) -> None:
        with self._lock:
            resp = self._resp
            self._aborted = True
        if resp is not None:
            try:
                resp.shutdown()  # wakes the network thread out of its read at once
            except (OSError, AttributeError) as exc:
                log.debug("shutting the stream connection down: %s", exc)

    def _set_problem(self, problem: str | None) -> None:
        with self._lock:
            if problem is not None and problem != self._problem:
                log.info("live stream %s: %s", self.url, problem)
            self._problem = problem

    # -- decoding ----------------------------------------------------------------------------------

    def _run_decoder(self, pipe: _Pipe, fmt: str | None, gen: int) -> None:
        import av

        # A known format needs no probing; probing reads ahead, and on a live stream ahead is later.
        options = {"probesize": "32" if fmt else "65536", "analyzeduration": "0"}
        try:
            container = av.open(pipe, mode="r", format=fmt, options=options)
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            # A connection that brought no byte at all has its reason already (a timeout, a cut).
            if not self._closing.is_set() and pipe.received:
                self._decode_failed(pipe, f"cannot open the stream: {_av_reason(exc)}")
            return
        try:
            if fmt is None and container.format.name.split(",")[0] not in ("mp3", "ogg", "aac"):
                self._decode_failed(pipe, f"not an MP3, Ogg or AAC stream ({container.format.name})")
                return
            if not container.streams.audio:
                self._decode_failed(pipe, "no audio in the stream")
                return
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout=None, rate=self.rate)
            first = True
            for packet in container.demux(stream):
                if self._closing.is_set():
                    return
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError:
                    continue  # one damaged frame: the next one resynchronises
                for frame in decoded:
                    for out in resampler.resample(frame):
                        if first:
                            first = False
                            self._set_problem(None)  # audio flows: an old reason no longer holds
                        self._push(out, gen)
            for out in resampler.resample(None):
                self._push(out, gen)
        except (av.error.FFmpegError, ValueError) as exc:
            if not self._closing.is_set():
                self._decode_failed(pipe, f"the stream stopped decoding: {_av_reason(exc)}")
        finally:
            container.close()

    def _push(self, frame: Any, gen: int) -> None:
        pcm = frame.to_ndarray().reshape(-1, frame.layout.nb_channels)
        block = fit_channels(pcm, self.channels)
        np.clip(block, -1.0, 1.0, out=block)
        self._queue.push(block, gen)

    def _decode_failed(self, pipe: _Pipe, problem: str) -> None:
        pipe.undecodable = True
        self._set_problem(problem)
        self._abort_connection()

    # -- fallback ----------------------------------------------------------------------------------

    def _run_fallback(self) -> None:
        src: PcmSource | None = None
        resampler = _Resampler(self.rate, self.channels)
        block_frames = max(1, self.rate // 20)
        ahead = int(FALLBACK_AHEAD_S * self.rate)
        retry_at = 0.0
        played = 0
        try:
            while not self._closing.is_set():
                with self._fb_cond:
                    if self._fb_reset:
                        self._fb_reset = False
                        if src is not None:
                            _close_quietly(src)
                            src = None
                        resampler.flush()
                    if self._fb_frames >= ahead:
                        self._fb_cond.wait(0.2)
                        continue
                if src is None:
                    if time.monotonic() < retry_at:
                        self._closing.wait(0.2)
                        continue
                    try:
                        src = self._fallback_factory()
                        played = 0
                    except Exception as exc:
                        retry_at = time.monotonic() + FALLBACK_RETRY_S
                        self._fallback_failed(exc)
                        continue
                try:
                    raw = src.read(block_frames)
                except Exception as exc:
                    _close_quietly(src)
                    src = None
                    retry_at = time.monotonic() + FALLBACK_RETRY_S
                    self._fallback_failed(exc)
                    continue
                pcm = resampler.convert(raw, src.rate) if raw.shape[0] else resampler.flush()
                played += raw.shape[0]
                if raw.shape[0] < block_frames:  # one play of the fallback is over: a pause, then again
                    _close_quietly(src)
                    src = None
                    if played == 0:  # opening it again at once would spin
                        retry_at = time.monotonic() + FALLBACK_RETRY_S
                        self._fallback_failed(ValueError("the fallback has no audio"))
                        continue
                    self._fb_failed_reported = False
                    pcm = np.concatenate([pcm, resampler.flush(), self._silence(self._fallback_gap)])
                if pcm.shape[0]:
                    np.clip(pcm, -1.0, 1.0, out=pcm)
                    with self._fb_cond:
                        if not self._fb_reset:
                            self._fb_blocks.append(pcm)
                            self._fb_frames += pcm.shape[0]
        finally:
            if src is not None:
                _close_quietly(src)

    def _fallback_failed(self, exc: BaseException) -> None:
        log.warning("live relay fallback cannot be played: %s", exc)
        if not self._fb_failed_reported:
            self._fb_failed_reported = True
            self._emit("fallback_failed", {"url": self.url, "reason": str(exc) or type(exc).__name__})


def _av_reason(exc: BaseException) -> str:
    """FFmpeg's words for an error, without the errno and the '<none>' file name PyAV adds."""
    return str(getattr(exc, "strerror", None) or exc)


def _close_quietly(src: PcmSource) -> None:
    try:
        src.close()
    except Exception as exc:
        log.debug("closing the fallback: %s", exc)
