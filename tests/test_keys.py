"""Key material: command-signing keys, trusted keys from the config, the device's TLS key and CSR."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from edge import keys
from edge.commands import sign, verify
from edge.keys import KeyFileExists, KeyMaterialError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable, as on a careless install."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- command-signing keys --------------------------------------------------------------------------


def test_signing_key_is_written_pkcs8_pem_readable_by_its_owner_only(tmp_path: Path, lax_umask: None) -> None:
    path = tmp_path / "keys" / "command-signing.key"
    key = keys.generate_signing_key(path)
    assert mode(path) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert keys.public_key_raw(keys.load_signing_key(path)) == keys.public_key_raw(key)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_signing_key_is_never_overwritten_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "command-signing.key"
    first = keys.generate_signing_key(path)
    with pytest.raises(KeyFileExists, match="force"):
        keys.generate_signing_key(path)
    assert keys.public_key_raw(keys.load_signing_key(path)) == keys.public_key_raw(first)
    second = keys.generate_signing_key(path, force=True)
    assert keys.public_key_raw(keys.load_signing_key(path)) == keys.public_key_raw(second)
    assert mode(path) == 0o600


def test_loading_a_signing_key_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="file not found"):
        keys.load_signing_key(tmp_path / "missing.key")
    (tmp_path / "garbage.key").write_text("hello")
    with pytest.raises(KeyMaterialError, match="not a PEM private key"):
        keys.load_signing_key(tmp_path / "garbage.key")
    keys.generate_device_key(tmp_path / "ec.key")
    with pytest.raises(KeyMaterialError, match="Ed25519"):
        keys.load_signing_key(tmp_path / "ec.key")
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "enc.key").write_bytes(encrypted)
    with pytest.raises(KeyMaterialError, match="encrypted"):
        keys.load_signing_key(tmp_path / "enc.key")


def test_key_id_is_the_first_8_bytes_of_sha256_of_the_raw_key() -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    expected = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:8]).rstrip(b"=").decode()
    assert keys.key_id(key) == keys.key_id(key.public_key()) == expected
    assert len(expected) == 11
    assert keys.key_id(Ed25519PrivateKey.generate()) != expected


def test_public_key_forms() -> None:
    key = Ed25519PrivateKey.generate()
    b64 = keys.public_key_b64(key)
    assert len(b64) == 43 and "=" not in b64
    assert keys.public_key_pem(key).startswith("-----BEGIN PUBLIC KEY-----")
    assert keys.public_key_raw(key) == base64.urlsafe_b64decode(b64 + "=")


# -- trusted keys from the config ------------------------------------------------------------------


def test_trusted_key_from_base64url_raw_verifies_commands() -> None:
    key = Ed25519PrivateKey.generate()
    trusted = keys.load_trusted_key(keys.public_key_b64(key))
    token = sign({"hello": "xã"}, key, "k1")
    assert verify(token, {"k1": trusted})[1] == {"hello": "xã"}


def test_trusted_key_from_a_pem_file(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "server.pub").write_text(keys.public_key_pem(key))
    loaded = keys.load_trusted_key(str(tmp_path / "server.pub"))
    assert isinstance(loaded, Ed25519PublicKey)
    assert keys.public_key_raw(loaded) == keys.public_key_raw(key)


def test_trusted_key_with_padding_or_spaces_is_forgiven() -> None:
    key = Ed25519PrivateKey.generate()
    assert keys.public_key_raw(keys.load_trusted_key(f"  {keys.public_key_b64(key)}=\n")) == keys.public_key_raw(key)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("AAAA" * 11, "33 bytes"),  # base64url, but the wrong length for a raw key
        ("/etc/commune-edge/keys/server.pub", "file not found"),
        ("server.pub", "file not found"),
    ],
)
def test_bad_trusted_key_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(KeyMaterialError, match=message):
        keys.load_trusted_key(spec)


def test_a_private_key_is_refused_as_a_trusted_key(tmp_path: Path) -> None:
    # The device must never hold the key that signs its commands.
    keys.generate_signing_key(tmp_path / "signing.key")
    with pytest.raises(KeyMaterialError, match="private key"):
        keys.load_trusted_key(str(tmp_path / "signing.key"))


def test_a_non_ed25519_public_key_is_refused(tmp_path: Path) -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "ec.pub").write_bytes(pem)
    with pytest.raises(KeyMaterialError, match="Ed25519"):
        keys.load_trusted_key(str(tmp_path / "ec.pub"))
    (tmp_path / "junk.pub").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(KeyMaterialError, match="not a PEM public key"):
        keys.load_trusted_key(str(tmp_path / "junk.pub"))


def test_trusted_keys_table_reports_every_bad_entry() -> None:
    good = keys.public_key_b64(Ed25519PrivateKey.generate())
    assert set(keys.load_trusted_keys({"2026": good})) == {"2026"}
    with pytest.raises(KeyMaterialError) as info:
        keys.load_trusted_keys({"2026": good, "old": "missing.pub", "typo": "AAAA" * 11})
    assert "trusted_keys.old" in str(info.value) and "trusted_keys.typo" in str(info.value)


# -- device TLS identity ---------------------------------------------------------------------------


def test_device_key_is_ec_p256_written_0600(tmp_path: Path, lax_umask: None) -> None:
    key = keys.generate_device_key(tmp_path / "device.key")
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert mode(tmp_path / "device.key") == 0o600
    assert keys.load_device_key(tmp_path / "device.key").private_numbers() == key.private_numbers()


def test_device_csr_names_the_device_and_its_commune(tmp_path: Path) -> None:
    csr = keys.create_device_identity(tmp_path / "device.key", tmp_path / "device.csr", "counter-01", "gia-ray")
    on_disk = x509.load_pem_x509_csr((tmp_path / "device.csr").read_bytes())
    assert on_disk.is_signature_valid
    assert on_disk.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "counter-01"
    assert on_disk.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "gia-ray"
    key = keys.load_device_key(tmp_path / "device.key")
    assert on_disk.public_key() == key.public_key() == csr.public_key()


def test_a_new_csr_reuses_the_existing_device_key(tmp_path: Path) -> None:
    # The certificate the device already has keeps working while the new request is processed.
    keys.create_device_identity(tmp_path / "device.key", tmp_path / "a.csr", "counter-01", "gia-ray")
    before = (tmp_path / "device.key").read_bytes()
    keys.create_device_identity(tmp_path / "device.key", tmp_path / "b.csr", "counter-01", "gia-ray")
    assert (tmp_path / "device.key").read_bytes() == before
    with pytest.raises(KeyFileExists):
        keys.create_device_identity(tmp_path / "device.key", tmp_path / "b.csr", "counter-01", "gia-ray")
    keys.create_device_identity(tmp_path / "device.key", tmp_path / "b.csr", "counter-01", "gia-ray", force=True)
    assert (tmp_path / "device.key").read_bytes() != before


@pytest.mark.parametrize(("device", "commune"), [("Counter 01", "gia-ray"), ("server:collector", "gia-ray"), ("c", "")])
def test_device_csr_refuses_names_that_are_not_slugs(tmp_path: Path, device: str, commune: str) -> None:
    with pytest.raises(KeyMaterialError, match="lower-case"):
        keys.create_device_identity(tmp_path / "device.key", tmp_path / "device.csr", device, commune)
    assert not (tmp_path / "device.csr").exists() and not (tmp_path / "device.key").exists()
