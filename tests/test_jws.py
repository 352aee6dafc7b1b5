"""JWS compact / EdDSA: what a device accepts, and that nothing else gets through or crashes it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.commands import jws
from edge.commands.jws import REASONS, b64url_decode, b64url_encode, sign, unverified_claims, verify
from edge.exceptions import CommandRejected
from edge.keys import key_id

SERVER_KEY = Ed25519PrivateKey.generate()
KID = key_id(SERVER_KEY)
TRUSTED = {KID: SERVER_KEY.public_key()}
CLAIMS: dict[str, Any] = {
    "v": 1,
    "cmd_id": "0b8f7c9e-3c1a-4f0e-9a55-2f7f2a1d6e01",
    "device": "loa-03",
    "commune": "gia-ray",
    "name": "broadcast.play",
    "args": {"zones": ["khu-pho-1"], "priority": "emergency", "text": "Bão số 3 sắp đổ bộ"},
    "iat": 1_800_000_000,
    "exp": 1_800_000_120,
}
TOKEN = sign(CLAIMS, SERVER_KEY, KID)


def rejected(token: str | bytes, trusted: Any = TRUSTED, **kw: Any) -> CommandRejected:
    with pytest.raises(CommandRejected) as info:
        verify(token, trusted, **kw)
    assert info.value.reason in REASONS
    return info.value


def forge(header: dict[str, Any], claims: dict[str, Any] = CLAIMS, key: Ed25519PrivateKey = SERVER_KEY) -> str:
    """A token with any header, signed with ``key`` over exactly what it carries."""
    h = b64url_encode(json.dumps(header).encode())
    p = b64url_encode(json.dumps(claims).encode())
    return f"{h}.{p}.{b64url_encode(key.sign(f'{h}.{p}'.encode()))}"


def segments(token: str) -> list[str]:
    return token.split(".")


# -- the good path ---------------------------------------------------------------------------------


def test_signed_command_round_trips() -> None:
    header, claims = verify(TOKEN, TRUSTED)
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": KID}
    assert claims == CLAIMS  # including the Vietnamese text, intact


def test_bytes_as_they_come_off_the_wire_are_accepted() -> None:
    assert verify(TOKEN.encode("ascii"), TRUSTED)[1] == CLAIMS


def test_token_is_three_unpadded_base64url_segments() -> None:
    parts = segments(TOKEN)
    assert len(parts) == 3
    assert all("=" not in p and "+" not in p and "/" not in p for p in parts)
    assert len(b64url_decode(parts[2])) == 64


def test_any_trusted_key_may_sign_during_a_key_rotation() -> None:
    new_key = Ed25519PrivateKey.generate()
    trusted = {**TRUSTED, key_id(new_key): new_key.public_key()}
    assert verify(sign(CLAIMS, new_key, key_id(new_key)), trusted)[1] == CLAIMS
    assert verify(TOKEN, trusted)[1] == CLAIMS


# -- tampering -------------------------------------------------------------------------------------


def _flip_decoded(segment: str, index: int) -> str:
    data = bytearray(b64url_decode(segment))
    data[index] ^= 0x01
    return b64url_encode(bytes(data))


@pytest.mark.parametrize("index", [0, 1, 17, 40, -2, -1])
def test_one_flipped_byte_in_the_payload_is_a_bad_signature(index: int) -> None:
    h, p, s = segments(TOKEN)
    assert rejected(f"{h}.{_flip_decoded(p, index)}.{s}").reason == "bad_signature"


@pytest.mark.parametrize("index", [0, 1, 31, 32, 62, 63])
def test_one_flipped_byte_in_the_signature_is_a_bad_signature(index: int) -> None:
    h, p, s = segments(TOKEN)
    assert rejected(f"{h}.{p}.{_flip_decoded(s, index)}").reason == "bad_signature"


def test_every_single_character_change_in_the_payload_is_a_bad_signature() -> None:
    # The signature is checked before the payload is decoded, so even a change that breaks the
    # payload's base64 or JSON is reported as what it is: an altered command.
    h, p, s = segments(TOKEN)
    for i in range(len(p)):
        altered = p[:i] + ("A" if p[i] != "A" else "B") + p[i + 1 :]
        assert rejected(f"{h}.{altered}.{s}").reason == "bad_signature", i


def test_signature_with_nonzero_padding_bits_is_refused() -> None:
    # 64 bytes take 86 characters; the last one carries 2 unused bits. Setting them would decode to
    # the same signature: a lax decoder would accept a token that is not the one signed.
    h, p, s = segments(TOKEN)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(s[-1])
    assert last & 0b11 == 0
    twin = s[:-1] + alphabet[last | 0b01]
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(s + "==")
    assert rejected(f"{h}.{p}.{twin}").reason == "bad_signature"


def test_claims_signed_by_an_untrusted_key_are_a_bad_signature() -> None:
    intruder = Ed25519PrivateKey.generate()
    assert rejected(sign(CLAIMS, intruder, KID)).reason == "bad_signature"


def test_signature_from_another_token_is_a_bad_signature() -> None:
    other = sign({**CLAIMS, "name": "broadcast.stop_all"}, SERVER_KEY, KID)
    h, p, _ = segments(TOKEN)
    assert rejected(f"{h}.{p}.{segments(other)[2]}").reason == "bad_signature"


# -- keys ------------------------------------------------------------------------------------------


def test_unknown_kid_is_unknown_key() -> None:
    err = rejected(sign(CLAIMS, SERVER_KEY, "retired-2024"))
    assert err.reason == "unknown_key"
    assert "retired-2024" in err.detail


@pytest.mark.parametrize("kid", [None, 7, "", ["a"], {"k": 1}])
def test_kid_that_is_not_a_string_is_malformed(kid: Any) -> None:
    header = {"alg": "EdDSA"} if kid is None else {"alg": "EdDSA", "kid": kid}
    assert rejected(forge(header)).reason == "malformed"


def test_misconfigured_trusted_key_rejects_instead_of_crashing() -> None:
    assert rejected(TOKEN, {KID: "not a key object"}).reason == "unknown_key"


# -- algorithms ------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "HS256", "RS256", "ES256", "eddsa", "Ed25519", "", None, 1])
def test_any_alg_but_eddsa_is_refused_and_named(alg: Any) -> None:
    header: dict[str, Any] = {"kid": KID}
    if alg is not None:
        header["alg"] = alg
    err = rejected(forge(header))
    assert err.reason == "bad_signature"
    assert (repr(alg) if alg is not None else "missing") in err.detail


def test_alg_none_with_empty_signature_is_refused() -> None:
    h = b64url_encode(json.dumps({"alg": "none", "kid": KID}).encode())
    p = b64url_encode(json.dumps(CLAIMS).encode())
    assert rejected(f"{h}.{p}.").reason == "bad_signature"


def test_hmac_keyed_with_the_public_key_is_refused() -> None:
    # The classic confusion attack: HS256 with the verifier's public key bytes as the secret.
    import hashlib
    import hmac

    from edge.keys import public_key_raw

    h = b64url_encode(json.dumps({"alg": "HS256", "kid": KID}).encode())
    p = b64url_encode(json.dumps(CLAIMS).encode())
    mac = hmac.new(public_key_raw(SERVER_KEY), f"{h}.{p}".encode(), hashlib.sha256).digest()
    assert rejected(f"{h}.{p}.{b64url_encode(mac)}").reason == "bad_signature"


@pytest.mark.parametrize(
    "extra",
    [{"crit": ["exp"]}, {"crit": []}, {"b64": False}, {"b64": "false"}],
    ids=["crit", "crit-empty", "b64", "b64s"],
)
def test_unsupported_critical_extensions_are_malformed(extra: dict[str, Any]) -> None:
    assert rejected(forge({"alg": "EdDSA", "kid": KID, **extra})).reason == "malformed"


def test_embedded_keys_in_the_header_are_ignored() -> None:
    # A jwk in the header must not be used to verify: the signature is by an intruder's key.
    intruder = Ed25519PrivateKey.generate()
    from edge.keys import public_key_b64

    header = {"alg": "EdDSA", "kid": KID, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": public_key_b64(intruder)}}
    assert rejected(forge(header, key=intruder)).reason == "bad_signature"


def test_duplicate_header_keys_are_malformed() -> None:
    raw = b'{"alg":"EdDSA","kid":"' + KID.encode() + b'","alg":"none"}'
    h = b64url_encode(raw)
    p = b64url_encode(json.dumps(CLAIMS).encode())
    token = f"{h}.{p}.{b64url_encode(SERVER_KEY.sign(f'{h}.{p}'.encode()))}"
    assert rejected(token).reason == "malformed"


# -- not JWS at all --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "hello",
        b"\x00\xff\xfe",
        "a.b",
        "a.b.c.d",
        "...",
        TOKEN + ".",
        "." + TOKEN,
        json.dumps(CLAIMS),
        " " + TOKEN,
        "é" + TOKEN,
        "W10.e30.AAAA",  # [] as header
        "bnVsbA.e30.AAAA",  # null as header
        "eyJhbGciOiJFZERTQSJ9=.e30.AAAA",  # padded
        "eyJhbGciOiJFZERTQSJ9+.e30.AAAA",  # standard base64 alphabet
    ],
)
def test_not_jws_at_all_is_malformed(token: str | bytes) -> None:
    assert rejected(token).reason == "malformed"


@pytest.mark.parametrize("suffix", ["\n", " ", "=", "==", "A"])
def test_anything_after_the_signature_is_a_bad_signature(suffix: str) -> None:
    assert rejected(TOKEN + suffix).reason == "bad_signature"


def test_every_bit_flip_in_the_payload_or_signature_text_is_refused() -> None:
    raw = TOKEN.encode()
    start = len(segments(TOKEN)[0]) + 1
    for i in range(start, len(raw)):
        for bit in range(8):
            altered = bytearray(raw)
            altered[i] ^= 1 << bit
            reason = rejected(bytes(altered)).reason
            # Only a flip that turns a character into a "." changes the shape (then: malformed).
            changes_shape = ord(".") in (raw[i], altered[i])
            assert reason == ("malformed" if changes_shape else "bad_signature"), (i, bit)


def test_header_nested_absurdly_deep_is_malformed() -> None:
    h = b64url_encode(b"[" * 50_000)
    assert rejected(f"{h}.e30.AAAA", max_bytes=1_000_000).reason == "malformed"


def test_payload_that_is_not_an_object_is_malformed_even_when_signed() -> None:
    for payload in (b"[1,2]", b"42", b'"text"', b"{bad json", b"\xff\xfe", b'{"a":NaN}', b'{"a":1,"a":2}'):
        h = b64url_encode(json.dumps({"alg": "EdDSA", "kid": KID}).encode())
        p = b64url_encode(payload)
        token = f"{h}.{p}.{b64url_encode(SERVER_KEY.sign(f'{h}.{p}'.encode()))}"
        assert rejected(token).reason == "malformed", payload


@pytest.mark.parametrize("token", [None, 42, ["a", "b", "c"], {"token": TOKEN}])
def test_wrong_python_types_are_malformed(token: Any) -> None:
    assert rejected(token).reason == "malformed"


# -- size ------------------------------------------------------------------------------------------


def test_oversized_token_is_refused_before_it_is_parsed() -> None:
    big = sign({**CLAIMS, "args": {"text": "x" * 70_000}}, SERVER_KEY, KID)
    err = rejected(big)
    assert err.reason == "malformed"
    assert "oversized" in err.detail
    # ...even when it is validly signed: the cap is a policy, and a smaller cap is the caller's call.
    assert verify(big, TRUSTED, max_bytes=len(big))[1]["args"]["text"] == "x" * 70_000
    assert "oversized" in rejected(TOKEN, max_bytes=len(TOKEN) - 1).detail


def test_non_ascii_text_is_malformed() -> None:
    assert rejected("đ" * 40_000).reason == "malformed"
    assert rejected("đ" * 70_000).reason == "malformed"


# -- signing side ----------------------------------------------------------------------------------


def test_sign_refuses_to_override_alg_or_kid() -> None:
    with pytest.raises(ValueError):
        sign(CLAIMS, SERVER_KEY, KID, extra_headers={"alg": "none"})
    with pytest.raises(ValueError):
        sign(CLAIMS, SERVER_KEY, "")
    header, _ = verify(sign(CLAIMS, SERVER_KEY, KID, extra_headers={"cty": "cmd"}), TRUSTED)
    assert header["cty"] == "cmd"


def test_unverified_claims_reads_cmd_id_for_the_rejection_ack() -> None:
    h, p, s = segments(TOKEN)
    assert unverified_claims(f"{h}.{p}.{_flip_decoded(s, 3)}") == CLAIMS
    assert unverified_claims("garbage") is None
    assert unverified_claims(b"\xff.\xff.\xff") is None
    assert unverified_claims(TOKEN, max_bytes=10) is None


# -- fuzzing ---------------------------------------------------------------------------------------
# verify() raises nothing but CommandRejected with a known reason, and accepts a token only if it is
# exactly the one that was signed.


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _check(token: str | bytes) -> None:
    try:
        _, claims = verify(token, TRUSTED)
    except CommandRejected as exc:
        assert exc.reason in REASONS, exc
        return
    original = TOKEN if isinstance(token, str) else TOKEN.encode()
    assert token == original, f"accepted a modified token: {token!r}"
    assert claims == CLAIMS


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def mutate(script: bytes) -> bytes:
    """The valid token changed as ``script`` says, four bytes per change (op, position, position, value).

    One ``binary`` draw per example (rather than a draw per decision) keeps hypothesis fast enough for
    thousands of examples, and it still shrinks a failure to the fewest, smallest changes.
    """
    data = bytearray(TOKEN.encode())
    for k in range(0, len(script) - 3, 4):
        op, hi, lo, v = script[k : k + 4]
        pos = ((hi << 8) | lo) % (len(data) + 1)
        at = pos % len(data) if data else 0
        match op % 8:
            case 0 if data:  # a bit flipped on the wire
                data[at] ^= 1 << (v % 8)
            case 1 if data:  # a byte replaced by anything
                data[at] = v
            case 2 if data:  # a byte replaced by another base64url character: passes the shape checks
                data[at] = _B64_ALPHABET[v % 64]
            case 3:  # bytes lost
                del data[pos : pos + 1 + v % 8]
            case 4:  # a byte inserted
                data[pos:pos] = bytes([v])
            case 5:  # cut short
                del data[pos:]
            case 6:  # a piece repeated at the end
                data += data[pos : pos + 1 + v % 40]
            case 7:  # segments swapped or repeated
                parts = bytes(data).split(b".")
                i, j = hi % len(parts), lo % len(parts)
                parts[i] = parts[j] if v % 2 else parts[i]
                parts[i], parts[j] = parts[j], parts[i]
                data = bytearray(b".".join(parts))
    return bytes(data)


# Together 10,000 examples: 4,000 arbitrary inputs and 6,000 mutations of a valid token.


@fuzz(4_000)
@given(st.one_of(st.binary(max_size=600), st.text(max_size=300)))
def test_fuzz_random_input_is_only_ever_rejected(token: str | bytes) -> None:
    _check(token)


@fuzz(6_000)
@given(st.binary(min_size=4, max_size=16))
def test_fuzz_mutated_tokens_are_rejected_unless_unchanged(script: bytes) -> None:
    token = mutate(script)
    _check(token)
    _check(token.decode("latin-1"))


INTRUDER = Ed25519PrivateKey.generate()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=4,
)


@st.composite
def structured_tokens(draw: st.DrawFn) -> str:
    """Well-formed JWS with arbitrary headers and payloads, signed by the server or an intruder."""
    header = draw(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jwk", "x"]), json_values))
    if draw(st.booleans()):
        header["alg"] = "EdDSA"
    if draw(st.booleans()):
        header["kid"] = KID
    claims = draw(st.one_of(json_values, st.just(CLAIMS)))
    key = draw(st.sampled_from([SERVER_KEY, INTRUDER]))
    h = b64url_encode(json.dumps(header).encode())
    p = b64url_encode(json.dumps(claims).encode())
    return f"{h}.{p}.{b64url_encode(key.sign(f'{h}.{p}'.encode()))}"


@fuzz(300)
@given(structured_tokens())
def test_fuzz_well_formed_tokens_are_accepted_only_from_the_trusted_key(token: str) -> None:
    try:
        header, claims = verify(token, TRUSTED)
    except CommandRejected as exc:
        assert exc.reason in REASONS
        return
    # Accepted: signed by the trusted key, with the one algorithm we speak, and no extensions.
    assert header["alg"] == "EdDSA" and header["kid"] == KID
    assert "crit" not in header
    assert isinstance(claims, dict)
    assert SERVER_KEY.public_key().verify(b64url_decode(token.split(".")[2]), token.rsplit(".", 1)[0].encode()) is None


def test_module_reasons_match_the_ack_contract() -> None:
    assert {
        "bad_signature",
        "unknown_key",
        "wrong_device",
        "expired",
        "not_yet_valid",
        "too_long_lived",
        "replayed",
        "malformed",
        "unknown_command",
        "invalid_args",
    } >= jws.REASONS
