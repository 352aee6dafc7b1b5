"""The counter camera benchmark, run by ``scripts/bench_camera``. Not a test: it prints figures.

One source for everything: a minute of the simulated counter (640x480, 5 fps, the officer seated,
people walking past) served as an MJPEG stream over HTTP by ffmpeg on loopback, as an IP camera
serves it. On it, in one run on this machine:

- **baseline**: a bare ``cv2.VideoCapture`` read loop in a process of its own (decode only, nothing
  kept): what reading the camera costs whatever is done with the pictures;
- **analytics per frame**: the SceneAnalyzer (grey, shrink, presence and tamper) on frames already
  decoded, CPU time per frame in this process;
- **the counter daemon**: ``edge run`` with one ``[[camera]]`` on the stream (reader thread, analysis at
  5 fps, events, and the evidence ring buffer's JPEG compression) against a private Mosquitto: its CPU as
  a share of one core, decode included, and its resident memory;
- **face blur per written frame**: the CenterFace detector and the blur, on scene frames with faces
  (when the face model is installed).

CPU is read from ``/proc/<pid>/stat`` (user + system) over the same window for the baseline and the
daemon, after a warm-up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sim.bench.common import (
    Target,
    add_common_arguments,
    cpu_seconds,
    line,
    memory_kb,
    report_targets,
    run_in_workdir,
    say,
    stats_ms,
)

TARGET_CPU_PCT = 10.0
WIDTH, HEIGHT, FPS = 640, 480, 5.0

_BARE_LOOP = """
import sys, cv2
cap = cv2.VideoCapture(sys.argv[1], cv2.CAP_FFMPEG)
n = 0
while True:
    ok, _ = cap.read()
    if not ok:
        break
    n += 1
