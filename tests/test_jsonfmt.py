"""The one canonical JSON form: what a district's own code must reproduce byte for byte."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from edge.jsonfmt import canonical, compact


def test_canonical_form_is_sorted_compact_utf8_and_matches_the_documented_recipe() -> None:
    event = {
        "seq": 7,
        "id": "0193a",
        "type": "rating",
        "ts": "2026-11-21T08:15:30.123+07:00",
        "data": {"text": "Rất hài lòng", "score": 4, "chain": {"prev": "0" * 64, "n": 1}},
    }
    got = canonical(event)
    assert got.startswith(b'{"data":{"chain":{"n":1,"prev":"000')
    assert b" " not in got.replace("Rất hài lòng".encode(), b"")
    assert "Rất hài lòng".encode() in got  # not \\u-escaped
    recipe = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert got == recipe
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(recipe).hexdigest()


def test_compact_keeps_key_order_and_refuses_what_is_not_json() -> None:
    assert compact({"b": 1, "a": "đ"}) == '{"b":1,"a":"đ"}'
    with pytest.raises(ValueError):
        compact({"x": math.nan})
    with pytest.raises(ValueError):
        canonical({"x": math.inf})
