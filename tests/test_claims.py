"""Claims of a signed command: schema, addressee, time window and life, at their exact boundaries."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.clock import CommandTime
from edge.commands import REASONS, Claims, check_claims, make_claims
from edge.commands import claims as claims_module
from edge.exceptions import CommandRejected

DEVICE, COMMUNE = "loa-03", "gia-ray"
NOW = 1_800_000_000
SKEW, MAX_LIFE = 30, 300


def good(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "v": 1,
        "cmd_id": "0b8f7c9e-3c1a-4f0e-9a55-2f7f2a1d6e01",
        "device": DEVICE,
        "commune": COMMUNE,
        "name": "broadcast.play",
        "args": {"zones": ["khu-pho-1"]},
        "iat": NOW,
        "exp": NOW + 60,
    }
    raw.update(changes)
    return raw


def check(raw: Any, now: float | CommandTime = NOW, **kw: Any) -> Claims:
    return check_claims(raw, device=DEVICE, commune=COMMUNE, now=now, **{"skew_s": SKEW, "max_life_s": MAX_LIFE, **kw})


def reason(raw: Any, now: float | CommandTime = NOW, **kw: Any) -> str:
    with pytest.raises(CommandRejected) as info:
        check(raw, now, **kw)
    assert info.value.reason in claims_module.REASONS
    return info.value.reason


def test_good_claims_are_accepted_as_a_typed_model() -> None:
    claims = check(good())
    assert claims.name == "broadcast.play"
    assert claims.args == {"zones": ["khu-pho-1"]}
    assert claims.life_s == 60


# -- schema: malformed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"v": 2},
        {"v": True},  # JSON true is not the number 1
        {"v": 1.0},
        {"v": "1"},
        {"cmd_id": "not-a-uuid"},
        {"cmd_id": "0B8F7C9E-3C1A-4F0E-9A55-2F7F2A1D6E01"},  # same UUID, other spelling: a replay bypass
        {"cmd_id": "0b8f7c9e3c1a4f0e9a552f7f2a1d6e01"},
        {"cmd_id": "{0b8f7c9e-3c1a-4f0e-9a55-2f7f2a1d6e01}"},
        {"cmd_id": 42},
        {"device": "Loa 03"},
        {"device": ""},
        {"commune": None},
        {"name": "play"},  # not dotted
        {"name": "Broadcast.Play"},
        {"name": "broadcast..play"},
        {"name": "broadcast.play;rm -rf"},
        {"name": "a." + "b" * 70},
        {"args": ["khu-pho-1"]},
        {"args": None},
        {"iat": 1_800_000_000.5},
        {"iat": "1800000000"},
        {"iat": True},
        {"iat": -1},
        {"exp": 2**63},
        {"zones": ["all"]},  # unknown claim: a v1 device must not ignore what it does not understand
    ],
    ids=repr,
)
def test_schema_violations_are_malformed(changes: dict[str, Any]) -> None:
    assert reason(good(**changes)) == "malformed"


@pytest.mark.parametrize("key", ["v", "cmd_id", "device", "commune", "name", "args", "iat", "exp"])
def test_every_claim_is_required(key: str) -> None:
    raw = good()
    del raw[key]
    with pytest.raises(CommandRejected) as info:
        check(raw)
    assert info.value.reason == "malformed"
    assert key in info.value.detail


@pytest.mark.parametrize("raw", [[], "claims", None, 42])
def test_claims_that_are_not_an_object_are_malformed(raw: Any) -> None:
    assert reason(raw) == "malformed"


# -- addressee: wrong_device -----------------------------------------------------------------------


def test_another_devices_command_is_wrong_device() -> None:
    assert reason(good(device="loa-04")) == "wrong_device"


def test_same_device_id_in_another_commune_is_wrong_device() -> None:
    # Device ids are unique within a commune only; the commune must match too.
    assert reason(good(commune="xuan-son")) == "wrong_device"


# -- time window: not_yet_valid / expired ----------------------------------------------------------


def test_iat_ahead_by_exactly_the_skew_is_accepted() -> None:
    # iat - skew <= now: a device clock running 30 s behind the server still takes a fresh command.
    check(good(iat=NOW + SKEW, exp=NOW + SKEW + 60))


def test_iat_ahead_by_more_than_the_skew_is_not_yet_valid() -> None:
    assert reason(good(iat=NOW + SKEW + 1, exp=NOW + SKEW + 61)) == "not_yet_valid"
    assert reason(good(iat=NOW + SKEW, exp=NOW + SKEW + 60), now=NOW - 0.001) == "not_yet_valid"


def test_skew_is_configurable() -> None:
    raw = good(iat=NOW + 100, exp=NOW + 160)
    assert reason(raw) == "not_yet_valid"
    check(raw, skew_s=100)
    assert reason(raw, skew_s=0) == "not_yet_valid"


def test_valid_up_to_and_including_exp() -> None:
    check(good(), now=NOW + 60)


def test_after_exp_is_expired_and_the_skew_does_not_extend_it() -> None:
    # The seen-set keeps a cmd_id until exp; accepting later would allow a replay once it is gone.
    assert reason(good(), now=NOW + 60.001) == "expired"
    assert reason(good(), now=NOW + 60 + SKEW - 1) == "expired"


# -- life: too_long_lived --------------------------------------------------------------------------


def test_life_of_exactly_the_maximum_is_accepted() -> None:
    check(good(exp=NOW + MAX_LIFE))


def test_life_beyond_the_maximum_is_too_long_lived() -> None:
    assert reason(good(exp=NOW + MAX_LIFE + 1)) == "too_long_lived"
    assert reason(good(exp=NOW + 60), max_life_s=59) == "too_long_lived"


@pytest.mark.parametrize("exp", [NOW, NOW - 1, 0])
def test_exp_not_after_iat_is_too_long_lived(exp: int) -> None:
    assert reason(good(exp=exp)) == "too_long_lived"


def test_life_is_judged_before_the_clock() -> None:
    # A token that is both too long-lived and expired says what is wrong with the token itself.
    assert reason(good(exp=NOW + 10_000), now=NOW + 20_000) == "too_long_lived"


def test_schema_is_judged_before_the_addressee() -> None:
    assert reason(good(device="loa-04", v=2)) == "malformed"


# -- the signing side ------------------------------------------------------------------------------


def test_make_claims_fills_id_and_times() -> None:
    raw = make_claims(device=DEVICE, commune=COMMUNE, name="sync.resend", args={"from_seq": 10}, now=NOW)
    assert raw["iat"] == NOW and raw["exp"] == NOW + claims_module.DEFAULT_LIFE_S
    assert uuid.UUID(raw["cmd_id"]).version == 4
    assert check(raw).args == {"from_seq": 10}


def test_make_claims_gives_each_command_its_own_id() -> None:
    ids = {make_claims(device=DEVICE, commune=COMMUNE, name="device.selftest")["cmd_id"] for _ in range(100)}
    assert len(ids) == 100


def test_make_claims_refuses_what_no_device_would_accept() -> None:
    with pytest.raises(ValueError, match="device"):
        make_claims(device="Loa 03", commune=COMMUNE, name="device.selftest")
    with pytest.raises(ValueError, match="name"):
        make_claims(device=DEVICE, commune=COMMUNE, name="selftest")
    with pytest.raises(ValueError, match="life_s"):
        make_claims(device=DEVICE, commune=COMMUNE, name="device.selftest", life_s=0)


# -- command time: a clock that is not synchronised ------------------------------------------------


def test_with_only_a_lower_bound_nothing_is_from_the_future() -> None:
    # After a reboot without NTP the device knows only that it is at least NOW; it may be days later.
    at = CommandTime(NOW, "lower_bound", issued_after=NOW - 3600)
    assert check(good(iat=NOW + 2 * 86_400, exp=NOW + 2 * 86_400 + 60), now=at).name == "broadcast.play"


def test_with_only_a_lower_bound_what_expired_before_it_is_expired() -> None:
    at = CommandTime(NOW, "lower_bound", issued_after=NOW - 3600)
    assert reason(good(iat=NOW - 100, exp=NOW - 1), now=at) == "expired"


def test_what_was_issued_before_the_last_synchronised_time_is_expired() -> None:
    at = CommandTime(NOW, "lower_bound", issued_after=NOW + 100, note="clock not synchronised")
    check(good(iat=NOW + 100 - SKEW, exp=NOW + 200), now=at)  # within the skew of it
    with pytest.raises(CommandRejected) as info:
        check(good(iat=NOW + 100 - SKEW - 1, exp=NOW + 200), now=at)
    assert info.value.reason == "expired"
    assert "last synchronised" in info.value.detail and "clock not synchronised" in info.value.detail


def test_an_estimate_of_the_time_is_judged_as_the_time() -> None:
    at = CommandTime(NOW, "same_boot")
    assert reason(good(iat=NOW + SKEW + 1, exp=NOW + SKEW + 61), now=at) == "not_yet_valid"
    assert reason(good(), now=CommandTime(NOW + 61, "same_boot")) == "expired"


def test_without_expiry_everything_else_is_still_checked() -> None:
    # config.desired newer than the applied version: stale by version, not by time.
    late = NOW + 86_400
    assert check(good(), now=late, enforce_exp=False).name == "broadcast.play"
    assert check(good(), now=CommandTime(late, "lower_bound", issued_after=late), enforce_exp=False)
    assert reason(good(device="loa-04"), now=late, enforce_exp=False) == "wrong_device"
    assert reason(good(exp=NOW + MAX_LIFE + 1), now=late, enforce_exp=False) == "too_long_lived"
    assert reason(good(iat=NOW + SKEW + 1, exp=NOW + SKEW + 61), now=NOW, enforce_exp=False) == "not_yet_valid"


# -- fuzz ------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=4,
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["v", "cmd_id", "device", "commune", "name", "args", "iat", "exp", "extra"]), json_values
    ).map(lambda d: {**good(), **d}),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
)
def test_fuzz_claims_only_ever_reject_with_a_contract_reason(raw: dict[str, Any], now: float) -> None:
    try:
        claims = check(raw, now=now)
    except CommandRejected as exc:
        assert exc.reason in REASONS
        return
    assert claims.iat - SKEW <= now <= claims.exp
    assert 0 < claims.exp - claims.iat <= MAX_LIFE
