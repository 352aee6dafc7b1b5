"""The rating service on real parts: the real outbox (SQLite), the real panel drivers on gpiozero's
MockFactory pins or a simulated MCU on a pseudo-terminal, and the command handlers as the command
channel calls them. Each test arranges the counter, presses like a citizen, and checks what a
person auditing the counter would check: what is on disk, what was flagged, what lit up and when.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.resources import Resources
from edge.commands.registry import CommandRegistry
from edge.config import EdgeConfig, parse_config
from edge.exceptions import CommandRejected
from edge.services import ServiceContext, build_services
from edge.services.rating import RatingService
from edge.store import Outbox
from sim.counter import watched_mock_factory
from sim.gpio_panel import SimGpioPanel
from sim.serial_mcu import Noise, SerialMcu
from tests.panel_fixtures import WAIT, fast_serial_profile, wait_until

ALL_DAY = {"officer": "nv-07", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}
ALL_DAY.update(start="00:00:00", end="23:59:59.999999")


def counter_config(
    state_dir: Path, profile: str = "gpio-4btn-rpi", port: str | None = None, **rating: Any
) -> EdgeConfig:
    rating.setdefault("counter", "q1")
    rating.setdefault("feedback", {"speak": False})
    return parse_config(
        {
            "device": {"id": "counter-01", "commune": "gia-ray", "roles": ["counter"]},
            "mqtt": {"broker": "mqtt://127.0.0.1:1"},  # no link in these tests: the outbox is what counts
            "store": {"state_dir": str(state_dir)},
            "panel": {"profile": profile, **({"port": port} if port else {})},
            "rating": rating,
        }
    )


@dataclass
class Counter:
    """A running rating service and what it told its observers."""

    service: RatingService
    outbox: Outbox
    registry: CommandRegistry
    notes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def observe(self, kind: str, detail: dict[str, Any]) -> None:
        with self.cond:
            self.notes.append((kind, detail))
            self.cond.notify_all()

    def wait_note(self, kind: str, count: int = 1, where: Callable[[dict[str, Any]], bool] = lambda d: True) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.of(kind, where)) >= count, WAIT)

    def of(self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda d: True) -> list[dict[str, Any]]:
        return [d for k, d in self.notes if k == kind and where(d)]

    def ratings(self) -> list[dict[str, Any]]:
        """Committed ratings, oldest first, read back from the store."""
        return [e.data for e in reversed(self.outbox.list_events(type="rating", limit=1000))]

    def panel_events(self) -> list[dict[str, Any]]:
        return [e.data for e in reversed(self.outbox.list_events(type="panel", limit=1000))]

    def command(self, name: str, args: dict[str, Any]) -> Any:
        """Run a command as the command channel does once the signature and claims have checked out."""
        reg = self.registry.get(name)
        return reg.handler(reg.parse_args(args), None)


@pytest.fixture
def make_counter(tmp_path: Path) -> Iterator[Callable[..., Counter]]:
    made: list[Counter] = []

    def make(config: EdgeConfig, pin_factory: Any = None, *, outbox: Outbox | None = None) -> Counter:
        ob = outbox or Outbox(config.db_path)
        registry = CommandRegistry()
        service = RatingService(config, ob, registry, Resources(), pin_factory=pin_factory)
        counter = Counter(service, ob, registry)
        service.add_observer(counter.observe)
        service.start()
        made.append(counter)
        assert wait_until(lambda: service.panel is not None and service.panel.connected), "panel never came up"
        return counter

    yield make
    for c in made:
        c.service.stop()
        c.outbox.close()


@pytest.fixture
def factory() -> Any:
    """gpiozero's MockFactory: the pins under the real GPIO panel driver."""
    from gpiozero.pins.mock import MockFactory

    return MockFactory()


def sim_panel(counter: Counter, factory: Any) -> SimGpioPanel:
    from drivers.profiles import GpioProfile

    assert isinstance(counter.service.profile, GpioProfile)
    return SimGpioPanel(counter.service.profile, factory)


