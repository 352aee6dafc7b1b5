"""The project's two ways of writing JSON, so every producer writes the same bytes.

- :func:`compact` — what goes on the wire and into the stores: no spaces, UTF-8 kept as is, keys in
  the order given. NaN and infinities are refused: they are not JSON, and a server's parser would
  choke on them.
- :func:`canonical` — the same with keys sorted, as bytes: the one form that is hashed or signed
  (the rating chain of DESIGN.md §10 hashes ``canonical({"id", "seq", "type", "ts", "data"})``), so
  a district can recompute it with any JSON library: ``json.dumps(obj, sort_keys=True,
  separators=(",", ":"), ensure_ascii=False).encode("utf-8")``.
"""

from __future__ import annotations

import json
from typing import Any

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True)


def compact(value: Any) -> str:
    """``value`` as compact JSON text (raises ValueError on NaN or an infinity)."""
    return _COMPACT.encode(value)


def canonical(value: Any) -> bytes:
    """``value`` as canonical JSON: sorted keys, no spaces, UTF-8 bytes (raises ValueError on NaN)."""
    return _CANONICAL.encode(value).encode("utf-8")
