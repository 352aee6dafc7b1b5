"""The watchdog sees what the daemon stands on: every service's threads, and a link or uplink that hangs.

Each test runs the daemon in this process on real parts (a simulated panel MCU on a pseudo-terminal,
GPIO relays on gpiozero's MockFactory pins, the simulated sound card, a camera that is not plugged
in, a real Mosquitto or a port that never answers), follows it with the systemd side of ``edge run``
(:class:`~edge.systemd.DaemonWatchdog`) against a socket bound as systemd binds ``$NOTIFY_SOCKET``,
and then breaks one thing from the inside: a fault in a real thread, where it would strike. What a
technician reading ``systemctl status`` would check: the broken loop is named, systemd's watchdog is
no longer petted, and ``edge run`` ends with status 1 (then systemd starts it again). The other
side of it: hardware that a restart would not cure (a panel's pins held by another process) is a
reported fault, and the daemon stays up; ``edge collect`` watches its link's rounds as a device does.

The hang bound (:data:`edge.supervisor.HUNG_AFTER_S`, 300 s) is shortened on the heartbeats of the
daemon under test, so that a hang shows in seconds; what counts as a round is what is under test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest

from edge.config import EdgeConfig, parse_config
from edge.daemon import Daemon
from edge.services.broadcast.service import BroadcastService
from edge.services.camera.service import CameraService
from edge.services.camera.upload import EvidenceUploader
from edge.services.rating import RatingService
from edge.systemd import DaemonWatchdog, Notifier
from sim.broker import MosquittoBroker, free_port
from sim.harness import wait_for
from sim.serial_mcu import SerialMcu

if TYPE_CHECKING:
    from tests.systemd_fixtures import NotifySocket, SilentBroker

pytest_plugins = ["tests.systemd_fixtures", "tests.broadcast_fixtures"]

DEVICE = "counter-01"
COMMUNE = "gia-ray"
WAIT = 30.0  # seconds; reached only when a test is about to fail
#: Quick reconnects, no health events: the tests are about the loops, not the figures.
FAST = {"sync": {"reconnect_min_s": 0.1, "reconnect_max_s": 1.0}, "health": {"interval_s": 3600}}


def device_config(tmp_path: Path, broker_url: str, role: str = "counter", **sections: Any) -> EdgeConfig:
    mqtt_section = {"broker": broker_url, **sections.pop("mqtt", {})}
    data = {
        "device": {"id": DEVICE, "commune": COMMUNE, "roles": [role]},
        "mqtt": mqtt_section,
        "store": {"state_dir": str(tmp_path / "state")},
        **FAST,
        **sections,
    }
    return parse_config(data)


def serial_counter(tmp_path: Path, mcu: SerialMcu, speak: bool = False) -> EdgeConfig:
    """A counter on the simulated serial panel, with a broker nobody listens on (offline is healthy,
    and has nothing to do with the panel)."""
    return device_config(
        tmp_path,
        f"mqtt://127.0.0.1:{free_port()}",
        panel={"profile": "serial-4btn", "port": str(mcu.path)},
        rating={"counter": "q1", "feedback": {"speak": speak}},
    )


@dataclass
class Watched:
    """A running daemon and the systemd side of ``edge run`` following it."""

    daemon: Daemon
    systemd: DaemonWatchdog
    notify: NotifySocket

    def service(self, kind: type) -> Any:
        return next(s for s in self.daemon.services if isinstance(s, kind))

    def healthy(self) -> None:
        since = time.monotonic()
        assert wait_for(lambda: self.notify.pets(since) >= 2, WAIT), self.systemd.watchdog.reason
        assert self.daemon.supervisor.check() is None

    def broken(self, named: str) -> str:
        """Wait for the supervisor to name the broken loop; check that petting stopped and that the
        daemon is on its way out (what ``edge run`` turns into exit status 1)."""
        assert wait_for(self.daemon.supervisor.failed.is_set, WAIT), self.daemon.supervisor.check()
        reason = self.daemon.supervisor.reason
        assert reason.startswith(named), reason
        assert wait_for(lambda: self.systemd.watchdog.reason == reason, WAIT)
        stopped = time.monotonic() + 0.6  # a pet already on its way may still arrive
        time.sleep(2.0)  # four petting intervals
        assert self.notify.pets(since=stopped) == 0
        assert f"unhealthy: {reason}" in self.notify.statuses()
        assert self.daemon.wait(threading.Event(), timeout=5) == "failed"
        return reason


@pytest.fixture
def watch(notify_socket: NotifySocket) -> Iterator[Callable[..., Watched]]:
    """``watch(config, before_start=...)``: build the daemon, let ``before_start(daemon)`` arrange it,
    start it and follow it as ``edge run`` does under ``WatchdogSec=1s``."""
    made: list[Watched] = []

    def make(config: EdgeConfig, before_start: Callable[[Daemon], None] | None = None) -> Watched:
        daemon = Daemon(config)
        systemd = DaemonWatchdog(Notifier(str(notify_socket.path)), period_s=1.0)
        watched = Watched(daemon, systemd, notify_socket)
        made.append(watched)
        if before_start is not None:
            before_start(daemon)
        daemon.start()
        systemd.serving(daemon.supervisor, DEVICE)
        return watched

    yield make
    for w in made:
        w.systemd.stopping()
        w.daemon.stop()


def injected(exc: BaseException) -> Callable[..., Any]:
    """A stand-in for one method of one object, raising ``exc`` in whichever thread calls it."""

    def raise_it(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return raise_it


# -- the services -----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the test
def test_a_panel_reader_that_dies_when_the_cable_is_pulled_gets_the_daemon_restarted(
    tmp_path: Path, watch: Callable[..., Watched]
) -> None:
    """The serial panel's reader owns the port: it opens it again after every unplug, so only its
    death matters, not the port's coming and going. Here a bug in reporting the lost port kills it."""
    with SerialMcu(buttons=4, model="ce-panel-4", link=tmp_path / "panel-tty") as mcu:
        config = serial_counter(tmp_path, mcu)
        w = watch(config)
        rating = w.service(RatingService)
        assert wait_for(lambda: rating.panel is not None and rating.panel.connected, WAIT)
        mcu.press(1)
        assert mcu.wait_acked(1, WAIT)  # a rating went through the reader and the dispatcher
        w.healthy()

        rating.panel._deliver_event = injected(RuntimeError("the panel event could not be queued"))
        mcu.unplug()  # the reader loses the port, and reports it: the bug strikes there

        reason = w.broken("panel-serial thread died")
        assert reason == "panel-serial thread died: RuntimeError: the panel event could not be queued"