# -- one press, one rating ---------------------------------------------------------------------------


def test_a_press_in_an_officer_window_is_one_rating_with_everything_attributed(tmp_path: Path, make_counter, factory):
    c = make_counter(counter_config(tmp_path, roster=[ALL_DAY]), pin_factory=factory)
    citizen = sim_panel(c, factory)

    citizen.press_done()  # the officer finishes the case and invites a rating
    assert c.wait_note("window", where=lambda d: d["state"] == "opened")
    citizen.press(1)
    assert c.wait_note("rating")

    [rating] = c.ratings()
    assert rating.pop("chain")["n"] == 1  # the store's link in the rating chain (tests/test_chain.py)
    assert rating == {
        "counter": "q1",
        "officer": "nv-07",
        "officer_from": "roster",
        "score": 4,
        "label": "very_satisfied",
        "text": "Rất hài lòng",
        "button": 1,
        "window": "officer",
        "window_id": c.of("window")[0]["id"],
        "case": None,
        "misuse": None,
        "panel": "gpio-4btn-rpi",
    }


def test_the_thank_you_light_comes_only_after_the_rating_is_on_disk(tmp_path: Path, make_counter):
    config = counter_config(tmp_path, mode="always")
    led_1 = 5  # gpio-4btn-rpi: button 1's LED is on GPIO 5
    timeline: list[tuple[str, Any]] = []
    on_disk_when_lit: list[int] = []

    def on_output(bcm: int, on: bool) -> None:
        if bcm == led_1 and on and not on_disk_when_lit:
            # What another process (the uplink, an auditor) could read at the moment the LED lit.
            with sqlite3.connect(f"file:{config.db_path}?mode=ro", uri=True) as db:
                on_disk_when_lit.append(db.execute("SELECT COUNT(*) FROM events WHERE type = 'rating'").fetchone()[0])
        timeline.append(("pin", (bcm, on)))

    factory = watched_mock_factory(on_output)
    c = make_counter(config, pin_factory=factory)
    c.service.add_observer(lambda kind, d: timeline.append(("committed", d["seq"])) if kind == "rating" else None)
    timeline.clear()

    sim_panel(c, factory).press(1)
    assert c.wait_note("thanks")
    assert wait_until(lambda: ("pin", (led_1, True)) in timeline)

    seq = c.of("rating")[0]["seq"]
    order = [entry for entry in timeline if entry in (("committed", seq), ("pin", (led_1, True)))]
    assert order[:2] == [("committed", seq), ("pin", (led_1, True))]  # the commit, then the light
    assert on_disk_when_lit == [1]  # readable from a separate connection when the LED lit


def test_a_stalled_disk_holds_back_the_ack_and_the_light_and_loses_nothing(tmp_path: Path, make_counter):
    profile = tmp_path / "fast-serial.yaml"
    profile.write_text(yaml.safe_dump(fast_serial_profile().model_dump(mode="json")))
    with SerialMcu(repeat_ms=50, link=tmp_path / "ttyPANEL") as mcu:
        c = make_counter(counter_config(tmp_path, str(profile), str(tmp_path / "ttyPANEL"), mode="always"))
        stall, stalled = threading.Event(), threading.Event()

        def hold_the_writer(conn: sqlite3.Connection) -> None:
            stalled.set()
            stall.wait(WAIT)

        blocker = threading.Thread(target=c.outbox.transact, args=(hold_the_writer,))
        blocker.start()
        assert stalled.wait(WAIT)
        press = mcu.press(2)
        assert mcu.wait_for(lambda m: m.stats.repeats >= 3)  # the MCU keeps repeating: no ACK yet
        assert mcu.acked == [] and mcu.led_log == [] and c.ratings() == []

        stall.set()  # the disk answers again
        blocker.join()
        assert mcu.wait_acked(1)
        assert c.wait_note("thanks")
        assert mcu.acked == [press]
        assert [(r["button"], r["score"]) for r in c.ratings()] == [(2, 3)]  # repeats made one rating
        assert mcu.wait_for(lambda m: ("2", "thanks") in m.led_log)


