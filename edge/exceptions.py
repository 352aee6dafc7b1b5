"""One flat exception tree for the whole project.

Every error the project raises on purpose derives from :class:`EdgeError`, and also from the
built-in exception a caller would naturally catch (``ValueError`` for bad input, ``OSError`` for
trouble with a device or a file), so both ``except EdgeError`` and ``except ValueError`` work.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error raised by commune-edge."""


# -- configuration ---------------------------------------------------------------------------


class ConfigError(EdgeError, ValueError):
    """A configuration that cannot be used. ``problems`` holds ``(key_path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        first = f"{problems[0][0]}: {problems[0][1]}" if problems else "invalid configuration"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{where}{first}{more}")


class BadProfile(ConfigError):
    """A hardware profile (``firmware_config/*.yaml``) that cannot be used."""


class ResourceBusy(EdgeError, ValueError):
    """Two users were configured for one pin, port or device; the message names the holder."""


# -- event store -----------------------------------------------------------------------------


class StoreError(EdgeError, OSError):
    """The event store could not do what was asked."""


class StoreCorrupt(StoreError):
    """The database file failed its integrity check or could not be read as SQLite."""


class StoreFull(StoreError):
    """The disk is full: the event was not committed (and the caller must not acknowledge it)."""


class EventTooLarge(StoreError, ValueError):
    """An event whose data is over the store's size cap: no broker would take it, so it is refused."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


# -- messages and the link -------------------------------------------------------------------


class BadMessage(EdgeError, ValueError):
    """An incoming message that is malformed, oversized or does not follow the contract.

    ``reason`` is a short machine-readable word used for counting (``malformed``, ``oversized``,
    ``schema``, ``wrong_topic``...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class LinkError(EdgeError, ConnectionError):
    """The MQTT link failed in a way the caller should know about (bad URL, refused, timeout)."""


class MessageRefused(LinkError):
    """The broker answered a publish with a failure reason code (e.g. 0x87, not authorised by its ACL):
    sending it again will not help."""


class PacketTooLarge(MessageRefused):
    """The message is larger than the broker takes (over the Maximum Packet Size it announced, or it
    dropped the connection for the size): it can only go out smaller, split or not at all."""


class DroppedAfterSend(LinkError):
    """The connection dropped (not for want of keepalives) soon after this message was sent, before
    the broker acknowledged it. Once, it proves nothing; for the same message on every connection,
    the broker is refusing it without saying so (over a packet size it did not announce)."""


# -- commands --------------------------------------------------------------------------------


class CommandRejected(EdgeError, ValueError):
    """A command that must not run. ``reason`` is one of the reasons of the ``ack`` contract."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# -- hardware --------------------------------------------------------------------------------


class HardwareError(EdgeError, OSError):
    """A device driver could not talk to its hardware."""


class RelayFault(HardwareError):
    """The relay board did not do what it was told (not found, not answering, or reads back otherwise)."""


class ProtocolError(EdgeError, ValueError):
    """A frame from a microcontroller that failed its checksum or grammar."""
