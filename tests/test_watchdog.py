"""The watchdog sees what the daemon stands on: every service's threads, and a link or uplink that hangs.

Each test runs the daemon in this process on real parts (a simulated panel MCU on a pseudo-terminal,
GPIO relays on gpiozero's MockFactory pins, the simulated sound card, a camera that is not plugged
in, a real Mosquitto or a port that never answers), follows it with the systemd side of ``edge run``
(:class:`~edge.systemd.DaemonWatchdog`) against a socket bound as systemd binds ``$NOTIFY_SOCKET``,
and then breaks one thing from the inside: a fault in a real thread, where it would strike. What a
technician reading ``systemctl status`` would check: the broken loop is named, systemd's watchdog is
no longer petted, and ``edge run`` ends with status 1 (then systemd starts it again).

The hang bound (:data:`edge.supervisor.HUNG_AFTER_S`, 300 s) is shortened on the heartbeats of the
daemon under test, so that a hang shows in seconds; what counts as a round is what is under test.
"""

from __future__ import annotations

import errno
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
from edge.exceptions import StoreError
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
        config = device_config(
            tmp_path,
            f"mqtt://127.0.0.1:{free_port()}",  # offline: healthy, and nothing to do with the panel
            panel={"profile": "serial-4btn", "port": str(mcu.path)},
            rating={"counter": "q1", "feedback": {"speak": False}},
        )
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


class FailingPin:
    """Makes a MockFactory's output pins fail as a GPIO line can (EIO from the chip) once ``failing``."""

    @staticmethod
    def factory() -> Any:
        from gpiozero.pins.mock import MockFactory, MockPin

        class Pin(MockPin):  # type: ignore[misc]
            failing = False

            def _set_state(self, value: bool) -> None:
                if self.failing:
                    raise OSError(errno.EIO, "Input/output error")
                super()._set_state(value)

        return MockFactory(pin_class=Pin)


@pytest.fixture
def gpio_factory() -> Iterator[Any]:
    """gpiozero's own mechanism, as on a Pi: the daemon opens its pins on ``Device.pin_factory``."""
    from gpiozero import Device

    factory = FailingPin.factory()
    before, Device.pin_factory = Device.pin_factory, factory
    yield factory
    Device.pin_factory = before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the test
def test_a_broadcast_scheduler_killed_by_a_failing_amplifier_line_gets_the_daemon_restarted(
    tmp_path: Path, watch: Callable[..., Watched], gpio_factory: Any, card: Any
) -> None:
    """The amplifier's GPIO line fails with EIO, which the GPIO relay backend does not translate into
    a relay fault: the scheduler's step fails, and so does opening every relay after it. Until now
    that left a loudspeaker that took commands and never played again."""
    from tests.broadcast_fixtures import relay_profile

    config = device_config(
        tmp_path,
        f"mqtt://127.0.0.1:{free_port()}",
        role="loudspeaker",
        relays={"profile": str(relay_profile(tmp_path / "relays.yaml"))},
        speaker={},
    )
    w = watch(config)
    broadcast = w.service(BroadcastService)
    w.healthy()

    amplifier = gpio_factory.pin(24)  # the profile's amplifier relay (gpio-4ch-rpi)
    amplifier.failing = True
    relay_test = w.daemon.registry.get("relay.test")
    relay_test.handler(relay_test.parse_args({"zones": ["zone-1"], "seconds": 0.5}), None)  # type: ignore[arg-type]
    try:
        reason = w.broken("broadcast-scheduler thread died")
        assert reason == "broadcast-scheduler thread died: OSError: [Errno 5] Input/output error"
        assert broadcast.scheduler.thread is not None and not broadcast.scheduler.thread.is_alive()
    finally:
        amplifier.failing = False  # so that stopping opens every relay


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
def test_an_evidence_uploader_that_dies_on_a_store_error_gets_the_daemon_restarted(
    tmp_path: Path, watch: Callable[..., Watched], broker: MosquittoBroker
) -> None:
    """The collector confirms a clip; the uploader then removes it from its queue in the store, and
    the store refuses (a full disk): one upload's trouble is caught, this one was not."""
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
        uploader._forget = injected(StoreError("database or disk is full"))
        job = uploader.upload(clip_id)
        assert job.sha256 == hashlib.sha256(clip.read_bytes()).hexdigest()
        reason = w.broken("evidence-upload thread died")
        assert reason == "evidence-upload thread died: StoreError: database or disk is full"
    finally:
        collector.loop_stop()
        collector.disconnect()


def test_threads_that_end_by_design_are_not_deaths(tmp_path: Path, watch: Callable[..., Watched]) -> None:
    """The panel's opener is done once the panel is open; a stopped service's threads are gone: none
    of that is a failure. Checked on a counter whose services all run."""
    with SerialMcu(buttons=4, model="ce-panel-4", link=tmp_path / "panel-tty") as mcu:
        config = device_config(
            tmp_path,
            f"mqtt://127.0.0.1:{free_port()}",
            panel={"profile": "serial-4btn", "port": str(mcu.path)},
            rating={"counter": "q1", "feedback": {"speak": False}},
        )
        w = watch(config)
        rating = w.service(RatingService)
        assert wait_for(lambda: rating._opener is not None and not rating._opener.is_alive(), WAIT)
        w.healthy()
        names = [loop.name for loop in rating.loops()]
        assert names == ["rating-panel-open", "panel-dispatch", "panel-serial"]
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