def test_a_press_repeated_after_a_host_restart_is_still_one_rating(tmp_path: Path, make_counter):
    profile = tmp_path / "fast-serial.yaml"
    profile.write_text(yaml.safe_dump(fast_serial_profile().model_dump(mode="json")))
    link = tmp_path / "ttyPANEL"
    config = counter_config(tmp_path, str(profile), str(link), mode="always")
    # Every ACK is lost on the wire, so the MCU repeats the press for ever (until one gets through).
    with SerialMcu(repeat_ms=50, link=link, noise=Noise(drop_acks=1.0)) as mcu:
        first = make_counter(config)
        mcu.press(3)
        assert first.wait_note("rating")
        first.service.stop()  # the daemon restarts; the store stays
        second = make_counter(config, outbox=first.outbox)
        assert second.wait_note("rating", where=lambda d: d["duplicate"])
        mcu.noise.drop_acks = 0.0
        assert mcu.wait_acked(1)
        assert len(second.ratings()) == 1
        assert second.of("thanks") == []  # thanked the first time, not again


# -- misuse is flagged, never deleted ---------------------------------------------------------------


def test_a_burst_is_kept_and_flagged(tmp_path: Path, make_counter, factory):
    c = make_counter(counter_config(tmp_path, mode="always", cooldown_s=0, burst_presses=3, burst_window_s=60), factory)
    citizen = sim_panel(c, factory)
    for _ in range(4):
        citizen.press(4)
    assert c.wait_note("rating", 4)
    assert [r["misuse"] for r in c.ratings()] == [None, None, "burst", "burst"]
    assert c.service.counts["burst"] == 2


def test_presses_outside_a_window_are_kept_and_flagged(tmp_path: Path, make_counter, factory):
    c = make_counter(counter_config(tmp_path, window_s=1, burst_presses=50), pin_factory=factory)
    citizen = sim_panel(c, factory)
    citizen.press(2)  # nobody opened a window
    assert c.wait_note("rating")
    c.command("rating.open", {"case": "HS-2026-0042"})
    assert c.wait_note("window", where=lambda d: d["state"] == "expired")  # nobody pressed in time
    citizen.press(3)
    assert c.wait_note("rating", 2)
    assert [(r["window"], r["misuse"], r["case"]) for r in c.ratings()] == [
        (None, "outside_window", None),
        (None, "outside_window", None),
    ]


def test_always_mode_honours_the_cooldown(tmp_path: Path, make_counter, factory):
    c = make_counter(counter_config(tmp_path, mode="always", cooldown_s=3600, burst_presses=50), factory)
    citizen = sim_panel(c, factory)
    citizen.press(1)
    citizen.press(2)
    assert c.wait_note("rating", 2)
    assert [(r["window"], r["misuse"]) for r in c.ratings()] == [("always", None), ("always", "cooldown")]
    assert c.service.status()["cooldown_left_s"] > 0


# -- commands --------------------------------------------------------------------------------------


def test_rating_open_carries_the_case_code_and_officer_assign_overrides_the_roster(tmp_path, make_counter, factory):
    c = make_counter(counter_config(tmp_path, roster=[ALL_DAY]), pin_factory=factory)
    assert c.command("officer.assign", {"officer": "nv-12", "hours": 4})["officer"] == "nv-12"
    result = c.command("rating.open", {"case": "HS-2026-0042"})
    assert result["case"] == "HS-2026-0042" and result["panel_connected"] is True
    sim_panel(c, factory).press(2)
    assert c.wait_note("rating")
    [r] = c.ratings()
    assert (r["officer"], r["officer_from"], r["case"], r["window"]) == ("nv-12", "assigned", "HS-2026-0042", "officer")
    assert r["window_id"] == result["window_id"]

    c.command("officer.assign", {"officer": None})  # back to the roster
    assert c.service.status()["officer"] == "nv-07"