@pytest.fixture
def install_pins() -> Iterator[Callable[[Any], Any]]:
    """``install_pins(factory)``: gpiozero's own mechanism, as on a Pi, where the daemon opens its pins
    on ``Device.pin_factory``; the factory before is put back afterwards."""
    from gpiozero import Device

    before = Device.pin_factory

    def install(factory: Any) -> Any:
        Device.pin_factory = factory
        return factory

    yield install
    Device.pin_factory = before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the test
def test_a_broadcast_scheduler_killed_by_a_bug_gets_the_daemon_restarted(
    tmp_path: Path, install_pins: Callable[[Any], Any], watch: Callable[..., Watched], card: Any
) -> None:
    """The scheduler outlives a failed step: it opens every relay and goes on. A bug in finding the
    relay board strikes both the step and the opening that follows it, and that kills it. (A relay
    line that fails is a relay fault, not a death: tests/test_relays_gpio.py.)"""
    from gpiozero.pins.mock import MockFactory

    from tests.broadcast_fixtures import relay_profile

    config = device_config(
        tmp_path,
        f"mqtt://127.0.0.1:{free_port()}",
        role="loudspeaker",
        relays={"profile": str(relay_profile(tmp_path / "relays.yaml"))},
        speaker={},
    )
    install_pins(MockFactory())
    w = watch(config)
    broadcast = w.service(BroadcastService)
    w.healthy()

    broadcast.relays = injected(RuntimeError("the relay board could not be looked up"))
    relay_test = w.daemon.registry.get("relay.test")
    relay_test.handler(relay_test.parse_args({"zones": ["zone-1"], "seconds": 0.5}), None)  # type: ignore[arg-type]

    reason = w.broken("broadcast-scheduler thread died")
    assert reason == "broadcast-scheduler thread died: RuntimeError: the relay board could not be looked up"
    assert broadcast.scheduler.thread is not None and not broadcast.scheduler.thread.is_alive()


