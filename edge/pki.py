"""The commune certificate authority: one small CA per commune that issues broker, device and server
certificates for MQTT over TLS with client certificates (DESIGN.md §4 "Security of transport").

The broker runs with ``use_identity_as_username true``, so a client's MQTT username **is** the CN of
its certificate, and the ACL (``scripts/broker/acl.template``) grants topics by that name:

- a **device** certificate has CN = the device id (a slug, ``[a-z0-9-]+``) and O = the commune;
- a **server** certificate (the collector, ``edge command send``) has CN = ``server:<name>``
  (:func:`server_cn`). The colon can never appear in a slug, so no device certificate this CA issues
  can ever carry a server identity, whatever id a technician types or a CSR asks for;
- the **broker** certificate has CN and a DNS subjectAltName = the host name, plus optional IP
  addresses, and only the ``serverAuth`` purpose, so it cannot log in as a client.

Layout of a CA directory::

    DIR/ca.key                     the CA private key (EC P-256, 0600) - keep it off the broker
    DIR/ca.crt                     the CA certificate: the trust anchor for broker and clients
    DIR/issued/<kind>-<name>.crt   issued certificates; .key beside those whose key the CA made

Keys are EC P-256 with ECDSA-SHA256 signatures: every TLS stack on a Raspberry Pi and in Mosquitto
speaks it, and keys are small and fast to make. Certificates are back-dated by a day because a Pi has
no battery clock: until NTP answers, it may believe it is a little earlier than when the broker
certificate was issued, and the TLS handshake would fail on "certificate not yet valid".
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.keys import KeyFileExists, KeyMaterialError, write_file, write_private_key
from edge.model import SLUG_RE

log = logging.getLogger(__name__)

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
ISSUED = "issued"

#: Default lifetimes. A commune CA outlives many devices; leaf certificates are renewed with the device.
CA_DAYS = 3650
LEAF_DAYS = 825

#: How far certificates are back-dated (see the module docstring).
BACKDATE = dt.timedelta(days=1)

#: The prefix that marks a server identity's CN; a colon is not allowed in device ids.
SERVER_CN_PREFIX = "server:"

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


class PkiError(KeyMaterialError):
    """The CA cannot do what was asked (no CA in the directory, a bad name, a CSR it will not sign)."""


@dataclass(frozen=True)
class CommuneCA:
    """A loaded commune CA: its directory, key and certificate."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def commune(self) -> str | None:
        """The commune slug in the CA's O attribute, or None for a CA not bound to one commune."""
        attrs = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return str(attrs[0].value) if attrs else None

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY


@dataclass(frozen=True)
class Issued:
    """One issued certificate: what it is for, its CN and where its files are."""

    kind: str  # "broker" | "device" | "server"
    name: str
    common_name: str
    cert_path: Path
    key_path: Path | None  # None when the key stayed with its owner (sign_csr)
    certificate: x509.Certificate


def server_cn(name: str) -> str:
    """The certificate CN (and so the MQTT username) of the server identity ``name``."""
    _check_slug(name, "server name")
    return SERVER_CN_PREFIX + name


def is_server_cn(cn: str) -> bool:
    """True if ``cn`` names a server identity (see :func:`server_cn`)."""
    return cn.startswith(SERVER_CN_PREFIX) and SLUG_RE.fullmatch(cn[len(SERVER_CN_PREFIX) :]) is not None


