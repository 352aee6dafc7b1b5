"""JWS compact serialization (RFC 7515) signed with Ed25519 (``"alg":"EdDSA"``, RFC 8037).

Only the one algorithm the contract names is accepted, and only keys the device was configured with
are used: the header's ``alg`` never chooses the verification algorithm (the classic JWT bugs are
``"alg":"none"`` and HMAC-with-the-public-key), and embedded keys (``jwk``, ``x5c``, ``jku``...) are
ignored. :func:`verify` checks, in this order, and stops at the first failure:

1. size: more than ``max_bytes`` → ``malformed`` (detail ``oversized``), before anything is parsed;
2. shape: ASCII, exactly three segments, each canonical unpadded base64url → ``malformed``;
3. header: a JSON object without duplicate keys → ``malformed``; ``alg`` exactly ``"EdDSA"``
   → else ``bad_signature`` (the detail names the alg); ``kid`` a non-empty string → else
   ``malformed``; ``kid`` among the trusted keys → else ``unknown_key``; no ``crit`` (we implement no
   extensions) and no ``b64`` other than true → ``malformed``;
4. signature: 64 bytes verifying over the exact ASCII ``header.payload`` → else ``bad_signature``;
5. payload: a JSON object without duplicate keys → ``malformed``.

The signature is checked before the payload is decoded, so any change to the payload or signature
segments, even one that breaks their base64 or the payload's JSON, is reported as ``bad_signature``:
the honest answer to "someone altered this". Every failure raises
:class:`~edge.exceptions.CommandRejected` with one of :data:`REASONS`; no input makes :func:`verify`
raise anything else.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.exceptions import CommandRejected
from edge.jsonfmt import compact

log = logging.getLogger(__name__)

ALG = "EdDSA"

#: The only reasons :func:`verify` gives.
REASONS = frozenset({"bad_signature", "unknown_key", "malformed"})

#: Default cap on a token's size: far above any real command (a full ``config.desired`` is a few
#: kilobytes), and equal to the daemon's default cap on incoming messages.
MAX_TOKEN_BYTES = 64 * 1024

_SIGNATURE_BYTES = 64
_B64URL_RE = re.compile(rb"^[A-Za-z0-9_-]*$")

#: Header parameters whose presence changes how a JWS is processed; we implement none of them.
_UNSUPPORTED = ("crit",)


class _DuplicateKey(ValueError):
    pass


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: bytes | str) -> bytes:
    """Strict base64url without padding: only the URL-safe alphabet, and only the canonical encoding.

    Canonical means the unused low bits of the last character are zero. Without that check, several
    different strings decode to the same signature, and an altered token could still verify.
    Raises ``ValueError``.
    """
    seg = segment.encode("ascii") if isinstance(segment, str) else segment
    if not _B64URL_RE.fullmatch(seg) or len(seg) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(seg + b"=" * (-len(seg) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=") != seg:
        raise ValueError("not the canonical base64url encoding")
    return data


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse a JSON object strictly: UTF-8, no duplicate keys, no NaN/Infinity; else ``malformed``."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            # RFC 7515 §5.2: a header with duplicate names must be rejected (or the last one wins,
            # which is how two parsers come to disagree about what was signed).
            raise _DuplicateKey("duplicate key")
        return obj

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except _DuplicateKey:
        raise CommandRejected("malformed", f"{what} has a duplicate key") from None
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; absurd nesting is a RecursionError.
        raise CommandRejected("malformed", f"{what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise CommandRejected("malformed", f"{what} is not a JSON object")
    return value


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return compact(obj).encode("utf-8")


def sign(
    claims: Mapping[str, Any],
    private_key: Ed25519PrivateKey,
    kid: str,
    *,
    extra_headers: Mapping[str, Any] | None = None,
) -> str:
    """Sign ``claims`` as a JWS compact token with header ``{"alg":"EdDSA","typ":"JWT","kid":kid}``.

    ``extra_headers`` may add header parameters but not replace ``alg`` or ``kid``.
    """
    if not isinstance(kid, str) or not kid:
        raise ValueError("kid must be a non-empty string")
    header: dict[str, Any] = {"alg": ALG, "typ": "JWT", "kid": kid}
    for name, value in (extra_headers or {}).items():
        if name in ("alg", "kid"):
            raise ValueError(f"extra_headers may not set {name!r}")
        header[name] = value
    signing_input = b64url_encode(_dumps(header)) + "." + b64url_encode(_dumps(claims))
    signature = private_key.sign(signing_input.encode("ascii"))
    return signing_input + "." + b64url_encode(signature)


def verify(
    token: str | bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    max_bytes: int = MAX_TOKEN_BYTES,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a JWS compact token against the trusted keys (``kid`` → public key).

    Returns ``(header, claims)`` as dicts; the claims still need :func:`edge.commands.claims.check_claims`.
    Raises :class:`CommandRejected` with reason ``malformed``, ``bad_signature`` or ``unknown_key``
    (see the module docstring for which check gives which), and nothing else.
    """
    try:
        return _verify(token, trusted, max_bytes)
    except CommandRejected:
        raise
    except Exception as exc:  # pragma: no cover - a bug here must reject, never crash the daemon
        log.exception("unexpected error while verifying a command token")
        raise CommandRejected("malformed", f"could not be checked ({type(exc).__name__})") from exc


