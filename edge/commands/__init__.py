"""Signed commands (DESIGN.md §4): nothing moves a relay, plays audio or changes the configuration
without a command signed by the commune server.

This package holds the pieces a command passes through on a device:

- :mod:`edge.commands.jws` - the JWS compact / EdDSA signature (:func:`sign`, :func:`verify`);
- :mod:`edge.commands.claims` - the claims and their checks (:func:`check_claims`, :func:`make_claims`);
- :mod:`edge.commands.channel` - both checks, the replay set and the journal, in the order the device
  makes them (:class:`~edge.commands.channel.CommandChannel`), and :mod:`edge.commands.runner`, where
  accepted commands run.

Every rejection is a :class:`~edge.exceptions.CommandRejected` whose ``reason`` is one of the ``ack``
contract's reasons; :data:`REASONS` lists those these modules give. ``replayed``, ``unknown_command``
and ``invalid_args`` are decided later, by the command channel.
"""

from __future__ import annotations

from edge.commands.claims import Claims, check_claims, make_claims
from edge.commands.jws import sign, unverified_claims, verify

#: The rejection reasons given by signature and claims checks (the channel adds the others).
REASONS = frozenset(
    {"bad_signature", "unknown_key", "malformed", "wrong_device", "not_yet_valid", "expired", "too_long_lived"}
)

__all__ = [
    "REASONS",
    "Claims",
    "check_claims",
    "make_claims",
    "sign",
    "unverified_claims",
    "verify",
]