def certificate_cn(cert: x509.Certificate) -> str:
    """The CN of a certificate's subject ('' if it has none)."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


# -- the CA ----------------------------------------------------------------------------------------


def init_ca(directory: Path, *, commune: str | None = None, days: int = CA_DAYS, force: bool = False) -> CommuneCA:
    """Create a CA in ``directory``: ``ca.key`` (0600) and a self-signed ``ca.crt``.

    Refuses to replace an existing CA unless ``force``: every certificate it issued would stop working.
    """
    directory = Path(directory)
    if commune is not None:
        _check_slug(commune, "commune")
    _check_days(days)
    if (directory / CA_KEY).exists() and not force:
        raise KeyFileExists(f"{directory / CA_KEY} already exists; a new CA would orphan every certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, f"commune-edge CA {commune or ''}".strip())]
    if commune:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, commune))
    name = x509.Name(attrs)
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        # path_length=0: this CA signs leaf certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_key(directory / CA_KEY, key, force=force)
    write_file(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, force=force)
    log.info("created CA %s in %s", certificate_cn(cert), directory)
    return CommuneCA(directory, key, cert)


def load_ca(directory: Path) -> CommuneCA:
    """Load the CA in ``directory``. Raises :class:`PkiError` if it is missing or damaged."""
    directory = Path(directory)
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    if not key_path.exists() or not cert_path.exists():
        raise PkiError(f"{directory}: no CA here ({CA_KEY} and {CA_CERT} expected; run `make-ca init` first)")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{directory}: cannot load the CA: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path}: the CA key must be an EC key")
    if key.public_key().public_numbers() != _ec_public(cert).public_numbers():
        raise PkiError(f"{directory}: {CA_KEY} does not belong to {CA_CERT}")
    return CommuneCA(directory, key, cert)


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise PkiError("the CA certificate must carry an EC key")
    return pub


# -- issuing ---------------------------------------------------------------------------------------

IssuablePublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def issue_broker(
    ca: CommuneCA,
    hostname: str,
    *,
    ips: Sequence[str] = (),
    days: int = LEAF_DAYS,
    force: bool = False,
) -> Issued:
    """Issue the broker's TLS server certificate for ``hostname`` (and optional IP addresses).

    Clients check the host name they dial against the subjectAltName, so list every name and address
    devices use to reach the broker (``--ip`` for a bare address on a commune LAN).
    """
    if not _HOSTNAME_RE.fullmatch(hostname):
        raise PkiError(f"broker host name {hostname!r} is not a valid DNS name")
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as exc:
        raise PkiError(f"broker address: {exc}") from exc
    san: list[x509.GeneralName] = [x509.DNSName(hostname), *(x509.IPAddress(a) for a in addresses)]
    return _issue_with_new_key(
        ca, "broker", hostname, hostname, ExtendedKeyUsageOID.SERVER_AUTH, san, days=days, force=force
    )


def issue_device(ca: CommuneCA, device_id: str, *, days: int = LEAF_DAYS, force: bool = False) -> Issued:
    """Issue a device client certificate (CN = device id) with a key made here.

    For test benches and workshops; in the field the key is made on the device (``edge keys``) and
    only its request travels, to :func:`sign_csr`.
    """
    _check_slug(device_id, "device id")
    return _issue_with_new_key(
        ca, "device", device_id, device_id, ExtendedKeyUsageOID.CLIENT_AUTH, [], days=days, force=force
    )


def issue_server(ca: CommuneCA, name: str, *, days: int = LEAF_DAYS, force: bool = False) -> Issued:
    """Issue a server client certificate (CN = ``server:<name>``): the collector or a command sender."""
    return _issue_with_new_key(
        ca, "server", name, server_cn(name), ExtendedKeyUsageOID.CLIENT_AUTH, [], days=days, force=force
    )


def sign_csr(ca: CommuneCA, csr_pem: bytes, *, days: int = LEAF_DAYS, force: bool = False) -> Issued:
    """Issue a device certificate for a request made on the device (``edge keys``).

    Only the public key and the CN are taken from the request; the CA writes everything else itself
    (O = the CA's commune, client-only purpose, no CA rights), so a request asking for more gets
    nothing more. Refused: a bad request signature, a CN that is not a device id, an O naming another
    commune, a weak key.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise PkiError("the request's signature does not verify (damaged or tampered)")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise PkiError("the request must carry exactly one CN (the device id)")
    device_id = str(cns[0].value)
    _check_slug(device_id, "device id (CN of the request)")
    orgs = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if ca.commune and orgs and orgs != [ca.commune]:
        raise PkiError(f"the request is for commune {', '.join(orgs)!r}, but this CA is {ca.commune!r}")
    pub = _checked_public_key(csr.public_key())
    cert = _build_leaf(ca, device_id, pub, ExtendedKeyUsageOID.CLIENT_AUTH, [], days)
    cert_path = _issued_path(ca, "device", device_id, ".crt")
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, force=force)
    log.info("signed request for device %s: %s", device_id, cert_path)
    return Issued("device", device_id, device_id, cert_path, None, cert)


def _issue_with_new_key(
    ca: CommuneCA,
    kind: str,
    name: str,
    cn: str,
    purpose: x509.ObjectIdentifier,
    san: list[x509.GeneralName],
    *,
    days: int,
    force: bool,
) -> Issued:
    cert_path = _issued_path(ca, kind, name, ".crt")
    key_path = _issued_path(ca, kind, name, ".key")
    for p in (cert_path, key_path):
        if p.exists() and not force:
            raise KeyFileExists(f"{p} already exists; refusing to overwrite it (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build_leaf(ca, cn, key.public_key(), purpose, san, days)
    write_private_key(key_path, key, force=force)
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, force=force)
    log.info("issued %s certificate %s: %s", kind, cn, cert_path)
    return Issued(kind, name, cn, cert_path, key_path, cert)


def _build_leaf(
    ca: CommuneCA,
    cn: str,
    public_key: IssuablePublicKey,
    purpose: x509.ObjectIdentifier,
    san: Iterable[x509.GeneralName],
    days: int,
) -> x509.Certificate:
    _check_days(days)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if ca.commune:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.commune))
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange (old TLS) needs keyEncipherment; harmless for EC keys.
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # OpenSSL checks the purpose: a device certificate cannot serve as the broker, nor the reverse.
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    san = list(san)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def _issued_path(ca: CommuneCA, kind: str, name: str, suffix: str) -> Path:
    return ca.directory / ISSUED / f"{kind}-{name}{suffix}"


def _check_slug(value: str, what: str) -> None:
    if not SLUG_RE.fullmatch(value):
        raise PkiError(f"{what} {value!r}: must be 1-64 lower-case letters, digits and hyphens")


def _check_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise PkiError(f"validity of {days} days: must be between 1 and 36500")


def _checked_public_key(pub: object) -> IssuablePublicKey:
    """The request's key if it is of a kind and strength the CA certifies."""
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if pub.curve.key_size < 256:
            raise PkiError(f"the request's key is EC {pub.curve.name}; at least P-256 is required")
        return pub
    if isinstance(pub, rsa.RSAPublicKey):
        if pub.key_size < 2048:
            raise PkiError(f"the request's key is RSA-{pub.key_size}; at least 2048 bits are required")
        return pub
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return pub
    raise PkiError(f"the request's key type {type(pub).__name__} is not supported (use EC P-256)")


def verify_issued(ca_cert: x509.Certificate, cert: x509.Certificate) -> None:
    """Check that ``cert`` was signed by ``ca_cert`` (raises :class:`PkiError` if not)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{certificate_cn(cert)!r} was not issued by {certificate_cn(ca_cert)!r}") from exc
    except Exception as exc:  # InvalidSignature
        raise PkiError(f"{certificate_cn(cert)!r}: signature by the CA does not verify") from exc