def _verify(
    token: str | bytes, trusted: Mapping[str, Ed25519PublicKey], max_bytes: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    if isinstance(token, str):
        # Measure in bytes, as the wire does: a str of non-ASCII characters is longer on the wire.
        if len(token) > max_bytes:
            raise CommandRejected("malformed", f"oversized: more than {max_bytes} bytes")
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError:
            raise CommandRejected("malformed", "not JWS compact serialization (non-ASCII)") from None
    elif isinstance(token, bytes | bytearray | memoryview):
        raw = bytes(token)
    else:
        raise CommandRejected("malformed", f"token must be text or bytes, not {type(token).__name__}")
    if len(raw) > max_bytes:
        raise CommandRejected("malformed", f"oversized: {len(raw)} bytes > {max_bytes}")
    parts = raw.split(b".")
    if len(parts) != 3:
        raise CommandRejected("malformed", f"not JWS compact serialization ({len(parts)} segments, 3 expected)")
    header_seg, payload_seg, signature_seg = parts
    if not header_seg:
        raise CommandRejected("malformed", "empty header")
    try:
        header_bytes = b64url_decode(header_seg)
    except ValueError:
        raise CommandRejected("malformed", "header is not base64url") from None
    header = _json_object(header_bytes, "header")

    alg = header.get("alg")
    if alg != ALG:
        shown = repr(alg) if "alg" in header else "missing"
        raise CommandRejected("bad_signature", f"alg {shown[:40]} is not accepted (only {ALG})")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise CommandRejected("malformed", "header kid must be a non-empty string")
    for name in _UNSUPPORTED:
        if name in header:
            raise CommandRejected("malformed", f"header parameter {name!r} is not supported")
    if header.get("b64", True) is not True:
        # RFC 7797 unencoded payloads change what is signed; never accept them.
        raise CommandRejected("malformed", "header parameter 'b64' is not supported")
    key = trusted.get(kid)
    if key is None:
        raise CommandRejected("unknown_key", f"kid {kid[:64]!r} is not a trusted key")
    if not isinstance(key, Ed25519PublicKey):
        # A configuration mistake, not the sender's; still refuse rather than crash.
        raise CommandRejected("unknown_key", f"trusted key {kid[:64]!r} is not an Ed25519 public key")

    try:
        signature = b64url_decode(signature_seg)
    except ValueError:
        raise CommandRejected("bad_signature", "signature is not base64url") from None
    if len(signature) != _SIGNATURE_BYTES:
        raise CommandRejected("bad_signature", f"signature is {len(signature)} bytes, Ed25519 needs 64")
    try:
        key.verify(signature, header_seg + b"." + payload_seg)
    except InvalidSignature:
        raise CommandRejected("bad_signature", f"signature does not verify with key {kid[:64]!r}") from None

    try:
        payload = b64url_decode(payload_seg)
    except ValueError:
        raise CommandRejected("malformed", "payload is not base64url") from None
    claims = _json_object(payload, "payload")
    return header, claims


def unverified_claims(token: str | bytes, *, max_bytes: int = MAX_TOKEN_BYTES) -> dict[str, Any] | None:
    """The payload of a token **without** checking anything: for logs and for echoing ``cmd_id``.

    A rejected command still gets an ``ack`` and a ``security`` event; this lets them name the
    ``cmd_id`` the sender claimed. Never trust it for anything else. Returns None if there is no JSON
    object to read; never raises.
    """
    try:
        raw = token.encode("ascii") if isinstance(token, str) else bytes(token)
        if len(raw) > max_bytes:
            return None
        parts = raw.split(b".")
        if len(parts) != 3:
            return None
        return _json_object(b64url_decode(parts[1]), "payload")
    except Exception:
        return None