def test_an_assignment_survives_a_restart(tmp_path: Path, make_counter, factory):
    config = counter_config(tmp_path)
    first = make_counter(config, pin_factory=factory)
    first.command("officer.assign", {"officer": "nv-03"})
    first.service.stop()
    second = make_counter(config, pin_factory=factory, outbox=first.outbox)
    assert second.service.status()["officer"] == "nv-03"


def test_bad_command_arguments_are_rejected_before_the_handler(tmp_path: Path, make_counter, factory):
    c = make_counter(counter_config(tmp_path), pin_factory=factory)
    with pytest.raises(CommandRejected, match="invalid_args"):
        c.command("rating.open", {"case": "bad case; DROP TABLE"})
    with pytest.raises(CommandRejected, match="invalid_args"):
        c.command("officer.assign", {"officer": "NV 07"})
    with pytest.raises(CommandRejected, match="invalid_args"):
        c.command("rating.open", {"colour": "red"})


def test_rating_open_fails_in_always_mode(tmp_path: Path, make_counter, factory):
    from edge.commands.registry import CommandFailed

    c = make_counter(counter_config(tmp_path, mode="always"), pin_factory=factory)
    with pytest.raises(CommandFailed, match="wrong_mode"):
        c.command("rating.open", {})


# -- panel events and live settings ------------------------------------------------------------------


def test_a_stuck_button_is_reported_and_presses_still_count(tmp_path: Path, make_counter, factory):
    c = make_counter(counter_config(tmp_path, mode="always", stuck_after_s=0.2), pin_factory=factory)
    citizen = sim_panel(c, factory)
    citizen.hold(3)  # a coin wedged under button 3
    assert c.wait_note("panel", where=lambda d: d["kind"] == "stuck")
    citizen.release(3)
    assert c.wait_note("panel", where=lambda d: d["kind"] == "released")
    kinds = [(e["kind"], e.get("button")) for e in c.panel_events()]
    assert ("stuck", 3) in kinds and ("released", 3) in kinds
    assert len(c.ratings()) == 1  # the press that got stuck was still one press


def test_a_missing_speaker_is_a_panel_problem_and_never_blocks_the_rating(tmp_path: Path, make_counter, factory):
    feedback = {"speak": True, "audio_device": "no-such-speaker"}
    c = make_counter(counter_config(tmp_path, mode="always", feedback=feedback), pin_factory=factory)
    assert c.wait_note("panel", where=lambda d: d["kind"] == "speaker")
    sim_panel(c, factory).press(1)
    assert c.wait_note("thanks")
    assert len(c.ratings()) == 1
    [problem] = [e for e in c.panel_events() if e["kind"] == "speaker"]
    assert problem["state"] == "unavailable" and "no-such-speaker" in problem["error"]


def test_rating_settings_apply_live(tmp_path: Path, make_counter, factory):
    config = counter_config(tmp_path, mode="officer")
    c = make_counter(config, pin_factory=factory)
    citizen = sim_panel(c, factory)
    citizen.press(1)
    assert c.wait_note("rating")
    data = config.model_dump(mode="json")
    data["rating"].update(counter="q2", mode="always", cooldown_s=0)
    c.service.reconfigure(parse_config(data))
    citizen.press(1)
    assert c.wait_note("rating", 2)
    assert [(r["counter"], r["window"], r["misuse"]) for r in c.ratings()] == [
        ("q1", None, "outside_window"),
        ("q2", "always", None),
    ]


def test_a_counter_without_a_panel_runs_no_rating_service(tmp_path: Path, caplog) -> None:
    config = counter_config(tmp_path)
    data = config.model_dump(mode="json")
    data["panel"] = None
    no_panel = parse_config(data)
    with Outbox(no_panel.db_path) as ob:
        assert build_services(ServiceContext(no_panel, ob, CommandRegistry(), Resources())) == []
    assert "no ratings are taken" in caplog.text
