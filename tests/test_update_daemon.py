"""Software update end to end: a running daemon takes a signed ``device.update`` from version A to B.

The rig, as on a Pi:

- **wheels** of this project, built here with ``pip wheel --no-deps`` from a copy of the tree whose
  version is changed (and, for the broken B's, one line of code);
- an **installation** under a temporary ``install_root``: A installed from its wheel by the same code
  a device uses (a venv beside the running one, its dependencies from this test's venv), ``current``
  and ``confirmed`` pointing at it;
- **what systemd does** with the unit (:class:`Unit`): before each start ``confirmed/bin/edge update
  guard``, then ``current/bin/edge run``, started again whenever it ends (``Restart=always``);
- the **update server**: ``sim.media_server`` on HTTPS with a certificate from a commune CA made here,
  the CA given to the device as ``update.ca_file``; commands signed by the commune's key and sent
  through a private Mosquitto.

What a person would check: the acks the server receives, which version runs (the retained ``status``
topic says), where the symlinks point, the ``update`` events in the device's store, and that the
events committed before the update are still there, unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import keys, pki
from edge.commands.claims import make_claims
from edge.commands.jws import b64url_encode, sign
from edge.commands.sender import CommandSender
from edge.config import BrokerAddress
from edge.store import Outbox
from edge.sync.link import LinkSettings, MqttLink
from edge.update import Installation, MarkerFile, release_name
from edge.update.install import install_release
from sim.broker import MosquittoBroker
from sim.harness import wait_for
from sim.media_server import MediaServer
from tests.commands_fixtures import COMMUNE, DEVICE, sender_for
from tests.conftest import Device

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: What a wheel is built from: the package, its data files and the metadata.
TREE = ("pyproject.toml", "README.md", "edge", "drivers", "sim", "firmware_config")

VERSION_A = "0.90.0"
VERSION_B = "0.91.0"
#: A loaded 2-core machine builds, installs and checks a version in well under this.
UPDATE_S = 180.0
#: A daemon starting, connecting and staying healthy for the trial's steady seconds.
START_S = 90.0

#: One line changed in a build, and what that build is for.
VARIANTS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "A": (VERSION_A, []),
    "B": (VERSION_B, []),
    # `edge` exits 1 as soon as it starts, whatever it is asked.
    "B-dead": (
        "0.91.1",
        [
            (
                "edge/cli/__init__.py",
                "from __future__ import annotations\n",
                "from __future__ import annotations\nraise SystemExit(1)\n",
            )
        ],
    ),
    # Everything works but `edge run`, which exits 1 at once.
    "B-norun": (
        "0.91.2",
        [
            (
                "edge/cli/device.py",
                "def cmd_run(args: argparse.Namespace) -> int:\n",
                "def cmd_run(args: argparse.Namespace) -> int:\n    return 1\n",
            )
        ],
    ),
    # The daemon runs, but dials a port nothing listens on: its link never comes up.
    "B-offline": (
        "0.91.3",
        [("edge/daemon.py", "address=m.address,", "address=__import__('dataclasses').replace(m.address, port=9),")],
    ),
    # It would write an event store that version A could not write after a rollback.
    "B-newstore": (
        "0.91.4",
        [("edge/store/formats.py", "STORE_FORMAT = 1\nSTORE_COMPAT = 1\n", "STORE_FORMAT = 2\nSTORE_COMPAT = 2\n")],
    ),
    # It needs a package this device does not have (and could not download).
    "B-newdep": (
        "0.91.5",
        [("pyproject.toml", "dependencies = [\n", 'dependencies = [\n    "commune-edge-no-such-dependency>=1",\n')],
    ),
}


# -- wheels ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wheel:
    path: Path
    version: str

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def release(self) -> str:
        return release_name(self.version, self.sha256)


class WheelShop:
    """Wheels of this project, each built once per session from a copy of the tree."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._built: dict[str, Wheel] = {}
        self._lock = threading.Lock()

    def __getitem__(self, variant: str) -> Wheel:
        with self._lock:
            if variant not in self._built:
                self._built[variant] = self._build(variant)
            return self._built[variant]

    def _build(self, variant: str) -> Wheel:
        version, patches = VARIANTS[variant]
        src = self.workdir / variant / "src"
        for name in TREE:
            item = ROOT / name
            if item.is_dir():
                shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
            else:
                src.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item, src / name)
        edit(src / "pyproject.toml", re.compile(r'^version = ".*"$', re.M), f'version = "{version}"')
        edit(src / "edge" / "__init__.py", re.compile(r'^__version__ = ".*"$', re.M), f'__version__ = "{version}"')
        for rel, old, new in patches:
            text = (src / rel).read_text(encoding="utf-8")
            assert old in text, f"{rel} no longer has {old!r}: the {variant} build needs a new patch"
            (src / rel).write_text(text.replace(old, new, 1), encoding="utf-8")
        out = self.workdir / variant / "dist"
        pip = [sys.executable, "-m", "pip", "wheel", "--isolated", "--no-deps", "--no-build-isolation", "--no-index"]
        subprocess.run(
            [*pip, "--quiet", "--wheel-dir", str(out), str(src)], check=True, capture_output=True, timeout=300
        )
        (path,) = out.glob("commune_edge-*.whl")
        assert path.name.startswith(f"commune_edge-{version}-")
        return Wheel(path, version)


