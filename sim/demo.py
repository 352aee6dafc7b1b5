"""The demo: a simulated counter and a simulated loudspeaker syncing through a private Mosquitto to
``edge collect``.

Run by ``scripts/demo``. It starts a broker on a free port, the collector, and two simulated devices
(``edge sim``): a counter with its rating panel and a camera over the counter (a simulated scene served
over HTTP by ffmpeg on loopback), which also emits health and test events, and a loudspeaker on
simulated relays and sound card. Playing the commune server, it signs two commands with its own key
(which the loudspeaker trusts) and sends them with ``edge command send``: a spoken announcement, then
an emergency siren (a file on a media server on loopback) that cuts the announcement; the announcement
resumes after it. While the siren plays it kills the broker with SIGKILL and restarts it, to show that
nothing is lost. Meanwhile, at the counter, the officer sits down, opens a rating window, a citizen
presses the lowest button, and a hand covers the camera for a moment. It ends with what the
loudspeaker did, what the collector stored for both devices (the loudspeaker's proof of play and the
camera's presence, tamper and evidence events included), where the blurred clip of the low rating is
on the counter, and how many committed events are missing at the collector.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from edge import keys
from edge.cli.sim import send_request
from sim.audio import tone
from sim.broker import MosquittoBroker
from sim.counter import format_evidence, format_presence, format_tamper
from sim.harness import EdgeProcess, collector_rows, run_edge, wait_for, write_device_config
from sim.loudspeaker import format_broadcast
from sim.media_server import MediaServer

COMMUNE = "gia-ray"
COUNTER = "counter-01"
LOUDSPEAKER = "loa-01"
ANNOUNCEMENT = "thong-bao-tiep-cong-dan"
EMERGENCY = "canh-bao-lu"
#: What the commune reads out: a notice of a citizen dialogue session (numbers, times, abbreviations).
ANNOUNCEMENT_TEXT = (
    "Thông báo: UBND phường Gia Ray tổ chức tiếp công dân lúc 8h30 ngày 25/1 tại hội trường KP 3. "
    "Mời bà con đến dự đông đủ."
)
#: The states the demo waits for at the collector, in the order they are committed.
EXPECTED = [
    (ANNOUNCEMENT, "scheduled"),
    (ANNOUNCEMENT, "started"),
    (EMERGENCY, "scheduled"),
    (ANNOUNCEMENT, "preempted"),
    (EMERGENCY, "started"),
    (EMERGENCY, "finished"),
    (ANNOUNCEMENT, "resumed"),
    (ANNOUNCEMENT, "finished"),
]
WAIT_S = 60.0

#: The counter's camera, as an installer writes it: edge sim points its source at the simulated scene.
#: Clips of 3 s either side of the moment keep the demo short (the default is 10 s).
CAMERA = "q1-cam"
CAMERA_TOML = f"""
[[camera]]
name = "{CAMERA}"
source = "rtsp://10.0.0.5/stream1"
profile = "sim-counter-640x480"

