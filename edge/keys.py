"""Key material: command-signing keys (Ed25519) and the device's TLS key and certificate request.

Two kinds of keys live here, for two different jobs:

- **Command-signing keys** (Ed25519, RFC 8037). The commune server holds the private key and signs
  commands with it (:mod:`edge.commands.jws`); a device holds only public keys, listed in its config
  under ``[commands] trusted_keys`` as ``kid = "<PEM file path or base64url raw key>"``.
  :func:`key_id` is the project's convention for naming a key: the first 8 bytes of the SHA-256 of the
  raw 32-byte public key, base64url without padding (11 characters). A ``kid`` in the config may be any
  string; the convention only gives the server tools a stable default.
- **Device TLS identity** (EC P-256). The key is made on the device and never leaves it; the
  certificate signing request (CN = device id, O = commune) goes to the commune CA
  (``scripts/make-ca sign-csr``), which returns the client certificate the broker checks.

Private keys are written PEM / PKCS#8, unencrypted (the daemon starts unattended), with mode 0600, and
never over an existing file unless the caller forces it: overwriting a key by mistake strands every
device (or certificate) that trusted it.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from edge.commands.jws import b64url_decode, b64url_encode
from edge.exceptions import EdgeError
from edge.model import SLUG_RE

log = logging.getLogger(__name__)

#: Device and commune identifiers (DESIGN.md §4); the same rule as :data:`edge.model.Slug`.


class KeyMaterialError(EdgeError, ValueError):
    """A key, certificate or request that cannot be used; the message names the file and the problem."""


class KeyFileExists(EdgeError, FileExistsError):
    """Refused to overwrite an existing key or certificate file (pass ``force=True`` to replace it)."""


# -- files ---------------------------------------------------------------------------------------


def write_file(path: Path, data: bytes, *, mode: int, force: bool = False) -> Path:
    """Write ``data`` to ``path`` with exactly ``mode``, atomically, refusing to overwrite unless ``force``.

    The file is created with its final mode from the start (never world-readable for a moment), in the
    same directory, then renamed into place, so a crash leaves either the old file or the new one.
    """
    path = Path(path)
    if path.exists() and not force:
        raise KeyFileExists(f"{path} already exists; refusing to overwrite it (use --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; set the final mode explicitly so a lax umask cannot widen it.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            # link() fails if the path appeared meanwhile, where rename() would silently replace it.
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    log.info("wrote %s (mode %o)", path, mode)
    return path


def write_private_key(path: Path, key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey, *, force: bool = False) -> Path:
    """Write a private key as unencrypted PEM / PKCS#8 with mode 0600."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return write_file(path, pem, mode=0o600, force=force)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(f"{what} {path}: file not found") from None
    except OSError as exc:
        raise KeyMaterialError(f"{what} {path}: cannot read it: {exc.strerror or exc}") from exc


