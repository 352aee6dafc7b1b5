"""The loudspeaker benchmark, run by ``scripts/bench_broadcast``. Not a test: it prints figures.

What a commune feels when it sends a warning, next to a baseline measured in the same run:

- baseline: a bare sounddevice ``OutputStream`` opened in this process and its first block written,
  nothing else (no daemon, no command, nothing playing before): what PortAudio and ALSA alone cost;
- ours: a signed ``broadcast.play`` emergency published to a private Mosquitto → the first sample of
  the emergency at the sound card, while a normal item (an MP3) is playing, with a relay profile whose
  warm-up is 0. The device is the real daemon process (``edge run``), the same as on a Pi: its relays
  on gpiozero ``MockFactory`` pins (``GPIOZERO_PIN_FACTORY=mock``, gpiozero's own switch) and its sound
  through the real sounddevice → PortAudio → ALSA path into ALSA's ``file`` plugin, whose samples the
  simulated sound card of this process (:class:`sim.audio.SimSoundCard`) takes at the card's pace;
  the emergency file is fetched once from a media server on loopback (later runs find it in the
  cache by its sha256, as a repeated warning does);
- the daemon's CPU (% of one core) while it plays the MP3, and its CPU and RSS when idle and connected.

Every time is ``time.monotonic()`` (one clock for all processes on the machine): the command is "sent"
just before it is signed and published; a sample is "at the card" when the simulated card's DAC takes
it from the FIFO that ALSA's ``file`` plugin writes (:attr:`sim.audio.PlayedItem.started_at`), for the
baseline and for ours alike. For ours this includes what the cut item still had in that FIFO (at
most 43 ms of it, played out while the daemon switches over), as a real card plays out its buffer.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge import keys
from edge.config import BrokerAddress
from edge.sync.link import LinkSettings
from sim.audio import SimSoundCard, tone, write_tone
from sim.bench.common import (
    Target,
    add_common_arguments,
    cpu_seconds,
    idle_usage,
    line,
    memory_kb,
    report_targets,
    run_in_workdir,
    say,
    stats_ms,
)
from sim.broker import MosquittoBroker
from sim.harness import EdgeProcess, daemon_link, run_edge, wait_for, write_device_config
from sim.media_server import MediaServer

COMMUNE = "gia-ray"
DEVICE = "loa-01"
TARGET_EMERGENCY_P95_MS = 200.0
TARGET_MP3_CPU_PCT = 5.0
#: The normal item the emergencies cut: long enough for every run (it resumes after each).
NORMAL_S = 120.0
EMERGENCY_S = 0.3
#: How long the normal item plays again after each emergency before the next one is sent.
BETWEEN_S = 0.4
WAIT_S = 30.0


def wait_items(card: SimSoundCard, count: int, what: str, interval: float = 0.001) -> list[Any]:
    """The card's items once it has begun ``count`` of them (polled every ``interval``)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        items = card.items
        if len(items) >= count:
            return items
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: the simulated card played nothing new within {WAIT_S:.0f} s")
        time.sleep(interval)


# -- baseline --------------------------------------------------------------------------------------


def bench_baseline(card: SimSoundCard, runs: int) -> dict[str, Any]:
    """Open a bare OutputStream and write 20 ms blocks as a player does; when the card has the first."""
    import sounddevice as sd

    block = np.rint(tone(1000, 0.02, rms_dbfs=-12.0) * 32767).astype(np.int16)
    at_card, written = [], []
    for _ in range(runs):
        before = len(card.items)
        t0 = time.monotonic()
        with sd.OutputStream(samplerate=48000, channels=1, dtype="int16") as stream:
            stream.write(block)
            written.append(time.monotonic() - t0)
            # ALSA's file plugin passes samples on a period at a time: keep writing, as a player does.
            for _ in range(round(EMERGENCY_S / 0.02)):
                stream.write(block)
        at_card.append(wait_items(card, before + 1, "baseline")[before].started_at - t0)
        while card.items[before].ended_at is None:  # closed; the card takes the last samples
            time.sleep(0.005)
    return {"at_card": stats_ms(at_card), "written": stats_ms(written)}


# -- the daemon ------------------------------------------------------------------------------------


def bench_profile(work: Path) -> Path:
    """The shipped GPIO relay profile with no warm-up (and no idle switch-off during the runs)."""
    text = (Path(__file__).resolve().parents[2] / "firmware_config" / "relays" / "gpio-4ch-rpi.yaml").read_text()
    path = work / "relays-no-warm-up.yaml"
    path.write_text(text.replace("warm_up_s: 2", "warm_up_s: 0").replace("idle_off_s: 10", "idle_off_s: 600"))
    return path