"""


def _window(pid: int, warm_s: float, seconds: float) -> dict[str, float]:
    """CPU share of one core and memory of a running process over ``seconds``, after ``warm_s``."""
    time.sleep(warm_s)
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    time.sleep(seconds)
    t1, c1 = time.monotonic(), cpu_seconds(pid)
    mem = memory_kb(pid)
    return {
        "seconds": t1 - t0,
        "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
        "rss_mb": mem["VmRSS"] / 1024,
        "peak_rss_mb": mem["VmHWM"] / 1024,
    }


def bench_baseline(url: str, warm_s: float, seconds: float) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, "-c", _BARE_LOOP, url], stderr=subprocess.DEVNULL)
    try:
        return _window(proc.pid, warm_s, seconds)
    finally:
        proc.kill()
        proc.wait()


def bench_analytics(video: Path, frames: int) -> dict[str, Any]:
    import cv2

    from drivers.camera import Frame, load_camera_profile
    from edge.services.camera.analytics import AnalyticsSettings, SceneAnalyzer

    cap = cv2.VideoCapture(str(video))
    images: list[Any] = []
    while len(images) < frames:
        ok, image = cap.read()
        if not ok:
            break
        images.append(image)
    cap.release()
    analyzer = SceneAnalyzer(load_camera_profile("sim-counter-640x480"), AnalyticsSettings())
    took = []
    for i, image in enumerate(images):
        t = i / FPS
        t0 = time.thread_time()
        analyzer.feed(Frame(i + 1, t, t, image))
        took.append(time.thread_time() - t0)
    steady = took[40:] or took  # after the reference is learned
    out: dict[str, Any] = stats_ms(steady)
    out["pct_of_core_at_5fps"] = 100 * FPS * sum(steady) / len(steady)
    return out


def bench_daemon(work: Path, url: str, warm_s: float, seconds: float) -> dict[str, Any]:
    from sim.broker import MosquittoBroker
    from sim.harness import EdgeProcess, write_device_config

    broker = MosquittoBroker(work / "broker").start()
    try:
        extra = f'[[camera]]\nname = "q1-cam"\nsource = "{url}"\nprofile = "sim-counter-640x480"\n'
        config = write_device_config(work / "counter.toml", broker.url, state_dir=work / "state", extra=extra)
        daemon = EdgeProcess(["run", "--config", str(config)], work / "daemon.log").start()
        try:
            assert daemon.proc is not None
            figures = _window(daemon.proc.pid, warm_s, seconds)
            if not daemon.running:
                raise RuntimeError(f"edge run ended; see {work / 'daemon.log'}")
            return figures
        finally:
            daemon.stop()
    finally:
        broker.stop()


def bench_blur(video: Path, samples: int) -> dict[str, Any] | None:
    import cv2

    from drivers.camera import load_camera_profile
    from edge.services.camera.blur import FaceBlurrer, FaceModelError, FaceModelMissing, PrivacyMask

    try:
        blurrer = FaceBlurrer()
    except (FaceModelMissing, FaceModelError) as exc:
        say(f"  face blur not measured: {exc}")
        return None
    mask = PrivacyMask.from_profile(load_camera_profile("sim-counter-640x480"))
    cap = cv2.VideoCapture(str(video))
    for _ in range(int(5 * FPS)):  # from 5 s on: the officer is seated, people walk past
        cap.read()
    took: list[float] = []
    faces: list[int] = []
    while len(took) < samples:
        ok, image = cap.read()
        if not ok:
            break
        t0 = time.perf_counter()
        _, n = blurrer.blur(image, mask)
        took.append(time.perf_counter() - t0)
        faces.append(n)
    cap.release()
    out: dict[str, Any] = stats_ms(took)
    out["faces_per_frame"] = sum(faces) / max(1, len(faces))
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from sim.camera_scene import CounterScene, SceneServer

    seconds = args.seconds
    say(f"commune-edge camera benchmark: {WIDTH}x{HEIGHT} MJPEG at {FPS:g} fps over HTTP, {seconds:g} s windows")
    say(f"work dir {work}")
    scene = CounterScene([(3, "seat")], duration_s=60, walkers_every_s=6)
    video = scene.write(work / "counter.avi")
    figures: dict[str, Any] = {"seconds": seconds}
    with SceneServer(video, log_path=work / "ffmpeg.log") as server:
        say()
        say("reading the stream")
        base = figures["baseline"] = bench_baseline(server.url, 2.0, seconds)
        line("baseline: bare VideoCapture loop", f"{base['cpu_pct']:.1f} % of one core", f"RSS {base['rss_mb']:.0f} MB")
        server.stop()  # ffmpeg's HTTP server takes one client: a fresh one for the daemon
        server.start()
        daemon = figures["daemon"] = bench_daemon(work, server.url, args.warm, seconds)
        line(
            "counter daemon, one camera",
            f"{daemon['cpu_pct']:.1f} % of one core",
            f"{daemon['cpu_pct'] - base['cpu_pct']:+.1f} over the baseline; RSS {daemon['rss_mb']:.0f} MB "
            f"(peak {daemon['peak_rss_mb']:.0f})",
        )
    say()
    say("per frame")
    ana = figures["analytics"] = bench_analytics(video, 100 if args.quick else 300)
    line(
        "analytics (decoded frame in)",
        f"p50 {ana['p50_ms']:.2f} / p95 {ana['p95_ms']:.2f} ms",
        f"{ana['pct_of_core_at_5fps']:.2f} % of one core at 5 fps",
    )
    blur = figures["blur"] = bench_blur(video, 10 if args.quick else 40)
    if blur is not None:
        line(
            "face blur per written frame",
            f"p50 {blur['p50_ms']:.0f} / p95 {blur['p95_ms']:.0f} ms",
            f"{blur['faces_per_frame']:.1f} faces a frame",
        )
    figures["targets"] = report_targets(
        [
            Target(
                f"daemon CPU <= {TARGET_CPU_PCT:.0f} % of a core",
                daemon["cpu_pct"] <= TARGET_CPU_PCT,
                f"{daemon['cpu_pct']:.1f} % (baseline decode {base['cpu_pct']:.1f} %)",
            )
        ]
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="measuring window (default 30, quick 8)")
    parser.add_argument("--warm", type=float, default=10.0, help="seconds the daemon runs before measuring")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (8.0 if args.quick else 30.0)
    return run_in_workdir(args, run, "commune-edge-bench-camera-", failures=(TimeoutError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
