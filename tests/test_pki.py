"""The commune CA (edge.pki, scripts/make-ca) and the broker templates (edge.broker_config)."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge import broker_config, keys, pki
from edge.keys import KeyFileExists

REPO = Path(__file__).resolve().parent.parent
MAKE_CA = REPO / "scripts" / "make-ca"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> pki.CommuneCA:
    return pki.init_ca(tmp_path_factory.mktemp("ca"), commune="gia-ray")


def names(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


def purposes(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# -- the CA ----------------------------------------------------------------------------------------


def test_ca_signs_leaves_only(ca: pki.CommuneCA) -> None:
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ca.commune == "gia-ray"
    assert stat.S_IMODE(ca.key_path.stat().st_mode) == 0o600


def test_ca_is_never_replaced_by_accident(ca: pki.CommuneCA) -> None:
    with pytest.raises(KeyFileExists, match="orphan"):
        pki.init_ca(ca.directory, commune="gia-ray")
    assert pki.load_ca(ca.directory).cert == ca.cert


def test_load_ca_explains_a_missing_or_mismatched_ca(tmp_path: Path, ca: pki.CommuneCA) -> None:
    with pytest.raises(pki.PkiError, match="make-ca init"):
        pki.load_ca(tmp_path)
    other = pki.init_ca(tmp_path / "other")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / pki.CA_KEY).write_bytes(other.key_path.read_bytes())
    (tmp_path / "mixed" / pki.CA_CERT).write_bytes(ca.cert_path.read_bytes())
    with pytest.raises(pki.PkiError, match="does not belong"):
        pki.load_ca(tmp_path / "mixed")


# -- issuing ---------------------------------------------------------------------------------------


def test_device_certificate(ca: pki.CommuneCA) -> None:
    issued = pki.issue_device(ca, "counter-01", force=True)
    cert = issued.certificate
    pki.verify_issued(ca.cert, cert)
    assert names(cert, NameOID.COMMON_NAME) == ["counter-01"]
    assert names(cert, NameOID.ORGANIZATION_NAME) == ["gia-ray"]
    assert purposes(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issued.key_path is not None and stat.S_IMODE(issued.key_path.stat().st_mode) == 0o600
    assert x509.load_pem_x509_certificate(issued.cert_path.read_bytes()) == cert


def test_server_certificate_cn_can_never_be_a_device_id(ca: pki.CommuneCA) -> None:
    issued = pki.issue_server(ca, "collector", force=True)
    assert issued.common_name == "server:collector" == pki.server_cn("collector")
    assert pki.is_server_cn(issued.common_name)
    assert not keys.SLUG_RE.fullmatch(issued.common_name)
    assert purposes(issued.certificate) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not pki.is_server_cn("collector") and not pki.is_server_cn("server:Bad Name")


def test_broker_certificate_names_host_and_addresses(ca: pki.CommuneCA) -> None:
    issued = pki.issue_broker(ca, "mqtt.gia-ray.lan", ips=["192.168.1.10", "::1"], force=True)
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.gia-ray.lan"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.168.1.10"),
        ipaddress.ip_address("::1"),
    ]
    assert purposes(issued.certificate) == [ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("device", "Counter 01"),
        ("device", "server:collector"),
        ("device", "a/b"),
        ("server", "x y"),
        ("broker", "bad host!"),
    ],
)
def test_names_that_could_confuse_the_acl_are_refused(ca: pki.CommuneCA, kind: str, name: str) -> None:
    issue = {"device": pki.issue_device, "server": pki.issue_server, "broker": pki.issue_broker}[kind]
    with pytest.raises(pki.PkiError):
        issue(ca, name)


def test_issued_files_are_not_overwritten_unless_forced(ca: pki.CommuneCA) -> None:
    pki.issue_device(ca, "loa-07", force=True)
    with pytest.raises(KeyFileExists):
        pki.issue_device(ca, "loa-07")


def test_leaf_never_outlives_its_ca(tmp_path: Path) -> None:
    short = pki.init_ca(tmp_path, commune="gia-ray", days=10)
    cert = pki.issue_device(short, "counter-01", days=825).certificate
    assert cert.not_valid_after_utc <= short.cert.not_valid_after_utc


# -- signing requests made on the device ------------------------------------------------------------


def test_csr_from_the_device_becomes_its_certificate(ca: pki.CommuneCA, tmp_path: Path) -> None:
    csr = keys.create_device_identity(tmp_path / "d.key", tmp_path / "d.csr", "loa-03", "gia-ray")
    issued = pki.sign_csr(ca, (tmp_path / "d.csr").read_bytes(), force=True)
    assert issued.key_path is None  # the key stayed on the device
    assert issued.common_name == "loa-03"
    assert issued.certificate.public_key() == csr.public_key()
    pki.verify_issued(ca.cert, issued.certificate)


def _csr(
    subject: list[x509.NameAttribute], *, ca_ext: bool = False, key: ec.EllipticCurvePrivateKey | None = None
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    if ca_ext:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    csr = builder.sign(key or ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def test_csr_asking_to_be_a_ca_gets_a_plain_device_certificate(ca: pki.CommuneCA) -> None:
    pem = _csr([x509.NameAttribute(NameOID.COMMON_NAME, "loa-05")], ca_ext=True)
    cert = pki.sign_csr(ca, pem, force=True).certificate
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert purposes(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert names(cert, NameOID.ORGANIZATION_NAME) == ["gia-ray"]  # filled in by the CA


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        ([x509.NameAttribute(NameOID.COMMON_NAME, "server:collector")], "device id"),
        ([x509.NameAttribute(NameOID.COMMON_NAME, "#")], "device id"),
        ([], "exactly one CN"),
        (
            [x509.NameAttribute(NameOID.COMMON_NAME, "a"), x509.NameAttribute(NameOID.COMMON_NAME, "b")],
            "exactly one CN",
        ),
        (
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "loa-03"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xuan-son"),
            ],
            "xuan-son",
        ),
    ],
)
def test_csr_the_ca_will_not_sign(ca: pki.CommuneCA, subject: list[x509.NameAttribute], message: str) -> None:
    with pytest.raises(pki.PkiError, match=message):
        pki.sign_csr(ca, _csr(subject))


def test_weak_or_garbage_csr_is_refused(ca: pki.CommuneCA) -> None:
    weak = _csr([x509.NameAttribute(NameOID.COMMON_NAME, "loa-03")], key=ec.generate_private_key(ec.SECP192R1()))
    with pytest.raises(pki.PkiError, match="P-256"):
        pki.sign_csr(ca, weak)
    with pytest.raises(pki.PkiError, match="not a PEM"):
        pki.sign_csr(ca, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")


# -- broker templates ------------------------------------------------------------------------------


def test_acl_renders_device_patterns_and_one_block_per_server() -> None:
    acl = broker_config.render_acl(commune="gia-ray", root="vn", servers=["collector", "console"])
    assert "${" not in acl and "#@server" not in acl
    assert "pattern write vn/gia-ray/dev/%u/evt/#" in acl
    assert "pattern read vn/gia-ray/dev/%u/cmd/#" in acl
    assert "pattern read vn/gia-ray/server/status" in acl  # the uplink follows the collector's presence
    assert acl.count("user server:") == 2
    assert "user server:collector\ntopic read vn/gia-ray/dev/+/evt/#" in acl
    assert "user server:console\n" in acl
    rules = [line for line in acl.splitlines() if line and not line.startswith("#")]
    # Devices get patterns only: no plain "topic" rule applies to them (nor to anyone anonymous).
    assert rules[0].startswith("pattern") and all(r.startswith(("pattern", "user", "topic")) for r in rules)
    assert not any(r.startswith("topic") for r in rules[: rules.index("user server:collector")])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"commune": "gia-ray\ntopic readwrite #"},
        {"commune": "gia-ray", "root": "vn/#"},
        {"commune": "gia-ray", "servers": ["collector\nuser x"]},
        {"commune": "gia-ray", "servers": []},
    ],
)
def test_acl_values_cannot_inject_rules(kwargs: dict[str, object]) -> None:
    with pytest.raises(pki.PkiError):
        broker_config.render_acl(**kwargs)  # type: ignore[arg-type]


def test_conf_renders_a_client_certificate_listener(tmp_path: Path) -> None:
    conf = broker_config.render_mosquitto_conf(
        commune="gia-ray",
        ca_file=Path("/etc/mosquitto/ca.crt"),
        cert_file=Path("/etc/mosquitto/broker.crt"),
        key_file=Path("/etc/mosquitto/broker.key"),
        acl_file=Path("/etc/mosquitto/acl"),
        persistence_dir=Path("/var/lib/mosquitto/"),
    )
    lines = {line.split(" ", 1)[0]: line for line in conf.splitlines() if line and not line.startswith("#")}
    assert "${" not in conf
    assert lines["listener"] == "listener 8883"
    assert lines["require_certificate"] == "require_certificate true"
    assert lines["use_identity_as_username"] == "use_identity_as_username true"
    assert lines["allow_anonymous"] == "allow_anonymous false"
    assert lines["acl_file"] == "acl_file /etc/mosquitto/acl"
    assert lines["persistence"] == "persistence true"
    assert lines["persistence_location"] == "persistence_location /var/lib/mosquitto/"
    assert lines["max_packet_size"] == f"max_packet_size {broker_config.DEFAULT_MAX_PACKET_SIZE}"
    assert "password_file" not in lines


def test_conf_values_cannot_inject_lines() -> None:
    with pytest.raises(pki.PkiError):
        broker_config.render_mosquitto_conf(
            commune="gia-ray",
            ca_file=Path("/x\nallow_anonymous true"),
            cert_file=Path("/c"),
            key_file=Path("/k"),
            acl_file=Path("/a"),
            persistence_dir=Path("/p"),
        )


# -- the script ------------------------------------------------------------------------------------


def make_ca(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAKE_CA), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_make_ca_script_end_to_end(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    assert make_ca("init", d, "--commune", "gia-ray").returncode == 0
    assert make_ca("issue", d, "broker", "localhost", "--ip", "127.0.0.1").returncode == 0
    assert make_ca("issue", d, "server", "collector").returncode == 0
    assert make_ca("issue", d, "device", "counter-01").returncode == 0
    keys.create_device_identity(tmp_path / "d.key", tmp_path / "d.csr", "loa-03", "gia-ray")
    signed = make_ca("sign-csr", d, tmp_path / "d.csr")
    assert signed.returncode == 0, signed.stderr
    assert "loa-03" in signed.stdout
    out = make_ca("broker-config", d, tmp_path / "broker", "--host", "localhost", "--server", "collector")
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert f"certfile {(d / 'issued' / 'broker-localhost.crt').resolve()}" in conf
    assert "user server:collector" in (tmp_path / "broker" / "acl").read_text()
    ca = pki.load_ca(d)
    for name in ("broker-localhost", "server-collector", "device-counter-01", "device-loa-03"):
        pki.verify_issued(ca.cert, x509.load_pem_x509_certificate((d / "issued" / f"{name}.crt").read_bytes()))


def test_make_ca_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    missing = make_ca("issue", tmp_path / "nowhere", "device", "counter-01")
    assert missing.returncode == 1
    assert missing.stderr.startswith("make-ca: ") and missing.stderr.count("\n") == 1
    assert make_ca("init", tmp_path / "ca").returncode == 0
    bad = make_ca("issue", tmp_path / "ca", "device", "Counter 01")
    assert bad.returncode == 1 and "lower-case" in bad.stderr
    again = make_ca("init", tmp_path / "ca")
    assert again.returncode == 1 and "already exists" in again.stderr