class LgpioError(Exception):
    """What lgpio raises (``lgpio.error``; lgpio is installed only on a Pi): a plain Exception, neither
    an OSError nor a gpiozero error, which gpiozero's lgpio factory lets through as it is."""


def busy_pins(*numbers: int) -> Any:
    """A MockFactory on which another process holds GPIO ``numbers`` while ``factory.pin_class.busy``:
    claiming one of them fails as lgpio fails it ("GPIO busy"); ``factory.pin_class.refused`` counts
    the attempts."""
    from gpiozero.pins.mock import MockFactory, MockPin

    class Pin(MockPin):  # type: ignore[misc]
        busy = True
        refused = 0

        def __init__(self, factory: Any, info: Any) -> None:
            if self.busy and info.name in {f"GPIO{n}" for n in numbers}:
                type(self).refused += 1
                raise LgpioError("GPIO busy")
            super().__init__(factory, info)

    return MockFactory(pin_class=Pin)


def test_a_panel_whose_pins_are_held_elsewhere_is_a_reported_fault_and_the_daemon_goes_on(
    tmp_path: Path, install_pins: Callable[[Any], Any], watch: Callable[..., Watched], broker: MosquittoBroker
) -> None:
    """Another process holds the panel's GPIO lines when the daemon starts (a technician's script
    left running). Restarting would not free them, and ten restarts in ten minutes would leave the
    unit failed: the panel is reported faulted, the rest of the daemon works, and the panel opens by
    itself once the lines are free."""
    from drivers.profiles import GpioProfile
    from edge.cli.device import status_report
    from sim.gpio_panel import SimGpioPanel

    pins = install_pins(busy_pins(18))  # the buzzer's: the buttons and LEDs before it were claimed
    config = device_config(
        tmp_path, broker.url, panel={"profile": "gpio-4btn-rpi"}, rating={"counter": "q1", "feedback": {"speak": False}}
    )
    w = watch(config)
    rating = w.service(RatingService)
    outbox = w.daemon.outbox

    def panel_events() -> list[dict[str, Any]]:
        return [e.data for e in reversed(outbox.list_events(type="panel", limit=100))]

    assert wait_for(lambda: pins.pin_class.refused >= 3, WAIT)  # tried, and tried again, sooner than 30 s
    problem = "cannot open the GPIO panel (gpio-4btn-rpi): GPIO busy"
    # Said once, however many attempts: a panel event, the service's status, and edge status.
    assert [(e["kind"], e["reason"], e["error"]) for e in panel_events()] == [("disconnected", "open_failed", problem)]
    assert rating.status()["panel"] == {
        "profile": "gpio-4btn-rpi",
        "kind": "gpio",
        "connected": False,
        "problem": problem,
    }
    report = status_report(config, outbox)
    assert report["hardware"] == {"panel": problem}
    # The rest goes on: the supervisor finds every loop well, the link is up, commands are taken.
    w.healthy()
    assert w.daemon.link.wait_connected(WAIT) and report["daemon"]["running"]
    assign = w.daemon.registry.get("officer.assign")
    assert assign.handler(assign.parse_args({"officer": "nv-07"}), None)["officer"] == "nv-07"  # type: ignore[arg-type,index]

    pins.pin_class.busy = False  # the other process lets go
    assert wait_for(lambda: rating.panel is not None and rating.panel.connected, WAIT)
    # The driver's ``connected`` reaches the service through the panel's event queue, a moment after
    # the panel says it is connected: wait for it, then it is the last panel event, said once.
    assert wait_for(lambda: panel_events()[-1]["kind"] == "connected", WAIT)
    assert [e["kind"] for e in panel_events()] == ["disconnected", "connected"]
    assert wait_for(lambda: status_report(config, outbox)["hardware"] == {}, WAIT)
    assert isinstance(rating.profile, GpioProfile)
    SimGpioPanel(rating.profile, pins).press(1)
    assert wait_for(lambda: outbox.list_events(type="rating", limit=10), WAIT)
    [rated] = outbox.list_events(type="rating", limit=10)
    assert (rated.data["score"], rated.data["officer"]) == (4, "nv-07")
    w.healthy()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the test
