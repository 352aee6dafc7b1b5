"""Software update, how a device is set up for it: the starter config's ``[update]``, and a daemon
started as ``edge run --config FILE`` (no ``$EDGE_CONFIG``) that takes a signed update.

The new version is checked with the device's own configuration file (``edge config validate``,
``edge doctor --quick``), so the daemon must tell it which file that is: ``--config`` is not passed
on, and a technician running the daemon by hand seldom sets ``$EDGE_CONFIG``. The update here is
real, as in ``test_update_daemon.py``: wheels of this project, version A installed under a temporary
``install_root``, B served over loopback HTTPS and named in a command signed by the commune's key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from edge import keys, pki
from edge.config import load_config
from edge.config.render import starter_config
from edge.config.update import UpdateConfig
from edge.update import Installation, MarkerFile
from edge.update.install import install_release
from sim.broker import MosquittoBroker
from sim.harness import run_edge, wait_for, write_device_config
from sim.media_server import MediaServer
from tests.commands_fixtures import COMMUNE, DEVICE, sender_for
from tests.conftest import FAST_SYNC
from tests.test_update_daemon import START_S, UPDATE_S, VERSION_A, VERSION_B, StatusWatcher, WheelShop

# -- the starter config ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["counter", "loudspeaker"])
def test_the_starter_shows_update_commented_out_and_uncommented_it_takes_the_update_server(
    tmp_path: Path, role: str
) -> None:
    text = starter_config(role, "dev-01", "gia-ray", "mqtt://127.0.0.1:1883", str(tmp_path / "state"))  # type: ignore[arg-type]
    assert "update" not in tomllib.loads(text)  # off as written
    block = text[text.index("# [update]\n") :]
    assert "# allow_hosts = []\n" in block and '# install_root = "/opt/commune-edge"\n' in block
    written = tmp_path / "edge.toml"
    written.write_text(text, encoding="utf-8")
    assert load_config(written).update.allow_hosts == []  # every device.update refused

    # What the lead comment says to do: uncomment [update] and allow_hosts, and name the server.
    enabled = text.replace("# [update]\n", "[update]\n").replace(
        "# allow_hosts = []\n", 'allow_hosts = ["updates.gia-ray.lan"]\n'
    )
    written.write_text(enabled, encoding="utf-8")
    assert run_edge(["config", "validate", "--config", str(written)]).returncode == 0
    assert load_config(written).update.allow_hosts == ["updates.gia-ray.lan"]

    # Every key it shows with a value is the default, so uncommenting one changes nothing by itself.
    keys_shown = [m[1] for m in re.finditer(r"^# ([a-z_]+ = .+)$", block, re.M)]
    shown = tomllib.loads("[update]\n" + "\n".join(keys_shown))
    assert shown["update"] == UpdateConfig().model_dump(mode="json", exclude={"ca_file"})


# -- edge run --config FILE ------------------------------------------------------------------------


class Daemon:
    """``<install_root>/current/bin/edge run --config FILE``, started again by hand after it stops."""

    def __init__(self, inst: Installation, config: Path, env: dict[str, str], log: Path) -> None:
        self.inst, self.config, self.env, self.log_path = inst, config, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[str] | None = None

    def start(self) -> Daemon:
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        argv = [str(self.inst.root / "current" / "bin" / "edge"), "run", "--config", str(self.config)]
        self.proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        return self

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""


@pytest.fixture
def status(broker: MosquittoBroker) -> Iterator[StatusWatcher]:
    watcher = StatusWatcher(broker).start()
    try:
        yield watcher
    finally:
        watcher.stop()


@pytest.mark.slow
def test_a_daemon_started_with_config_and_no_edge_config_takes_a_signed_update(
    tmp_path: Path, broker: MosquittoBroker, status: StatusWatcher
) -> None:
    wheels = WheelShop(tmp_path / "wheels")
    a, b = wheels["A"], wheels["B"]
    ca = pki.init_ca(tmp_path / "ca", commune=COMMUNE)
    cert = pki.issue_broker(ca, "localhost", ips=["127.0.0.1"])  # the update server's certificate
    key = keys.generate_signing_key(tmp_path / "signing.key")
    inst = Installation(tmp_path / "opt" / "commune-edge")
    install_release(inst, a.path, a.release, timeout_s=300)
    inst.point("current", a.release)
    inst.point("confirmed", a.release)
    # [update] set in the file as a technician does; the key and the short sync times from the environment.
    state = tmp_path / "state"
    update = f'[update]\ninstall_root = "{inst.root}"\nallow_hosts = ["127.0.0.1"]\nca_file = "{ca.cert_path}"\n'
    config = write_device_config(tmp_path / "edge.toml", broker.url, state_dir=state, extra=update)
    env = {k: v for k, v in os.environ.items() if k != "EDGE_CONFIG"}
    env.update(FAST_SYNC)
    env["EDGE_COMMANDS__TRUSTED_KEYS"] = json.dumps({keys.key_id(key): keys.public_key_b64(key)})

    daemon = Daemon(inst, config, env, tmp_path / "daemon.log").start()
    sender = sender_for(broker).start()
    try:
        with MediaServer(cert_file=cert.cert_path, key_file=cert.key_path) as server:
            assert wait_for(lambda: status.online() == VERSION_A, START_S), daemon.log()
            url = server.add_file(f"/wheels/{b.path.name}", b.data)
            args = {"url": url, "sha256": b.sha256, "bytes": len(b.data), "version": b.version}
            cmd_id = sender.send(DEVICE, "device.update", args, key, life_s=300).cmd_id

            done = sender.wait_ack(cmd_id, UPDATE_S)
            assert done is not None, daemon.log()
            # The new version found the configuration the daemon runs with and validated it.
            assert (done["state"], done["result"].get("state")) == ("succeeded", "switched"), done
            checked = [x["result"] for x in sender.acks(cmd_id) if x["result"].get("step") == "checked"]
            assert checked and checked[0]["checks"]["config"] == "valid"
            assert daemon.wait(120) == 0, daemon.log()  # A stopped by itself for the switch

            # Started again the same way, B runs and confirms itself.
            daemon.start()
            assert wait_for(lambda: status.online() == VERSION_B, START_S), daemon.log()

            def confirmed() -> bool:
                marker = MarkerFile(state).load()
                return marker is not None and marker.state == "confirmed"

            assert wait_for(confirmed, START_S), daemon.log()
            assert inst.current() == inst.confirmed() == b.release
    finally:
        daemon.stop()
        sender.stop()