class Loudspeaker:
    """``edge run`` for a loudspeaker on MockFactory pins and this process's simulated card."""

    def __init__(self, work: Path, broker: MosquittoBroker, card: SimSoundCard, media: MediaServer, key: Any) -> None:
        state = work / "state"
        shutil.rmtree(state, ignore_errors=True)  # a fresh device every run, even in a kept --workdir
        config = write_device_config(
            work / "loa-01.toml", broker.url, device=DEVICE, role="loudspeaker", state_dir=state
        )
        self.db = state / "events.db"
        self.env = {
            "EDGE_CONFIG": str(config),
            "EDGE_RELAYS__PROFILE": str(bench_profile(work)),
            "EDGE_COMMANDS__TRUSTED_KEYS": json.dumps({keys.key_id(key): keys.public_key_b64(key)}),
            "EDGE_BROADCAST__SOURCES__ALLOW_HTTP_HOSTS": json.dumps([f"{media.host}:{media.port}"]),
            "EDGE_BROADCAST__RESUME_REWIND_S": "0",
            "EDGE_HEALTH__INTERVAL_S": "3600",
            "GPIOZERO_PIN_FACTORY": "mock",
            **card.env,
        }
        self.process = EdgeProcess(["run"], work / "daemon.log", self.env)

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def start(self) -> Loudspeaker:
        self.process.start()
        if not wait_for(lambda: daemon_link(self.db, self.pid) == "up" or not self.process.running, 60):
            raise RuntimeError("the loudspeaker daemon did not connect to the broker")
        if not self.process.running:
            raise RuntimeError("the loudspeaker daemon exited at start")
        return self

    def events(self) -> list[dict[str, Any]]:
        listed = json.loads(run_edge(["events", "--type", "broadcast", "--json", "--limit", "100000"], self.env).stdout)
        return [e["data"] for e in reversed(listed)]