def test_a_speech_worker_that_dies_gets_the_daemon_restarted(tmp_path: Path, watch: Callable[..., Watched]) -> None:
    """The spoken thank-you has a worker of its own. Trouble letting go of the speaker for a new one (a
    live change of ``rating.feedback.audio_device``) is a reported fault and the worker goes on; a bug
    in the worker's own loop kills it, and with it every thank-you after."""
    with SerialMcu(buttons=4, model="ce-panel-4", link=tmp_path / "panel-tty") as mcu:
        config = serial_counter(tmp_path, mcu, speak=True)
        w = watch(config)
        rating = w.service(RatingService)
        assert rating.speech.thread is not None
        w.healthy()

        def moved_to(device: str) -> EdgeConfig:
            feedback = config.rating.feedback.model_copy(update={"audio_device": device})
            return config.model_copy(update={"rating": config.rating.model_copy(update={"feedback": feedback})})

        speech = rating.speech
        speech._release_probed = injected(RuntimeError("the speaker's reservation was lost"))
        rating.reconfigure(moved_to("USB Audio"))
        outbox = w.daemon.outbox

        def speaker_events() -> list[str]:
            return [str(e.data.get("error")) for e in outbox.list_events(type="panel", limit=100)]

        # Reported as the speaker's problem (a panel event), then the next request tries the new device.
        assert wait_for(lambda: any("reservation was lost" in e for e in speaker_events()), WAIT), speaker_events()
        assert wait_for(speech._requests.empty, WAIT)
        assert speech.thread is not None and speech.thread.is_alive()
        w.healthy()

        class BrokenQueue:
            """Passes requests on to the worker (which waits on the old queue), then breaks its next read."""

            def __init__(self, old: Any) -> None:
                self.old = old

            def put(self, request: Any) -> None:
                self.old.put(request)

            get = staticmethod(injected(RuntimeError("the worker's queue broke")))

        speech._requests = BrokenQueue(speech._requests)  # type: ignore[assignment]
        rating.reconfigure(moved_to("Headphones"))
        reason = w.broken("rating-speech thread died")
        assert reason == "rating-speech thread died: RuntimeError: the worker's queue broke"


def camera_config(tmp_path: Path, broker_url: str) -> EdgeConfig:
    return device_config(
        tmp_path,
        broker_url,
        rating={"counter": "q1"},
        # Not plugged in: the reader keeps trying to open it, which is its normal work.
        camera=[{"name": "q1-cam", "source": "/dev/video63", "profile": "sim-counter-640x480", "retry_max_s": 1.0}],
    )


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the test
def test_a_camera_reader_that_dies_gets_the_daemon_restarted(tmp_path: Path, watch: Callable[..., Watched]) -> None:
    """A camera that is not there is reported lost and looked for again, not a dead loop; a reader
    that dies (here of a bug while it notes the failure to open) is."""
    w = watch(camera_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}"))
    camera = w.service(CameraService).watches["q1-cam"].camera
    assert wait_for(lambda: camera.stats.error is not None, WAIT)  # tried, failed, trying again
    w.healthy()

    camera._failed = injected(RuntimeError("cannot note the camera's state"))
    reason = w.broken("camera-q1-cam thread died")
    assert reason == "camera-q1-cam thread died: RuntimeError: cannot note the camera's state"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the test
def test_an_evidence_pruner_that_dies_gets_the_daemon_restarted(tmp_path: Path, watch: Callable[..., Watched]) -> None:
    """Retention is a loop of its own for each camera: if it stopped, pictures would be kept past
    their days and the card would fill. It catches what one round raises; here its timer breaks."""

    def often(daemon: Daemon) -> None:
        for recorder in next(s for s in daemon.services if isinstance(s, CameraService)).recorders.values():
            recorder.prune_every_s = 0.2  # a round every 0.2 s rather than every hour: the fault shows at once

    w = watch(camera_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}"), before_start=often)
    recorder = w.service(CameraService).recorders["q1-cam"]
    assert "evidence-prune-q1-cam" in [loop.name for loop in w.service(CameraService).loops()]
    w.healthy()

    recorder._closing.wait = injected(RuntimeError("the pruner's timer broke"))
    reason = w.broken("evidence-prune-q1-cam thread died")
    assert reason == "evidence-prune-q1-cam thread died: RuntimeError: the pruner's timer broke"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the test
