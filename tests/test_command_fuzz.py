"""Fuzzing the command channel of a running daemon (issue: signed commands).

More than 10,000 random and mutated messages go to the device's ``cmd/#`` and ``cfg/desired`` through
a real Mosquitto. Afterwards the daemon is still running, has executed nothing, has counted every
message it was sent, and still runs a genuine command.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.commands.claims import make_claims
from edge.commands.jws import b64url_encode, sign
from sim.harness import wait_for
from tests.commands_fixtures import COMMUNE, DEVICE, CommandedDevice

EXAMPLES = 10_500
PREFIX = f"vn/{COMMUNE}/dev/{DEVICE}/"

NAMES = ["device.selftest", "sync.resend", "config.desired", "broadcast.play", "relay.test", "x", "a.b.c"]
#: Topic levels: what a server could plausibly get wrong, including Vietnamese letters. (Control
#: characters and non-characters make Mosquitto drop the *sender*, so they are not sent.)
TOPIC_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-$ đơưăâêôĐỆ"
topics = st.one_of(
    st.sampled_from([f"cmd/{n}" for n in NAMES] + ["cfg/desired"]),
    st.text(alphabet=TOPIC_CHARS, min_size=1, max_size=30).map(lambda t: f"cmd/{t}"),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=6,
)


def _b64json(value: Any) -> str:
    return b64url_encode(json.dumps(value).encode())


def _claims_like(draw: st.DrawFn) -> dict[str, Any]:
    """Claims that are never valid for this device: wrong device, broken fields, or random."""
    base = make_claims(device="counter-02", commune=COMMUNE, name=draw(st.sampled_from(NAMES[:5])), args={})
    base["device"] = draw(st.sampled_from(["counter-02", "", "COUNTER-01", 7, None]))
    for field in draw(st.lists(st.sampled_from(sorted(base)), max_size=3)):
        base[field] = draw(json_values)
    if base.get("device") == DEVICE:
        base["device"] = "counter-02"
    return base


@st.composite
def messages(draw: st.DrawFn, key: Ed25519PrivateKey, kid: str) -> tuple[str, bytes]:
    topic = PREFIX + draw(topics)
    kind = draw(st.integers(0, 6))
    if kind == 0:  # bytes
        payload = draw(st.binary(max_size=600))
    elif kind == 1:  # JSON of any shape
        payload = json.dumps(draw(json_values)).encode()
    elif kind == 2:  # three segments of base64url JSON, random header and claims, random signature
        header = draw(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jwk"]), json_values))
        sig = b64url_encode(draw(st.binary(min_size=0, max_size=80)))
        payload = f"{_b64json(header)}.{_b64json(draw(json_values))}.{sig}".encode()
    elif kind == 3:  # a genuine token, then mutated
        claims = make_claims(device=DEVICE, commune=COMMUNE, name="device.selftest", args={}, life_s=60)
        token = bytearray(sign(claims, key, kid).encode())
        for _ in range(draw(st.integers(1, 4))):
            if not token:
                token.extend(b".")
            op = draw(st.integers(0, 3))
            at = draw(st.integers(0, len(token) - 1))
            if op == 0:
                token[at] = (token[at] + draw(st.integers(1, 255))) % 256  # always a different byte
            elif op == 1:
                del token[at]
            elif op == 2:
                token.insert(at, draw(st.integers(0, 255)))
            else:
                del token[at:]
        payload = bytes(token)
    elif kind == 4:  # signed by a stranger, under our kid or another
        claims = make_claims(device=DEVICE, commune=COMMUNE, name="device.selftest", args={}, life_s=60)
        payload = sign(claims, Ed25519PrivateKey.generate(), draw(st.sampled_from([kid, "other", "x" * 200]))).encode()
    elif kind == 5:  # signed by the trusted key, but claims that are wrong for this device
        payload = sign(_claims_like(draw), key, kid).encode()
    else:  # alg confusion with our kid
        alg = draw(st.sampled_from(["none", "HS256", "RS256", "ES256", "eddsa", "EdDSA ", ""]))
        claims = make_claims(device=DEVICE, commune=COMMUNE, name="device.selftest", args={}, life_s=60)
        payload = (
            f"{_b64json({'alg': alg, 'kid': kid})}.{_b64json(claims)}.{draw(st.sampled_from(['', 'AAAA']))}".encode()
        )
    return topic, payload


def _handled(counters: dict[str, int]) -> int:
    """Messages the channel has finished with: rejected for a reason, or recognised as unchanged."""
    return sum(v for k, v in counters.items() if k.startswith("commands_rejected_")) + counters.get(
        "cfg_desired_unchanged", 0
    )


@pytest.mark.slow
def test_random_and_mutated_commands_never_crash_or_execute(commanded: CommandedDevice) -> None:
    sender = commanded.sender
    published = 0
    pending: list[Future[Any]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(message=messages(commanded.key, commanded.kid))
    def publish(message: tuple[str, bytes]) -> None:
        nonlocal published
        topic, payload = message
        pending.append(sender.link.publish(topic, payload, qos=1))
        published += 1
        if published % 500 == 0:
            for fut in pending:
                fut.result(10)  # the broker has them all
            pending.clear()
            # Keep the device's queue short: the point is that every message is examined.
            assert wait_for(lambda: _handled(commanded.counters()) >= published - 500, 60), commanded.log()[-3000:]

    started = time.monotonic()
    publish()
    assert published >= 10_000

    assert wait_for(lambda: _handled(commanded.counters()) == published, 120), (published, commanded.counters())
    counters = commanded.counters()
    assert counters.get("commands_executed", 0) == 0
    assert counters.get("commands_dropped_queue_full", 0) == 0
    assert commanded.daemon is not None and commanded.daemon.running
    assert "Traceback" not in commanded.log()

    # The flood was reported without burying the store: rejections beyond the budget are summed up.
    security = commanded.events("security")
    assert 0 < len(security) < published
    suppressed = sum(sum(e["data"].get("suppressed", {}).values()) for e in security)
    assert suppressed + len(security) <= published

    # And the device still does what its server asks.
    sent = sender.send(DEVICE, "device.selftest", {}, commanded.key)
    final = sender.wait_ack(sent.cmd_id, 15)
    assert final is not None and final["state"] == "succeeded", commanded.log()[-3000:]
    print(f"{published} messages in {time.monotonic() - started:.1f} s; counters {counters}")