def serve(media: MediaServer, path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "url": media.add_file(f"/media/{path.name}", data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }


def play_args(broadcast_id: str, priority: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"broadcast_id": broadcast_id, "priority": priority, "zones": ["all"], "source": source}


def measure(
    args: argparse.Namespace,
    work: Path,
    figures: dict[str, Any],
    broker: MosquittoBroker,
    card: SimSoundCard,
    media: MediaServer,
    sender: Any,
    key: Any,
    stack: contextlib.ExitStack,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Every figure but the targets, into ``figures``; the daemon is stopped by ``stack``."""
    say()
    say("baseline (this process, nothing else playing)")
    base = figures["baseline"] = bench_baseline(card, args.runs)
    line(
        "bare OutputStream -> first sample",
        f"p50 {base['at_card']['p50_ms']:.1f} / p95 {base['at_card']['p95_ms']:.1f} ms",
        f"write returned after p50 {base['written']['p50_ms']:.1f} ms",
    )

    normal = serve(media, write_tone(work / "chuong-trinh.mp3", hz=440, seconds=NORMAL_S, rms_dbfs=-16.0))
    siren = serve(media, write_tone(work / "canh-bao.wav", hz=1500, seconds=EMERGENCY_S, rms_dbfs=-12.0))
    daemon = Loudspeaker(work, broker, card, media, key)
    stack.callback(daemon.process.stop)
    daemon.start()
    sender.start()
    say()
    say(f"the loudspeaker daemon (edge run, pid {daemon.pid}, relay warm-up 0 s), connected")
    idle = figures["idle"] = idle_usage(daemon.pid, args.idle_seconds)
    line(
        f"idle over {idle['seconds']:.0f} s",
        f"{idle['cpu_pct']:.2f} % CPU, {idle['rss_mb']:.1f} MB RSS",
        f"peak RSS {idle['peak_rss_mb']:.1f} MB",
    )

    # The normal item: an MP3 programme, decoded as it plays. Its CPU is measured first.
    before = len(card.items)
    sender.send(DEVICE, "broadcast.play", play_args("chuong-trinh", "normal", normal), key)
    wait_items(card, before + 1, "the normal item", interval=0.01)
    time.sleep(1.0)  # past the start (open, first fetch of the cache)
    t0, c0 = time.monotonic(), cpu_seconds(daemon.pid)
    time.sleep(args.mp3_seconds)
    t1, c1 = time.monotonic(), cpu_seconds(daemon.pid)
    mp3 = figures["mp3"] = {"seconds": t1 - t0, "cpu_pct": 100 * (c1 - c0) / (t1 - t0)}
    mp3["rss_mb"] = memory_kb(daemon.pid)["VmRSS"] / 1024
    line("playing an MP3 (48 kHz mono)", f"{mp3['cpu_pct']:.2f} % of one core", f"RSS {mp3['rss_mb']:.1f} MB")

    took: list[float] = []
    sent_at: dict[str, float] = {}
    for n in range(1, args.runs + 1):
        playing = card.items[-1]
        if playing.ended_at is not None:
            raise RuntimeError("the normal item is not playing")
        before = len(card.items)
        sent_at[f"canh-bao-{n}"] = time.time()
        t0 = time.monotonic()
        sender.send(DEVICE, "broadcast.play", play_args(f"canh-bao-{n}", "emergency", siren), key)
        took.append(wait_items(card, before + 1, f"emergency {n}")[before].started_at - t0)
        # The normal item resumes after the emergency; let it play a little before the next one.
        wait_items(card, before + 2, f"the normal item after emergency {n}", interval=0.01)
        time.sleep(BETWEEN_S)
    ours = figures["emergency"] = stats_ms(took)
    events = daemon.events()
    # Where the time goes: the daemon commits "started" just before it opens the stream.
    started = [
        datetime.fromisoformat(e["started_at"]).timestamp() - sent_at[e["broadcast_id"]]
        for e in events
        if e["state"] == "started" and e["broadcast_id"] in sent_at
    ]
    committed = figures["emergency_started_committed"] = stats_ms(started)
    line(
        "emergency sent -> first sample",
        f"p50 {ours['p50_ms']:.1f} / p95 {ours['p95_ms']:.1f} ms",
        f"max {ours['max_ms']:.1f}; {ours['p95_ms'] - base['at_card']['p95_ms']:+.1f} ms p95 over baseline",
    )
    line(
        "  of which sent -> 'started' in db",
        f"p50 {committed['p50_ms']:.0f} / p95 {committed['p95_ms']:.0f} ms",
        "(wall clock, to the ms) then the stream opens",
    )
    states = [(e["broadcast_id"].split("-")[0], e["state"]) for e in events]
    figures["events"] = {
        "emergencies_finished": states.count(("canh", "finished")),
        "normal_preempted": states.count(("chuong", "preempted")),
        "failed": [e for e in events if e["state"] == "failed"],
    }
    line(
        "proof of play",
        f"{figures['events']['emergencies_finished']} emergencies finished",
        f"normal item preempted {figures['events']['normal_preempted']} times, "
        f"{len(figures['events']['failed'])} failed",
    )
    figures["rss_after_mb"] = memory_kb(daemon.pid)["VmRSS"] / 1024
    line("RSS after the runs", f"{figures['rss_after_mb']:.1f} MB", "the audio path loaded (numpy, PortAudio)")
    return mp3, ours


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from edge.commands.sender import CommandSender

    figures: dict[str, Any] = {"runs": args.runs}
    say(f"commune-edge loudspeaker benchmark: {args.runs} emergencies, work dir {work}")
    key = keys.generate_signing_key(work / "server-signing.key", force=True)
    with contextlib.ExitStack() as stack:
        broker = MosquittoBroker(work / "broker").start()
        stack.callback(broker.stop)
        card = stack.enter_context(SimSoundCard(work / "card"))
        card.activate()  # the baseline plays from this process; the daemon gets card.env
        media = stack.enter_context(MediaServer())
        sender = CommandSender(
            LinkSettings(BrokerAddress.parse(broker.url), "bench-server", clean_start=True, session_expiry_s=0),
            root="vn",
            commune=COMMUNE,
        )
        stack.callback(sender.stop)
        mp3, ours = measure(args, work, figures, broker, card, media, sender, key, stack)
    if figures["events"]["emergencies_finished"] != args.runs:
        raise RuntimeError(f"only {figures['events']['emergencies_finished']} of {args.runs} emergencies finished")
    figures["targets"] = report_targets(
        [
            Target(
                f"emergency p95 <= {TARGET_EMERGENCY_P95_MS:.0f} ms",
                ours["p95_ms"] <= TARGET_EMERGENCY_P95_MS,
                f"{ours['p95_ms']:.1f} ms",
            ),
            Target(
                f"MP3 playing CPU <= {TARGET_MP3_CPU_PCT:.0f} % of a core",
                mp3["cpu_pct"] <= TARGET_MP3_CPU_PCT,
                f"{mp3['cpu_pct']:.2f} %",
            ),
        ]
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=None, help="emergencies (and baseline streams); default 60")
    parser.add_argument("--mp3-seconds", type=float, default=None, help="seconds of MP3 play measured (default 20)")
    parser.add_argument("--idle-seconds", type=float, default=None, help="seconds of idle measured (default 20)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    args.runs = args.runs or (10 if args.quick else 60)
    args.mp3_seconds = args.mp3_seconds or (5.0 if args.quick else 20.0)
    args.idle_seconds = args.idle_seconds or (5.0 if args.quick else 20.0)
    return run_in_workdir(args, run, "commune-edge-bench-broadcast-")


if __name__ == "__main__":
    sys.exit(main())