[camera.evidence]
pre_s = 3.0
post_s = 3.0
ring_s = 4.0
"""
CLIP_POST_S = 3.0
COUNTER_NAME = "q1"
OFFICER = "nv-07"
#: gpio-4btn-rpi's lowest button: score 1, "Không hài lòng".
LOWEST_BUTTON = 4
#: The camera's events the demo waits for at the counter, as (type, what).
CAMERA_STORY = [("presence", "present"), ("tamper", "covered start"), ("tamper", "covered end")]

Say = Callable[[str], None]


def write_siren(path: Path, seconds: float = 3.0) -> Path:
    """A two-tone siren (the file a commune's emergency would carry), as WAV."""
    import numpy as np
    import soundfile

    half = 0.5
    parts = [tone(660 if i % 2 == 0 else 880, half, rms_dbfs=-14.0) for i in range(round(seconds / half))]
    soundfile.write(str(path), np.concatenate(parts), 48000, subtype="PCM_16")
    return path


def counter_story(sock: Path, say: Say, scene_record: Path) -> dict[str, Any]:
    """At the counter, over its simulator's control socket: the officer sits down and opens a rating
    window, a citizen presses the lowest button, a hand covers the camera for a moment. Returns the
    rating once both clips (the low rating's and the covered lens's) are written. What the simulated
    scene did, at its own times, is written to ``scene_record`` (JSON: ``timeline``, ``duration_s``), so
    that the scene can be drawn again and the clips compared with it."""

    def ask(request: dict[str, Any]) -> dict[str, Any]:
        reply = send_request(sock, request, timeout=WAIT_S + 10)
        if not reply.get("ok"):
            raise RuntimeError(f"the counter simulator: {reply.get('error')}")
        return reply

    def seen(what: str, text: str) -> bool:
        outputs = ask({"cmd": "outputs", "last": 2000})["outputs"]
        for o in outputs:
            if o["what"] == what and (o["state"] if what == "presence" else f"{o['kind']} {o['state']}") == text:
                return True
        return False

    def wait_seen(what: str, text: str) -> None:
        if not wait_for(lambda: seen(what, text), WAIT_S):
            raise RuntimeError(f"the counter's camera did not report {what} {text}")

    timeline: list[tuple[float, str, dict[str, Any]]] = []

    def act(action: str) -> None:
        timeline.append((ask({"cmd": action})["t"], action, {}))

    ask({"cmd": "assign", "officer": OFFICER})
    act("seat")
    say(f"counter     officer {OFFICER} sits down at counter {COUNTER_NAME}, under camera {CAMERA}")
    wait_seen("presence", "present")
    ask({"cmd": "done"})  # the officer's button opens a rating window
    ask({"cmd": "press", "button": LOWEST_BUTTON})  # returns once the rating is committed
    rating: dict[str, Any] = ask({"cmd": "ratings", "limit": 1})["ratings"][0]
    say(
        f"counter     a citizen presses button {LOWEST_BUTTON} ({rating['text']}, score {rating['score']}): "
        f"rating seq {rating['seq']}, id {rating['id']}"
    )
    time.sleep(CLIP_POST_S + 0.5)  # the clip's seconds after the press, before the lens is covered
    act("cover")
    say(f"counter     a hand covers camera {CAMERA}")
    wait_seen("tamper", "covered start")
    act("uncover")
    say(f"counter     the hand is gone from camera {CAMERA}")
    wait_seen("tamper", "covered end")

    def written() -> set[str]:
        return {e["reason"] for e in ask({"cmd": "evidence"})["evidence"]}

    if not wait_for(lambda: {"low_rating", "tamper"} <= written(), WAIT_S):
        raise RuntimeError(f"the counter wrote no clip for {sorted({'low_rating', 'tamper'} - written())}")
    scene_s = ask({"cmd": "status"})["cameras"][CAMERA]["scene"]["t"]
    scene_record.write_text(json.dumps({"timeline": timeline, "duration_s": scene_s + 1}))
    return rating


def print_camera(db: Path, state_dir: Path, rating: dict[str, Any] | None) -> bool:
    """The counter camera's events as the collector stored them, and the low rating's clip on the device.
    True if the story is all there: the officer present, one covered incident, the clip linked to the
    rating, and a file on the device whose sha256 is the one the event carries."""
    query = (
        "SELECT seq, type, data FROM events WHERE device = ? AND type IN ('presence', 'tamper', 'evidence') "
        "ORDER BY seq"
    )
    events = [(seq, etype, json.loads(data)) for seq, etype, data in collector_rows(db, query, (COUNTER,))]
    rating_seqs = {
        r[0]: r[1]
        for r in collector_rows(db, "SELECT id, seq FROM events WHERE device = ? AND type = 'rating'", (COUNTER,))
    }
    print(f"  the counter's camera from {COMMUNE}/{COUNTER}:")
    for seq, etype, data in events:
        record = {"seq": seq, **data}
        if etype == "presence":
            line = format_presence(record)
        elif etype == "tamper":
            line = format_tamper(record)
        else:
            record["rating_seq"] = rating_seqs.get(data.get("rating_id"))
            line = format_evidence(record, file=False)  # the low rating's file is shown below
        print(f"    {etype:<9} {line}")
    story = [(etype, d["state"]) for _, etype, d in events if etype == "presence"]
    story += [("tamper", f"{d['kind']} {d['state']}") for _, etype, d in events if etype == "tamper"]
    incidents = {d["incident"] for _, etype, d in events if etype == "tamper"}
    clip = next(
        (d for _, etype, d in events if etype == "evidence" and rating and d.get("rating_id") == rating["id"]), None
    )
    ok = all(step in story for step in CAMERA_STORY) and len(incidents) == 1
    if clip is None:
        print("  no clip linked to the low rating reached the collector")
        return False
    path = state_dir / "media" / clip["file"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    print(f"  the low rating's clip, on {COMMUNE}/{COUNTER}: {path}")
    print(f"    sha256 {digest or '(no file)'}" + (" (as in its evidence event)" if digest == clip["sha256"] else ""))
    print(
        f"    {clip['frames']} frames {clip['width']}x{clip['height']} {clip['codec']}, {clip['from'][11:23]} to "
        f"{clip['to'][11:23]}, blurred_faces {clip['blurred_faces']}, privacy mask applied: {clip['masked']}"
    )
    return ok and digest == clip["sha256"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0, help="the least time the devices run")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="commune-edge-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    broker = MosquittoBroker(work / "broker").start()
    print(f"broker      mosquitto on {broker.url} (private, generated config)")
    fast = {"EDGE_HEALTH__INTERVAL_S": "3", "EDGE_SYNC__ACK_TIMEOUT_S": "3"}
    counter_state = work / "state"
    counter_cfg = write_device_config(work / "edge.toml", broker.url, extra=CAMERA_TOML, state_dir=counter_state)
    counter_env = {"EDGE_CONFIG": str(counter_cfg), "EDGE_RATING__COUNTER": COUNTER_NAME, **fast}
    counter_sock = work / "counter-01.sock"

    # The commune server's side: its signing key (the loudspeaker trusts it) and its media server.
    key_path = work / "server-signing.key"
    key = keys.generate_signing_key(key_path)
    media = MediaServer()
    siren = write_siren(work / "canh-bao-lu.wav")
    siren_bytes = siren.read_bytes()
    siren_source = {
        "url": media.add_file("/media/canh-bao-lu.wav", siren_bytes),
        "sha256": hashlib.sha256(siren_bytes).hexdigest(),
        "bytes": len(siren_bytes),
    }
    ls_state = work / "loa-state"
    ls_cfg = write_device_config(
        work / "loa-01.toml", broker.url, device=LOUDSPEAKER, role="loudspeaker", state_dir=ls_state
    )
    ls_sock = work / "loa-01.sock"
    ls_env = {
        "EDGE_CONFIG": str(ls_cfg),
        "EDGE_COMMANDS__TRUSTED_KEYS": json.dumps({keys.key_id(key): keys.public_key_b64(key)}),
        "EDGE_BROADCAST__SOURCES__ALLOW_HTTP_HOSTS": json.dumps([f"{media.host}:{media.port}"]),
        **fast,
    }

    db = work / "collector.db"
    collector = EdgeProcess(
        ["collect", "--broker", broker.url, "--db", str(db), "--commune", COMMUNE, "--summary-interval", "0"],
        work / "collector.log",
    ).start()
    counter = EdgeProcess(
        ["sim", "--control", str(counter_sock), "--interval", "0.25"], work / "device.log", counter_env
    ).start()
    loudspeaker = EdgeProcess(["sim", "--control", str(ls_sock)], work / "loa-01.log", ls_env).start()
    print(
        f"device      {COMMUNE}/{COUNTER} (edge sim, a counter: GPIO panel on MockFactory, camera {CAMERA} on a "
        f"simulated scene served by ffmpeg), config {counter_cfg}"
    )
    print(f"device      {COMMUNE}/{LOUDSPEAKER} (edge sim, a loudspeaker on MockFactory relays), config {ls_cfg}")
    print(f"collector   edge collect -> {db}")
    print(f"server      signing key {keys.key_id(key)} ({key_path}); media on {media.url('/media/')}")

    printing = threading.Lock()

    def say(text: str) -> None:
        with printing:  # the counter's story runs beside the loudspeaker's
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    counter_done: dict[str, Any] = {}

    def run_counter() -> None:
        try:
            if not wait_for(lambda: counter_sock.exists() or not counter.running, WAIT_S) or not counter.running:
                raise RuntimeError(f"the counter simulator did not start; see {work / 'device.log'}")
            counter_done["rating"] = counter_story(counter_sock, say, work / "counter-scene.json")
        except (RuntimeError, OSError) as exc:
            counter_done["error"] = str(exc)

    at_counter = threading.Thread(target=run_counter, name="demo-counter", daemon=True)

    def ask(request: dict[str, Any]) -> dict[str, Any]:
        reply = send_request(ls_sock, request, timeout=WAIT_S + 10)
        if not reply.get("ok"):
            raise RuntimeError(f"the loudspeaker simulator: {reply.get('error')}")
        return reply

    def send(name: str, play: dict[str, Any]) -> None:
        server = ["--key", str(key_path), "--broker", broker.url, "--commune", COMMUNE]
        done = run_edge(
            ["command", "send", LOUDSPEAKER, name, "--args", json.dumps(play, ensure_ascii=False), *server],
            check=False,
        )
        # Its last line is the final ack: "<ts>  succeeded  {result}".
        final = (done.stdout.strip().splitlines() or [done.stderr.strip()])[-1]
        state = final.split()[1] if done.returncode == 0 else final
        say(f"server      {name} {play['broadcast_id']} ({play['priority']}), signed, edge command send: {state}")
        if done.returncode != 0:
            raise RuntimeError(f"{name} {play['broadcast_id']} was not accepted: {final}")

    committed: dict[str, set[str]] = {COUNTER: set(), LOUDSPEAKER: set()}
    story_ok = False
    try:
        at_counter.start()
        if not wait_for(lambda: ls_sock.exists() or not loudspeaker.running, WAIT_S) or not loudspeaker.running:
            raise RuntimeError(f"the loudspeaker simulator did not start; see {work / 'loa-01.log'}")
        wait_for(lambda: ask({"cmd": "status"})["link"] == "up", WAIT_S)
        send(
            "broadcast.play",
            {
                "broadcast_id": ANNOUNCEMENT,
                "priority": "normal",
                "zones": ["all"],
                "source": {"text": ANNOUNCEMENT_TEXT},
                "on_preempt": "resume",
            },
        )
        ask({"cmd": "wait", "broadcast_id": ANNOUNCEMENT, "state": "started", "timeout": WAIT_S})
        time.sleep(2.0)  # a few words in
        send(
            "broadcast.play",
            {"broadcast_id": EMERGENCY, "priority": "emergency", "zones": ["all"], "source": siren_source},
        )
        ask({"cmd": "wait", "broadcast_id": EMERGENCY, "state": "started", "timeout": WAIT_S})
        say("chaos       broker killed with SIGKILL and restarted (while the siren plays)")
        broker.kill()
        time.sleep(1.0)
        broker.start()
        ask({"cmd": "wait", "broadcast_id": ANNOUNCEMENT, "state": "finished", "timeout": WAIT_S})
        at_counter.join(3 * WAIT_S)
        if "rating" not in counter_done:
            raise RuntimeError(counter_done.get("error", "the counter's story did not end"))
        # The clips are the last the counter commits: delivered before it stops, like everything else.
        evidence = "SELECT COUNT(*) FROM events WHERE device = ? AND type = 'evidence'"
        wait_for(lambda: collector_rows(db, evidence, (COUNTER,))[0][0] >= 2, WAIT_S)
        time.sleep(max(0.0, args.seconds - (time.monotonic() - began)))
        ls_stdout = loudspeaker.stop()
        counter.stop()
        for device, env in ((COUNTER, counter_env), (LOUDSPEAKER, ls_env)):
            events = json.loads(run_edge(["events", "--json", "--limit", "100000"], env).stdout)
            committed[device] |= {e["id"] for e in events}
        everything = committed[COUNTER] | committed[LOUDSPEAKER]
        wait_for(lambda: everything <= {r[0] for r in collector_rows(db)}, timeout=30)
        story_ok = True
    except (RuntimeError, OSError) as exc:
        print(f"demo        stopped: {exc}")
        ls_stdout = ""
    finally:
        counter.stop()
        ls_stdout = loudspeaker.stop() or ls_stdout
        summary = collector.stop().strip().splitlines()
        broker.stop()
        media.close()

    print()
    print(f"the loudspeaker printed (edge sim, {LOUDSPEAKER}):")
    for line in ls_stdout.splitlines():
        if " relay " in line or " broadcast " in line:
            print(f"  {line}")

    ids = [r[0] for r in collector_rows(db, "SELECT id FROM events")]
    missing = (committed[COUNTER] | committed[LOUDSPEAKER]) - set(ids)
    print()
    print("delivered to the collector:")
    for device in (COUNTER, LOUDSPEAKER):
        print(f"  {COMMUNE}/{device}")
        query = "SELECT type, COUNT(*), MIN(seq), MAX(seq) FROM events WHERE device = ? GROUP BY type"
        for etype, n, lo, hi in collector_rows(db, query, (device,)):
            print(f"    {etype:<9} {n:>5} events  (seq {lo}..{hi})")
    print(f"  proof of play from {COMMUNE}/{LOUDSPEAKER}:")
    query = "SELECT seq, data FROM events WHERE device = ? AND type = 'broadcast' ORDER BY seq"
    proof = [(seq, json.loads(data)) for seq, data in collector_rows(db, query, (LOUDSPEAKER,))]
    for seq, data in proof:
        print(f"    seq {seq:>4}  {format_broadcast(data)}")
    camera_ok = print_camera(db, counter_state, counter_done.get("rating"))
    if summary:
        print(f"collector summary: {summary[-1]}")
    played = [(d["broadcast_id"], d["state"]) for _, d in proof]
    for device in (COUNTER, LOUDSPEAKER):
        held = {r[0] for r in collector_rows(db, "SELECT id FROM events WHERE device = ?", (device,))}
        print(
            f"{COMMUNE}/{device}: committed on the device: {len(committed[device])}; "
            f"stored at the collector: {len(held)}; missing: {len(committed[device] - held)}"
        )
    total = len(committed[COUNTER]) + len(committed[LOUDSPEAKER])
    print(f"committed on the devices: {total}; stored at the collector: {len(ids)}; missing: {len(missing)}")
    if played != EXPECTED:
        print(f"the proof of play is not the expected story: {played}")
    if not camera_ok:
        print(f"the counter's camera did not tell the expected story: {CAMERA_STORY} and a clip of the low rating")
    report_ok = print_report(db, work)
    print(f"files kept in {work} ({time.monotonic() - began:.0f} s)")
    return 0 if story_ok and camera_ok and report_ok and not missing and played == EXPECTED else 1


def print_report(db: Path, work: Path) -> bool:
    """What the commune does at the end of the month: verify every device's chain, write the report."""
    from edge.server.db import VIETNAM

    verify = run_edge(["verify", "--db", str(db)], check=False)
    print()
    print("edge verify (every device's hash chain of ratings and proof of play):")
    for text in verify.stdout.splitlines():
        print(f"  {text}")
    month = datetime.now(VIETNAM).strftime("%Y-%m")  # this month, in Vietnam's time
    html = work / f"bao-cao-{month}.html"
    report = run_edge(["report", "--db", str(db), "--month", month, "--html", str(html)], check=False)
    print(f"edge report --month {month}:")
    for text in report.stdout.splitlines():
        if not text.startswith("wrote "):
            print(f"  {text}")
    if report.returncode != 0 or not html.is_file():
        print(f"  the report was not written: {report.stderr.strip()}")
        return False
    print(f"the month's report (HTML, A4, open it in a browser): {html}")
    return verify.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