def test_an_evidence_uploader_that_dies_of_a_bug_gets_the_daemon_restarted(
    tmp_path: Path, watch: Callable[..., Watched], broker: MosquittoBroker
) -> None:
    """The collector confirms a clip; the uploader then removes it from its queue in the store, and a
    bug strikes there. One upload's trouble is caught, and so is a store that refuses (the ending is
    tried again: tests/test_evidence_upload.py); a bug in the uploader's own bookkeeping is not."""
    w = watch(camera_config(tmp_path, broker.url))
    assert w.daemon.link.wait_connected(WAIT)
    uploader = w.service(EvidenceUploader)
    clip_id = str(uuid.uuid4())
    clip = tmp_path / "state" / "media" / "q1-cam" / f"{clip_id}.jpg"
    clip.parent.mkdir(parents=True, exist_ok=True)
    clip.write_bytes(b"\xff\xd8 a snapshot \xff\xd9")
    w.healthy()

    # The collector's side of the upload protocol: it holds the clip already, whole and verified.
    prefix = f"vn/{COMMUNE}/dev/{DEVICE}"
    collector = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="collector", protocol=mqtt.MQTTv5)

    def answer(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        header = json.loads(message.payload.split(b"\n", 1)[0])
        if header.get("kind") == "query":
            ack = {"v": 1, "clip_id": header["clip_id"], "ask": header["ask"], "complete": True, "sha256_ok": True}
            client.publish(f"{prefix}/mediaack", json.dumps(ack), qos=1)

    collector.on_message = answer
    collector.connect("127.0.0.1", broker.port)
    collector.subscribe(f"{prefix}/media/+", qos=1)
    collector.loop_start()
    try:
        uploader._forget = injected(RuntimeError("the queue in the store lost count"))
        job = uploader.upload(clip_id)
        assert job.sha256 == hashlib.sha256(clip.read_bytes()).hexdigest()
        reason = w.broken("evidence-upload thread died")
        assert reason == "evidence-upload thread died: RuntimeError: the queue in the store lost count"
    finally:
        collector.loop_stop()
        collector.disconnect()


def test_threads_that_end_by_design_are_not_deaths(tmp_path: Path, watch: Callable[..., Watched]) -> None:
    """The panel's opener is done once the panel is open; a stopped service's threads are gone: none
    of that is a failure. Checked on a counter whose services all run."""
    with SerialMcu(buttons=4, model="ce-panel-4", link=tmp_path / "panel-tty") as mcu:
        config = serial_counter(tmp_path, mcu)
        w = watch(config)
        rating = w.service(RatingService)
        assert wait_for(lambda: rating._opener is not None and not rating._opener.is_alive(), WAIT)
        w.healthy()
        names = [loop.name for loop in rating.loops()]
        assert names == ["rating-panel-open", "panel-dispatch", "panel-serial", "rating-speech"]
        mcu.unplug()  # the port goes; the reader stays and looks for it
        assert wait_for(lambda: rating.panel is not None and not rating.panel.connected, WAIT)
        w.healthy()


# -- the link and the uplink --------------------------------------------------------------------------


@pytest.fixture
def restored_signals() -> Iterator[None]:
    """``Daemon.run()`` takes SIGTERM and SIGINT, as ``edge run`` does; given back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_edge_run_ends_when_the_link_hangs_on_a_broker_that_accepts_and_never_answers(
    tmp_path: Path,
    notify_socket: NotifySocket,
    silent_broker: SilentBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    restored_signals: None,
) -> None:
    """paho bounds the TCP connect and the TLS handshake by its connect timeout (5 s), and the wait for
    CONNACK by the keepalive. With ``mqtt.keepalive_s = 3600`` a broker that takes the connection and
    never answers holds the connection attempt for an hour: past the hang bound, the link is hung.
    ``Daemon.run()`` is ``edge run`` itself, with ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` as systemd sets
    them."""
    config = device_config(tmp_path, silent_broker.url, mqtt={"keepalive_s": 3600})
    daemon = Daemon(config)
    daemon.link.heartbeat.stale_after_s = 3.0
    for key, value in notify_socket.env(1_000_000).items():
        monkeypatch.setenv(key, value)
    caplog.set_level(logging.CRITICAL, logger="edge.daemon")

    assert daemon.run() == 1

    reason = daemon.supervisor.reason
    assert reason.startswith(f"mqtt-link hung: connecting to {silent_broker.url} has taken "), reason
    assert reason.endswith("(the bound is 3 s)")
    assert len(silent_broker.accepted) == 1  # one attempt, never given up
    assert notify_socket.pets() >= 1  # healthy while the attempt was young
    # Then no more petting: the daemon said it was stopping, and ended (systemd starts it again).
    stopping = notify_socket.with_key("STOPPING")
    assert stopping and notify_socket.pets(since=stopping[0][0]) == 0
    assert f"exiting: {reason}" in [r.getMessage() for r in caplog.records]


def test_a_silent_broker_with_a_keepalive_under_the_bound_is_offline_not_hung(
    tmp_path: Path, silent_broker: SilentBroker, watch: Callable[..., Watched]
) -> None:
    """The shipped settings scaled down: a keepalive well under the bound (30 s against 300 s on a
    device, 5 s against 15 s here). Each attempt gives up when its keepalive passes, and the next
    begins: the link keeps making rounds, the device is offline and healthy."""
    config = device_config(tmp_path, silent_broker.url, mqtt={"keepalive_s": 5})

    def short_bound(daemon: Daemon) -> None:
        daemon.link.heartbeat.stale_after_s = 15.0

    w = watch(config, before_start=short_bound)
    assert wait_for(lambda: len(silent_broker.accepted) >= 3, 60)  # gave up on two attempts, began a third
    w.healthy()
    assert not [s for s in w.notify.statuses() if s.startswith("unhealthy")]


def test_waiting_out_a_long_reconnect_delay_is_not_a_hang(tmp_path: Path, watch: Callable[..., Watched]) -> None:
    """The broker is down (nothing listens). The link waits longer between attempts than the bound
    allows for one round, and the uplink has nothing to send: both still make their rounds, so
    offline stays healthy."""
    config = device_config(
        tmp_path, f"mqtt://127.0.0.1:{free_port()}", sync={"reconnect_min_s": 4.0, "reconnect_max_s": 8.0}
    )

    def short_bounds(daemon: Daemon) -> None:
        daemon.link.heartbeat.stale_after_s = 3.0
        daemon.uplink.heartbeat.stale_after_s = 3.0

    w = watch(config, before_start=short_bounds)
    # Waits of 2-4 s, then 4-8 s: the third refusal comes after at least one wait longer than 3 s.
    assert wait_for(lambda: w.daemon.link.stats.connect_failures >= 3, 60)
    w.healthy()
    assert not [s for s in w.notify.statuses() if s.startswith("unhealthy")]


def test_edge_collect_ends_when_its_link_hangs_on_a_broker_that_accepts_and_never_answers(
    tmp_path: Path, silent_broker: SilentBroker
) -> None:
    """The collector watches its link's rounds as a device does. A broker that takes the connection and
    never answers holds the attempt for the keepalive (30 s): past a bound shortened to 3 s, the link
    is hung and the collector says so and fails (``edge collect`` then ends with status 1)."""
    from edge.server.collector import Collector

    collector = Collector(silent_broker.url, tmp_path / "collector.db", commune=COMMUNE)
    collector.link.heartbeat.stale_after_s = 3.0
    collector.start()
    try:
        assert wait_for(collector.failed.is_set, WAIT), collector.supervisor.check()
        reason = collector.supervisor.reason
        assert reason.startswith(f"mqtt-link hung: connecting to {silent_broker.url} has taken "), reason
        assert reason.endswith("(the bound is 3 s)")
        assert len(silent_broker.accepted) == 1
    finally:
        collector.stop()