def _load_private_pem(path: Path, what: str) -> object:
    data = _read(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        # cryptography raises TypeError for an encrypted key given no password.
        raise KeyMaterialError(f"{what} {path}: the key is encrypted; an unencrypted key is expected") from exc
    except (ValueError, binascii.Error) as exc:
        raise KeyMaterialError(f"{what} {path}: not a PEM private key") from exc
    except Exception as exc:  # unsupported algorithms surface as UnsupportedAlgorithm
        raise KeyMaterialError(f"{what} {path}: cannot load the key: {exc}") from exc


# -- command-signing keys (Ed25519) --------------------------------------------------------------


def generate_signing_key(path: Path, *, force: bool = False) -> Ed25519PrivateKey:
    """Create a command-signing key pair and write the private key to ``path`` (PEM PKCS#8, 0600).

    Raises :class:`KeyFileExists` if ``path`` exists and ``force`` is false.
    """
    key = Ed25519PrivateKey.generate()
    write_private_key(path, key, force=force)
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load a command-signing private key (PEM, unencrypted Ed25519). Raises :class:`KeyMaterialError`."""
    key = _load_private_pem(path, "signing key")
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"signing key {path}: a {_describe(key)} key, but commands are signed with Ed25519 only")
    return key


def public_key_raw(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The raw 32 bytes of an Ed25519 public key (RFC 8032)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The public key as base64url of its raw 32 bytes, without padding (43 characters)."""
    return b64url_encode(public_key_raw(key))


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The public key as a PEM ``PUBLIC KEY`` block (SubjectPublicKeyInfo)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The conventional ``kid`` of a key: base64url of the first 8 bytes of SHA-256(raw public key)."""
    return b64url_encode(hashlib.sha256(public_key_raw(key)).digest()[:8])


def load_trusted_key(spec: str) -> Ed25519PublicKey:
    """A trusted command-verification key from a config value: a PEM file path or a base64url raw key.

    A value that is the base64url of 32 bytes (:func:`edge.commands.jws.b64url_decode`: canonical,
    though trailing ``=`` are forgiven) is a raw key; anything else is a path to a PEM ``PUBLIC KEY``
    file. A private key file is refused on purpose: a device must never hold
    the key that signs its commands. Raises :class:`KeyMaterialError` naming the problem.
    """
    spec = spec.strip()
    if not spec:
        raise KeyMaterialError("trusted key: empty value; expected a PEM file path or a base64url raw key")
    body = spec.rstrip("=")
    if not Path(spec).expanduser().exists():
        try:
            raw = b64url_decode(body)
        except ValueError as exc:
            # Long, and nothing a path has: meant as a key, so say what is wrong with it.
            if len(body) >= 40 and not any(c in body for c in "/.~"):
                raise KeyMaterialError(f"trusted key {spec!r}: {exc}") from None
        else:
            if len(raw) == 32:
                return Ed25519PublicKey.from_public_bytes(raw)
            if len(body) >= 40:
                # Long enough that it was meant as a key, not a file name: say so instead of "not found".
                raise KeyMaterialError(
                    f"trusted key {spec!r}: base64url decodes to {len(raw)} bytes; an Ed25519 raw key is 32 bytes"
                )
    path = Path(spec).expanduser()
    data = _read(path, "trusted key")
    if b"PRIVATE KEY" in data:
        raise KeyMaterialError(f"trusted key {path}: this is a private key; give the public key (edge keys prints it)")
    try:
        pub = serialization.load_pem_public_key(data)
    except (ValueError, binascii.Error) as exc:
        raise KeyMaterialError(f"trusted key {path}: not a PEM public key") from exc
    except Exception as exc:  # UnsupportedAlgorithm and friends
        raise KeyMaterialError(f"trusted key {path}: cannot load the key: {exc}") from exc
    if not isinstance(pub, Ed25519PublicKey):
        raise KeyMaterialError(f"trusted key {path}: a {_describe(pub)} key; commands use Ed25519 keys only")
    return pub


def load_trusted_keys(specs: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """Load the ``[commands] trusted_keys`` table (kid → spec), reporting every bad entry at once.

    Raises :class:`KeyMaterialError` whose message lists each failing ``kid`` with its problem.
    """
    keys: dict[str, Ed25519PublicKey] = {}
    errors: list[str] = []
    for kid, spec in specs.items():
        try:
            keys[kid] = load_trusted_key(spec)
        except KeyMaterialError as exc:
            errors.append(f"trusted_keys.{kid}: {exc}")
    if errors:
        raise KeyMaterialError("; ".join(errors))
    return keys


def _describe(key: object) -> str:
    """A short name of a key's algorithm for error messages."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__


# -- device TLS identity (EC P-256) --------------------------------------------------------------


def generate_device_key(path: Path, *, force: bool = False) -> ec.EllipticCurvePrivateKey:
    """Create the device's TLS private key (EC P-256) and write it to ``path`` (PEM PKCS#8, 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    write_private_key(path, key, force=force)
    return key


def load_device_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the device's TLS private key (PEM, unencrypted EC). Raises :class:`KeyMaterialError`."""
    key = _load_private_pem(path, "device key")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyMaterialError(f"device key {path}: a {_describe(key)} key; an EC key is expected")
    return key


def make_device_csr(key: ec.EllipticCurvePrivateKey, device_id: str, commune: str) -> x509.CertificateSigningRequest:
    """A certificate signing request with CN = device id and O = commune, signed by the device key.

    The broker takes the certificate's CN as the MQTT username and the ACL confines that name to its
    own topics, so the id must be a slug exactly as in the device's config.
    """
    _check_names(device_id, commune)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, commune),
        ]
    )
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def _check_names(device_id: str, commune: str) -> None:
    for what, value in (("device id", device_id), ("commune", commune)):
        if not SLUG_RE.fullmatch(value):
            raise KeyMaterialError(f"{what} {value!r}: must be lower-case letters, digits and hyphens")


def create_device_identity(
    key_path: Path, csr_path: Path, device_id: str, commune: str, *, force: bool = False
) -> x509.CertificateSigningRequest:
    """Make the device key (unless it exists) and write a CSR for it, both PEM.

    An existing key is reused rather than replaced, so asking for a new request (say, after the CA
    was renewed) never invalidates the certificate the device already has; ``force`` makes a new key.
    Raises :class:`KeyFileExists` if the CSR file exists and ``force`` is false.
    """
    key_path, csr_path = Path(key_path), Path(csr_path)
    _check_names(device_id, commune)  # before any file is made
    if csr_path.exists() and not force:
        raise KeyFileExists(f"{csr_path} already exists; refusing to overwrite it (use --force to replace it)")
    reuse = key_path.exists() and not force
    key = load_device_key(key_path) if reuse else generate_device_key(key_path, force=force)
    csr = make_device_csr(key, device_id, commune)
    write_file(csr_path, csr.public_bytes(serialization.Encoding.PEM), mode=0o644, force=force)
    return csr
