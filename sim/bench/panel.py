"""The rating panel benchmark, run by ``scripts/bench_panel``. Not a test: it prints figures.

Two paths a citizen feels, each next to a baseline measured in the same run on the same machine:

- GPIO: press → rating committed → thank-you LED lit. Ours is the real rating service with the real
  outbox (SQLite WAL, ``synchronous=FULL``) and the real GPIO panel driver on gpiozero's
  ``MockFactory``; the baseline is a bare gpiozero ``Button`` whose ``when_pressed`` lights the LED
  (no store, no service): what the pin library alone costs.
- Serial: press → ``ACK`` back at the MCU. Ours is the real rating service and serial panel driver
  talking to the simulated MCU over a pseudo-terminal; the baseline is a bare pyserial loop that
  parses each ``BTN`` frame and answers ``ACK`` at once (no store): what the pty round trip costs.

Times are taken with ``time.perf_counter()`` in this process: the press is the moment the simulated
switch closes (or the simulated MCU is told of the press), the LED the moment its mock pin changes,
the ACK the moment the simulated MCU has parsed it.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial
import yaml

from drivers.panel.protocol import MCU_FRAMES, Ack, Btn, FrameParser
from drivers.profiles import load_profile
from drivers.resources import Resources
from edge.commands.registry import CommandRegistry
from edge.config import EdgeConfig, parse_config
from edge.services.rating import RatingService
from edge.store import Outbox
from sim.bench.common import Target, add_common_arguments, line, report_targets, run_in_workdir, say, stats_ms
from sim.counter import watched_mock_factory
from sim.gpio_panel import SimGpioPanel
from sim.serial_mcu import SerialMcu

TARGET_GPIO_LED_P99_MS = 20.0
TARGET_SERIAL_ACK_P99_MS = 30.0
WAIT_S = 10.0


def counter_config(work: Path, profile: Path | str, port: str | None = None) -> EdgeConfig:
    """A counter that counts every press (always mode, no cooldown, no burst rule) and stays quiet."""
    panel: dict[str, Any] = {"profile": str(profile)}
    if port:
        panel["port"] = port
    return parse_config(
        {
            "device": {"id": "counter-01", "commune": "gia-ray", "roles": ["counter"]},
            "mqtt": {"broker": "mqtt://127.0.0.1:1"},
            "store": {"state_dir": str(work)},
            "panel": panel,
            "rating": {
                "counter": "q1",
                "mode": "always",
                "cooldown_s": 0,
                "burst_presses": 50,
                "burst_window_s": 0.001,
                "feedback": {"speak": False, "beep_ms": 0},
            },
        }
    )


def write_profile(work: Path, name: str, **changes: Any) -> Path:
    data = load_profile(name).model_dump(mode="json", exclude_none=True)
    data.update(changes)
    path = work / f"bench-{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


class Stamps:
    """Time stamps of events another thread reports, waited for one at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._stamps: dict[Any, float] = {}

    def mark(self, key: Any) -> None:
        now = time.perf_counter()
        with self._cond:
            self._stamps.setdefault(key, now)
            self._cond.notify_all()

    def wait(self, key: Any, timeout: float = WAIT_S) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._stamps, timeout):
                raise TimeoutError(f"no {key!r} within {timeout} s")
            return self._stamps.pop(key)

    def clear(self) -> None:
        with self._cond:
            self._stamps.clear()


# -- GPIO ------------------------------------------------------------------------------------------


def bench_gpio_baseline(samples: int) -> dict[str, float]:
    from gpiozero import LED, Button

    stamps = Stamps()
    factory = watched_mock_factory(lambda bcm, on: stamps.mark(("led", on)))
    button, led = Button(17, pin_factory=factory), LED(5, pin_factory=factory)
    button.when_pressed = led.on
    switch = factory.pin(17)
    took = []
    try:
        for _ in range(samples):
            t0 = time.perf_counter()
            switch.drive_low()
            took.append(stamps.wait(("led", True)) - t0)
            switch.drive_high()
            led.off()
            stamps.wait(("led", False))
    finally:
        button.close()
        led.close()
    return stats_ms(took)


def bench_gpio_service(work: Path, samples: int) -> dict[str, Any]:
    profile = write_profile(work, "gpio-4btn-rpi", thanks={"blinks": 1, "on_ms": 10, "off_ms": 10})
    config = counter_config(work / "gpio", profile)
    led_pins = {b.led.number: n for n, b in enumerate(load_profile(profile).buttons, start=1) if b.led}  # type: ignore[attr-defined]
    stamps = Stamps()
    factory = watched_mock_factory(lambda bcm, on: stamps.mark(("led", led_pins.get(bcm), on)))
    outbox = Outbox(config.db_path)
    service = RatingService(config, outbox, CommandRegistry(), Resources(), pin_factory=factory)
    service.add_observer(lambda kind, d: stamps.mark(("commit", d["button"])) if kind == "rating" else None)
    service.start()
    commit, led = [], []
    try:
        wait_for(lambda: service.panel is not None and service.panel.connected)
        assert service.panel is not None
        citizen = SimGpioPanel(service.profile, factory)  # type: ignore[arg-type]
        for i in range(samples):
            button = i % 4 + 1
            stamps.clear()
            t0 = time.perf_counter()
            citizen.press(button)
            commit.append(stamps.wait(("commit", button)) - t0)
            led.append(stamps.wait(("led", button, True)) - t0)
            stamps.wait(("led", button, False))  # the short thank-you blink is over
    finally:
        service.stop()
        outbox.close()
    return {"commit": stats_ms(commit), "led": stats_ms(led)}


