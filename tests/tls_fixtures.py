"""A commune broker from the shipped templates (TLS, client certificates, the ACL), and devices
enrolled as a technician enrols them: key and request made by ``edge keys device`` on the device,
certificate signed by the commune CA."""

from __future__ import annotations

from pathlib import Path

from edge import broker_config, pki
from sim.broker import BrokerTls, MosquittoBroker, current_user
from sim.harness import run_edge


def shipped_tls_broker(
    workdir: Path,
    ca: pki.CommuneCA,
    *,
    commune: str,
    broker_cert: pki.Issued | None = None,
    template: bool = True,
) -> MosquittoBroker:
    """A started Mosquitto on a free loopback port, with TLS, client certificates and the shipped ACL,
    configured by the shipped conf template (``template`` False: the test broker's own conf with the
    same TLS and ACL). The broker's certificate is ``broker_cert``, or one for localhost/127.0.0.1 from
    ``ca``; ``workdir`` holds the files."""
    if broker_cert is None:
        broker_cert = pki.issue_broker(ca, "localhost", ips=["127.0.0.1"])
    assert broker_cert.key_path is not None
    acl = workdir / "acl"
    acl.write_text(broker_config.render_acl(commune=commune, root="vn", servers=["collector"]))
    broker = MosquittoBroker(
        workdir / "broker", tls=BrokerTls(ca.cert_path, broker_cert.cert_path, broker_cert.key_path, acl_file=acl)
    )
    if not template:
        broker.start()
        return broker
    (workdir / "persist").mkdir()
    broker.config = broker_config.render_mosquitto_conf(
        commune=commune,
        ca_file=ca.cert_path,
        cert_file=broker_cert.cert_path,
        key_file=broker_cert.key_path,
        acl_file=acl,
        persistence_dir=workdir / "persist",
        port=broker.port,
        bind_address="127.0.0.1",
        log_dest="stderr",
        user=current_user(),
    )
    broker.start()
    return broker


def enrol_device(ca: pki.CommuneCA, directory: Path, *, device: str, commune: str) -> tuple[Path, Path]:
    """The device's certificate and key, made in ``directory``: ``(cert_path, key_path)``."""
    directory.mkdir()
    key = directory / "device.key"
    run_edge(["keys", "device", "--device", device, "--commune", commune, "--key", str(key)])
    cert = pki.sign_csr(ca, (directory / "device.csr").read_bytes())
    return cert.cert_path, key
