"""``edge keys``: the device's TLS key and certificate request, and command-signing keys.

edge keys device                 make the device key (kept if it exists) and a CSR for the commune CA
edge keys signing create FILE    make a command-signing key pair (on the commune server)
edge keys signing show FILE      print a signing key's kid and public key (private or public file)
edge keys trusted                list the command-verification keys this device trusts
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import keys
from edge.cli.common import CliError, add_common, load, out, print_json
from edge.config import resolve_secret_path

DEFAULT_DEVICE_KEY = Path("/etc/commune-edge/device.key")
DEFAULT_DEVICE_CSR = Path("/etc/commune-edge/device.csr")


def _describe_public(pub: Ed25519PublicKey, kid: str | None = None) -> dict[str, str]:
    return {
        "kid": kid or keys.key_id(pub),
        "public_key": keys.public_key_b64(pub),
        "pem": keys.public_key_pem(pub),
    }


def cmd_device(args: argparse.Namespace) -> int:
    if args.device and args.commune:
        device, commune = args.device, args.commune
        key_path = Path(args.key or DEFAULT_DEVICE_KEY)
    else:
        config = load(args)
        device, commune = config.device.id, config.device.commune
        configured = config.mqtt.tls.key_file
        key_path = (
            Path(args.key) if args.key else (resolve_secret_path(configured) if configured else DEFAULT_DEVICE_KEY)
        )
    csr_path = Path(args.csr) if args.csr else key_path.with_suffix(".csr")
    existed = key_path.exists() and not args.force
    keys.create_device_identity(key_path, csr_path, device, commune, force=args.force)
    report = {"device": device, "commune": commune, "key": str(key_path), "key_reused": existed, "csr": str(csr_path)}
    if args.json:
        print_json(report)
    else:
        out(f"device key   {key_path} ({'kept' if existed else 'new'}; it never leaves this device)")
        out(f"request      {csr_path} (CN={device}, O={commune})")
        out(f"next: on the CA machine, scripts/make-ca sign-csr CA_DIR {csr_path.name}; copy the certificate")
        out("back and set mqtt.tls.cert_file to it.")
    return 0


def cmd_signing_create(args: argparse.Namespace) -> int:
    path = Path(args.file)
    key = keys.generate_signing_key(path, force=args.force)
    pub_path = path.with_suffix(".pub")
    keys.write_file(pub_path, keys.public_key_pem(key).encode(), mode=0o644, force=args.force)
    info = _describe_public(key.public_key())
    if args.json:
        print_json({**info, "private_key_file": str(path), "public_key_file": str(pub_path)})
    else:
        out(f"private key  {path} (keep it on the commune server only)")
        out(f"public key   {pub_path}")
        out(f"kid          {info['kid']}")
        out("on each device, in [commands]:")
        out(f'  trusted_keys = {{ "{info["kid"]}" = "{info["public_key"]}" }}')
    return 0


def _load_any_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        key = keys.load_signing_key(path)
        return key.public_key()
    try:
        pub = serialization.load_pem_public_key(data)
    except ValueError:
        raise CliError(f"{path}: not a PEM key") from None
    if not isinstance(pub, Ed25519PublicKey):
        raise CliError(f"{path}: not an Ed25519 key; command-signing keys are Ed25519")
    return pub


def cmd_signing_show(args: argparse.Namespace) -> int:
    info = _describe_public(_load_any_key(Path(args.file)))
    if args.json:
        print_json(info)
    else:
        out(f"kid          {info['kid']}")
        out(f"public key   {info['public_key']}")
        out(f'for [commands]:  trusted_keys = {{ "{info["kid"]}" = "{info["public_key"]}" }}')
    return 0


def cmd_trusted(args: argparse.Namespace) -> int:
    config = load(args)
    trusted = keys.load_trusted_keys(config.commands.trusted_keys)
    rows = [
        {
            **_describe_public(pub, kid),
            "conventional_kid": keys.key_id(pub),
            "source": config.commands.trusted_keys[kid],
        }
        for kid, pub in trusted.items()
    ]
    if args.json:
        print_json(
            {"max_life_s": config.commands.max_life_s, "clock_skew_s": config.commands.clock_skew_s, "keys": rows}
        )
        return 0
    if not rows:
        out("no trusted keys: this device rejects every command ([commands] trusted_keys is empty)")
    for row in rows:
        note = "" if row["kid"] == row["conventional_kid"] else f" (key's own id {row['conventional_kid']})"
        out(f"{row['kid']}{note}  {row['public_key']}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="device TLS key and CSR; command-signing keys")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    q = ksub.add_parser("device", help="make the device key (kept if present) and a certificate signing request")
    add_common(q, json_flag=True)
    q.add_argument("--key", help="key file (default: mqtt.tls.key_file, else /etc/commune-edge/device.key)")
    q.add_argument("--csr", help="request file (default: the key's name with .csr)")
    q.add_argument("--device", help="device id (default: from the config)")
    q.add_argument("--commune", help="commune slug (default: from the config)")
    q.add_argument("--force", action="store_true", help="make a new key and overwrite the request")
    q.set_defaults(func=cmd_device)

    q = ksub.add_parser("signing", help="command-signing keys (for the commune server)")
    ssub = q.add_subparsers(dest="signing_command", metavar="ACTION", required=True)
    r = ssub.add_parser("create", help="make a signing key pair: FILE (private) and FILE.pub")
    r.add_argument("file", metavar="FILE")
    r.add_argument("--force", action="store_true", help="overwrite existing files")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(func=cmd_signing_create)
    r = ssub.add_parser("show", help="print the kid and public key of a signing key file")
    r.add_argument("file", metavar="FILE")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(func=cmd_signing_show)

    q = ksub.add_parser("trusted", help="list the command-verification keys this device trusts")
    add_common(q, json_flag=True)
    q.set_defaults(func=cmd_trusted)