def edit(path: Path, pattern: re.Pattern[str], replacement: str) -> None:
    text, n = pattern.subn(replacement, path.read_text(encoding="utf-8"), count=1)
    assert n == 1, f"{path}: {pattern.pattern} not found"
    path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> WheelShop:
    return WheelShop(tmp_path_factory.mktemp("wheels"))


# -- what systemd does -------------------------------------------------------------------------------


@dataclass
class Unit:
    """``commune-edge.service`` as systemd runs it: ``ExecStartPre=-<root>/confirmed/bin/edge update
    guard``, ``ExecStart=<root>/current/bin/edge run``, ``Restart=always`` (after half a second here)."""

    root: Path
    env: dict[str, str]
    log_path: Path
    #: Whether the unit has its ExecStartPre guard (without it, the new version is on its own).
    guard: bool = True
    #: The release each start ran (where ``current`` pointed when it was started) and how it ended.
    starts: list[str] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _log: IO[str] | None = None

    def start(self) -> Unit:
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self._thread = threading.Thread(target=self._loop, name="unit", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        assert self._log is not None
        env = {**os.environ, **self.env}
        while not self._stop.is_set():
            if self.guard:
                guard = subprocess.run(
                    [str(self.root / "confirmed" / "bin" / "edge"), "update", "guard"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                self._log.write(f"--- guard exited {guard.returncode}: {guard.stdout}{guard.stderr}\n")
                self._log.flush()
            with self._lock:
                if self._stop.is_set():
                    return
                self.starts.append(os.readlink(self.root / "current").split("/")[-1])
                self.proc = subprocess.Popen(
                    [str(self.root / "current" / "bin" / "edge"), "run"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=self._log,
                )
            status = self.proc.wait()
            self.exits.append(status)
            self._log.write(f"--- edge run exited {status}\n")
            self._log.flush()
            self._stop.wait(0.5)

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self._thread is not None:
            self._thread.join(150)
        if self._log is not None:
            self._log.close()
            self._log = None


class StatusWatcher:
    """The device's retained ``status`` topic, as the commune server sees it."""

    def __init__(self, broker: MosquittoBroker) -> None:
        settings = LinkSettings(BrokerAddress.parse(broker.url), "status-watcher", clean_start=True, session_expiry_s=0)
        self.link = MqttLink(settings)
        self.seen: list[tuple[bool, str]] = []
        self._lock = threading.Lock()
        self.link.subscribe(f"vn/{COMMUNE}/dev/{DEVICE}/status", self._on_status)

    def _on_status(self, topic: str, payload: bytes) -> None:
        doc = json.loads(payload)
        with self._lock:
            self.seen.append((bool(doc["online"]), str(doc["version"])))

    def online(self) -> str | None:
        """The version the device last said is online, or None if it last said it is offline."""
        with self._lock:
            if not self.seen or not self.seen[-1][0]:
                return None
            return self.seen[-1][1]

    def start(self) -> StatusWatcher:
        self.link.start()
        assert self.link.wait_connected(20)
        return self

    def stop(self) -> None:
        self.link.stop()


# -- the rig -----------------------------------------------------------------------------------------


@dataclass
class Rig:
    device: Device
    inst: Installation
    unit: Unit
    server: MediaServer
    sender: CommandSender
    status: StatusWatcher
    key: Ed25519PrivateKey
    kid: str
    a: Wheel

    def serve(self, wheel: Wheel) -> str:
        return self.server.add_file(f"/wheels/{wheel.path.name}", wheel.data)

    def update(self, wheel: Wheel, **change: Any) -> str:
        """Sign and send ``device.update`` for ``wheel`` (served first); ``change`` alters the args."""
        args = {"url": self.serve(wheel), "sha256": wheel.sha256, "bytes": len(wheel.data), "version": wheel.version}
        args.update(change)
        return self.sender.send(DEVICE, "device.update", args, self.key, life_s=300).cmd_id

    def acks(self, cmd_id: str) -> list[dict[str, Any]]:
        return self.sender.acks(cmd_id)

    def wait_done(self, cmd_id: str) -> dict[str, Any]:
        ack = self.sender.wait_ack(cmd_id, UPDATE_S)
        assert ack is not None, self.log()
        return ack

    def steps(self, cmd_id: str) -> list[str]:
        return [a["result"]["step"] for a in self.acks(cmd_id) if a["state"] == "in_progress"]

    def update_events(self) -> list[dict[str, Any]]:
        with Outbox.open_readonly(self.device.db) as outbox:
            return [e.data for e in reversed(outbox.list_events(type="update", limit=1000))]

    def events(self, type_: str) -> list[tuple[int, str, Any]]:
        with Outbox.open_readonly(self.device.db) as outbox:
            return sorted((e.seq, e.id, e.data) for e in outbox.list_events(type=type_, limit=10_000))

    def marker_state(self) -> str | None:
        marker = MarkerFile(self.device.state_dir).load()
        return None if marker is None else marker.state

    def wait_running(self, version: str, timeout: float = START_S) -> None:
        assert wait_for(lambda: self.status.online() == version, timeout), self.log()

    def edge(self, *args: str, release: str | None = None) -> subprocess.CompletedProcess[str]:
        """``edge`` of an installed version (default: the current one), with this device's environment."""
        base = self.inst.path(release) if release else self.inst.root / "current"
        return subprocess.run(
            [str(base / "bin" / "edge"), *args],
            env={**os.environ, **self.device.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def log(self) -> str:
        return self.device.log.read_text(encoding="utf-8") if self.device.log.exists() else ""


@pytest.fixture
def rig(
    tmp_path: Path, device: Device, broker: MosquittoBroker, wheels: WheelShop, request: pytest.FixtureRequest
) -> Iterator[Rig]:
    options: dict[str, Any] = getattr(request, "param", {})
    health_timeout_s = options.get("health_timeout_s", 90.0)
    ca = pki.init_ca(tmp_path / "ca", commune=COMMUNE)
    cert = pki.issue_broker(ca, "localhost", ips=["127.0.0.1"])  # the update server's certificate
    key = keys.generate_signing_key(tmp_path / "signing.key")
    kid = keys.key_id(key)
    inst = Installation(tmp_path / "opt" / "commune-edge")
    a = wheels["A"]
    install_release(inst, a.path, a.release, timeout_s=300)
    inst.point("current", a.release)
    inst.point("confirmed", a.release)
    device.env.update(
        {
            "EDGE_COMMANDS__TRUSTED_KEYS": json.dumps({kid: keys.public_key_b64(key)}),
            "EDGE_UPDATE__INSTALL_ROOT": str(inst.root),
            "EDGE_UPDATE__ALLOW_HOSTS": json.dumps(["127.0.0.1"]),
            "EDGE_UPDATE__CA_FILE": str(ca.cert_path),
            "EDGE_UPDATE__HEALTH_TIMEOUT_S": str(health_timeout_s),
        }
    )
    status = StatusWatcher(broker).start()
    sender = sender_for(broker).start()
    unit = Unit(inst.root, device.env, device.log, guard=options.get("guard", True))
    with MediaServer(cert_file=cert.cert_path, key_file=cert.key_path) as server:
        rig = Rig(device, inst, unit.start(), server, sender, status, key, kid, a)
        try:
            rig.wait_running(VERSION_A)
            yield rig
        finally:
            unit.stop()
            sender.stop()
            status.stop()


def emit(rig: Rig, count: int) -> list[str]:
    out = rig.edge("emit", "test", "--data", '{"before": "update"}', "--count", str(count))
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


# -- the tests ---------------------------------------------------------------------------------------


def test_a_signed_update_takes_the_running_daemon_from_a_to_b(rig: Rig, wheels: WheelShop) -> None:
    b = wheels["B"]
    committed = emit(rig, 3)
    before = rig.events("test")
    assert [event_id for _, event_id, _ in before] == committed
    with Outbox.open_readonly(rig.device.db) as outbox:
        epoch = outbox.epoch

    cmd_id = rig.update(b)

    done = rig.wait_done(cmd_id)
    assert done["state"] == "succeeded", done
    assert done["result"]["state"] == "switched"
    assert (done["result"]["from"], done["result"]["to"]) == (VERSION_A, VERSION_B)
    assert rig.steps(cmd_id) == ["downloading", "downloaded", "installed", "checked", "switched"]
    checks = next(a["result"]["checks"] for a in rig.acks(cmd_id) if a["result"].get("step") == "checked")
    assert checks["version"] == VERSION_B
    assert checks["config"] == "valid"

    # A stops by itself, the unit starts current/bin/edge run: B, which confirms itself.
    rig.wait_running(VERSION_B)
    assert wait_for(lambda: rig.marker_state() == "confirmed", START_S), rig.log()
    assert rig.inst.current() == rig.inst.confirmed() == b.release
    assert rig.unit.starts == [rig.a.release, b.release]
    assert rig.unit.exits == [0]  # A ended cleanly
    assert rig.edge("--version").stdout.strip() == f"commune-edge {VERSION_B}"

    states = [e["state"] for e in rig.update_events()]
    assert states == ["downloading", "downloaded", "installed", "checked", "switched", "trial", "confirmed"]
    confirmed = rig.update_events()[-1]
    assert (confirmed["cmd_id"], confirmed["from"], confirmed["to"]) == (cmd_id, VERSION_A, VERSION_B)

    # The store went across untouched: the same events, the same seqs, the same epoch.
    assert rig.events("test") == before
    with Outbox.open_readonly(rig.device.db) as outbox:
        assert outbox.epoch == epoch
    assert emit(rig, 1)  # and B appends to it
    # B runs in a venv of its own beside A; both are kept (keep_versions = 2).
    report = json.loads(rig.edge("update", "status", "--json").stdout)
    assert [v["release"] for v in report["versions"]] == [b.release, rig.a.release]
    assert report["last_update"]["state"] == "confirmed"


def test_a_wrong_hash_an_unknown_host_or_an_unsigned_update_changes_nothing(rig: Rig, wheels: WheelShop) -> None:
    b = wheels["B"]
    pid = rig.unit.pid

    wrong = rig.update(b, sha256=hashlib.sha256(b"another wheel").hexdigest())
    done = rig.wait_done(wrong)
    assert (done["state"], done["reason"]) == ("failed", "bad_hash")
    assert b.sha256 in done["result"]["detail"]  # what arrived

    elsewhere = rig.update(b, url=rig.serve(b).replace("127.0.0.1", "localhost"))
    done = rig.wait_done(elsewhere)
    assert (done["state"], done["reason"]) == ("failed", "host_not_allowed")
    assert "update.allow_hosts" in done["result"]["detail"]

    asked = len(rig.server.requests)
    args = {"url": rig.serve(b), "sha256": b.sha256, "bytes": len(b.data), "version": b.version}
    claims = make_claims(device=DEVICE, commune=COMMUNE, name="device.update", args=args, life_s=60)
    header = b64url_encode(json.dumps({"alg": "none", "typ": "JWT", "kid": rig.kid}).encode())
    unsigned = f"{header}.{b64url_encode(json.dumps(claims).encode())}."
    forged = sign(
        make_claims(device=DEVICE, commune=COMMUNE, name="device.update", args=args, life_s=60),
        Ed25519PrivateKey.generate(),
        rig.kid,
    )
    topic = f"vn/{COMMUNE}/dev/{DEVICE}/cmd/device.update"
    rig.sender.publish(topic, unsigned)
    rig.sender.publish(topic, forged)

    def security() -> list[Any]:
        return [d for _, _, d in rig.events("security") if d.get("kind") == "command_rejected"]

    assert wait_for(lambda: len(security()) >= 2, 30), rig.log()
    assert sorted(d["reason"] for d in security()) == ["bad_signature", "bad_signature"]
    assert len(rig.server.requests) == asked  # nothing was even downloaded

    # Nothing changed: the same daemon, the same version, nothing installed, no trial.
    assert rig.unit.pid == pid
    assert rig.unit.starts == [rig.a.release]
    assert rig.inst.current() == rig.inst.confirmed() == rig.a.release
    assert sorted(p.name for p in rig.inst.versions.iterdir()) == [rig.a.release]
    assert sorted(p.name for p in rig.inst.downloads.iterdir()) == []  # no wheel, no partial download
    assert rig.marker_state() is None
    assert [e["state"] for e in rig.update_events()] == ["downloading", "failed", "failed"]
    assert rig.status.online() == VERSION_A


def test_a_version_that_fails_its_checks_is_never_switched_to(rig: Rig, wheels: WheelShop) -> None:
    pid = rig.unit.pid

    dead = rig.update(wheels["B-dead"])
    done = rig.wait_done(dead)
    assert (done["state"], done["reason"]) == ("failed", "health_check_failed")
    assert done["result"]["step"] == "edge --version"
    assert "exited 1" in done["result"]["detail"]
    assert rig.steps(dead) == ["downloading", "downloaded", "installed"]

    newstore = rig.update(wheels["B-newstore"])
    done = rig.wait_done(newstore)
    assert (done["state"], done["reason"]) == ("failed", "incompatible_state")
    assert "could not write after a rollback" in done["result"]["detail"]

    newdep = rig.update(wheels["B-newdep"])
    done = rig.wait_done(newdep)
    assert (done["state"], done["reason"]) == ("failed", "missing_dependencies")
    assert "commune-edge-no-such-dependency" in done["result"]["detail"]

    # Each was installed, checked with itself, refused and deleted again; A never stopped.
    assert rig.unit.pid == pid
    assert rig.unit.starts == [rig.a.release]
    assert sorted(p.name for p in rig.inst.versions.iterdir()) == [rig.a.release]
    assert rig.inst.current() == rig.a.release
    assert rig.marker_state() is None
    failed = [e for e in rig.update_events() if e["state"] == "failed"]
    assert [(e["cmd_id"], e["reason"]) for e in failed] == [
        (dead, "health_check_failed"),
        (newstore, "incompatible_state"),
        (newdep, "missing_dependencies"),
    ]


def test_a_b_whose_daemon_cannot_start_is_rolled_back_by_the_guard(rig: Rig, wheels: WheelShop) -> None:
    b = wheels["B-norun"]
    committed = emit(rig, 2)

    cmd_id = rig.update(b)

    done = rig.wait_done(cmd_id)
    assert (done["state"], done["result"]["state"]) == ("succeeded", "switched")
    # B's `edge run` exits 1; at the next start the guard (run from A, the confirmed version) takes
    # it back, and the unit starts A again, which reports what happened.
    assert wait_for(lambda: rig.marker_state() == "rolled_back", START_S), rig.log()
    rig.wait_running(VERSION_A)
    assert rig.unit.starts == [rig.a.release, b.release, rig.a.release]
    assert rig.unit.exits[:2] == [0, 1]
    assert rig.inst.current() == rig.inst.confirmed() == rig.a.release

    def rolled_back() -> list[dict[str, Any]]:
        return [e for e in rig.update_events() if e["state"] == "rolled_back"]

    assert wait_for(lambda: len(rolled_back()) == 1, START_S), rig.log()
    event = rolled_back()[0]
    assert (event["cmd_id"], event["to"], event["from"]) == (cmd_id, b.version, VERSION_A)
    assert event["reason"] == f"{b.version} stopped before it was healthy"
    assert [event_id for _, event_id, _ in rig.events("test")] == committed
    marker = MarkerFile(rig.device.state_dir).load()
    assert marker is not None and marker.reported  # reported once, by A


@pytest.mark.parametrize("rig", [{"health_timeout_s": 8.0}], indirect=True)
def test_a_b_that_never_gets_healthy_rolls_itself_back(rig: Rig, wheels: WheelShop) -> None:
    b = wheels["B-offline"]

    cmd_id = rig.update(b)

    assert rig.wait_done(cmd_id)["state"] == "succeeded"
    # B runs but never reaches the broker: after health_timeout_s it switches back and stops itself.
    assert wait_for(lambda: rig.marker_state() == "rolled_back", START_S), rig.log()
    rig.wait_running(VERSION_A)
    assert rig.unit.starts == [rig.a.release, b.release, rig.a.release]
    assert rig.unit.exits[:2] == [0, 0]  # both stopped cleanly
    assert rig.inst.current() == rig.inst.confirmed() == rig.a.release
    events = rig.update_events()
    assert [e["state"] for e in events][-2:] == ["trial", "rolled_back"]
    assert events[-1]["reason"] == "not healthy within 8 s: the broker link is not up"
    # The status topic never saw B online.
    assert (True, b.version) not in rig.status.seen


@pytest.mark.parametrize("rig", [{"guard": False}], indirect=True)
def test_a_b_killed_during_its_trial_rolls_back_at_its_next_start_even_without_the_guard(
    rig: Rig, wheels: WheelShop
) -> None:
    b = wheels["B-offline"]
    cmd_id = rig.update(b)
    assert rig.wait_done(cmd_id)["state"] == "succeeded"

    # B is on trial (it cannot reach the broker, and has 90 s to): a power cut for the process.
    assert wait_for(lambda: "trial" in [e["state"] for e in rig.update_events()], START_S), rig.log()
    pid = rig.unit.pid
    assert pid is not None and rig.unit.starts[-1] == b.release
    os.kill(pid, signal.SIGKILL)

    # Started again with no guard in front of it, B itself sees that its earlier run never confirmed.
    assert wait_for(lambda: rig.marker_state() == "rolled_back", START_S), rig.log()
    rig.wait_running(VERSION_A)
    assert rig.unit.starts == [rig.a.release, b.release, b.release, rig.a.release]
    assert rig.unit.exits[:3] == [0, -signal.SIGKILL, 0]
    assert rig.inst.current() == rig.a.release
    rolled = [e for e in rig.update_events() if e["state"] == "rolled_back"]
    assert [e["reason"] for e in rolled] == [f"{b.version} stopped before it was healthy"]