# -- serial ----------------------------------------------------------------------------------------


def bench_serial_baseline(work: Path, samples: int) -> dict[str, float]:
    """pyserial reads BTN frames off the pty and answers ACK at once: no store, no service."""
    took = []
    with SerialMcu(repeat_ms=5000, link=work / "ttyBASE") as mcu:
        stop = threading.Event()

        def host() -> None:
            parser = FrameParser(MCU_FRAMES)
            with serial.Serial(mcu.path, timeout=0.05) as port:
                while not stop.is_set():
                    for frame in parser.feed(port.read(port.in_waiting or 1)):
                        if isinstance(frame, Btn):
                            port.write(Ack(frame.mseq).encode())

        thread = threading.Thread(target=host, daemon=True)
        thread.start()
        try:
            for i in range(samples):
                t0 = time.perf_counter()
                mcu.press(i % 4 + 1)
                if not mcu.wait_acked(i + 1, WAIT_S):
                    raise TimeoutError("the baseline host did not ACK")
                took.append(time.perf_counter() - t0)
        finally:
            stop.set()
            thread.join(2)
    return stats_ms(took)


def bench_serial_service(work: Path, samples: int) -> dict[str, Any]:
    profile = write_profile(work, "serial-4btn", mcu_config={"hb_ms": 1000, "repeat_ms": 5000})
    took = []
    with SerialMcu(repeat_ms=5000, link=work / "ttyPANEL") as mcu:
        config = counter_config(work / "serial", profile, str(work / "ttyPANEL"))
        outbox = Outbox(config.db_path)
        service = RatingService(config, outbox, CommandRegistry(), Resources())
        service.start()
        try:
            wait_for(lambda: service.panel is not None and service.panel.connected)
            for i in range(samples):
                t0 = time.perf_counter()
                mcu.press(i % 4 + 1)
                if not mcu.wait_acked(i + 1, WAIT_S):
                    raise TimeoutError("the rating service did not ACK")
                took.append(time.perf_counter() - t0)
            ratings = len(outbox.list_events(type="rating", limit=samples + 10))
        finally:
            service.stop()
            outbox.close()
    return {"ack": stats_ms(took), "ratings": ratings}


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the panel did not come up")
        time.sleep(0.01)


# -- main ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    n = args.samples
    figures: dict[str, Any] = {"samples": n}
    say(f"commune-edge panel benchmark: {n} presses per figure, work dir {work}")
    say()
    say("GPIO (gpiozero MockFactory pins)")
    base = figures["gpio_baseline"] = bench_gpio_baseline(n)
    line("baseline: Button -> LED, no store", f"p50 {base['p50_ms']:.3f} / p99 {base['p99_ms']:.3f} ms")
    ours = figures["gpio"] = bench_gpio_service(work, n)
    c, led = ours["commit"], ours["led"]
    line("press -> rating committed", f"p50 {c['p50_ms']:.2f} / p99 {c['p99_ms']:.2f} ms", f"max {c['max_ms']:.2f}")
    line(
        "press -> commit -> thank-you LED",
        f"p50 {led['p50_ms']:.2f} / p99 {led['p99_ms']:.2f} ms",
        f"max {led['max_ms']:.2f}; {led['p99_ms'] - base['p99_ms']:+.2f} ms p99 over baseline",
    )

    say()
    say("serial (simulated MCU on a pseudo-terminal, pyserial)")
    sbase = figures["serial_baseline"] = bench_serial_baseline(work, n)
    line("baseline: BTN -> ACK, no store", f"p50 {sbase['p50_ms']:.2f} / p99 {sbase['p99_ms']:.2f} ms")
    sours = figures["serial"] = bench_serial_service(work, n)
    ack = sours["ack"]
    line(
        "press -> commit -> ACK",
        f"p50 {ack['p50_ms']:.2f} / p99 {ack['p99_ms']:.2f} ms",
        f"max {ack['max_ms']:.2f}; {ack['p99_ms'] - sbase['p99_ms']:+.2f} ms p99 over baseline; "
        f"{sours['ratings']} ratings committed",
    )
    figures["targets"] = report_targets(
        [
            Target(
                f"GPIO press -> LED p99 <= {TARGET_GPIO_LED_P99_MS:.0f} ms",
                led["p99_ms"] <= TARGET_GPIO_LED_P99_MS,
                f"{led['p99_ms']:.2f} ms",
            ),
            Target(
                f"serial press -> ACK p99 <= {TARGET_SERIAL_ACK_P99_MS:.0f} ms",
                ack["p99_ms"] <= TARGET_SERIAL_ACK_P99_MS,
                f"{ack['p99_ms']:.2f} ms",
            ),
        ]
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=None, help="presses per figure (default 1000)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    args.samples = args.samples or (200 if args.quick else 1000)
    return run_in_workdir(args, run, "commune-edge-bench-panel-", failures=(TimeoutError,))


if __name__ == "__main__":
    sys.exit(main())
