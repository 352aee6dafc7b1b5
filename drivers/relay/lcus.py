"""LCUS relay backend: the common USB relay boards with a CH340 serial chip (LCUS-1/2/4/8).

The board's microcontroller takes 4-byte frames at 9600 baud, ``A0 <channel> <state> <sum>``:
channels from 1, state ``01`` closes and ``00`` opens the relay, ``sum = (0xA0 + channel + state) &
0xFF``. It never answers them. Some firmware answers the status query, a single ``0xFF`` byte, with a
line per channel, ``CH1: ON`` / ``CH1: OFF``; profiles of such boards say ``readback: true``, and then
every switch is confirmed. Without readback a dead board shows only when the port vanishes or a write
fails, because nothing else comes back.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time

import serial

from drivers.relay.profile import LcusRelayProfile
from drivers.relay.serial import SerialRelayBackend
from drivers.resources import Resources
from edge.exceptions import RelayFault

log = logging.getLogger(__name__)

START = 0xA0
QUERY = b"\xff"
_STATUS_LINE = re.compile(rb"CH\s*(\d+)\s*:\s*(ON|OFF)", re.IGNORECASE)

#: How long one read may block while collecting the status reply (the deadline is the profile's).
_READ_SLICE_S = 0.05


def lcus_frame(channel: int, closed: bool) -> bytes:
    """The 4-byte frame that closes (``True``) or opens relay ``channel`` (1-based)."""
    if not 1 <= channel <= 0xFE:
        raise ValueError(f"LCUS channel must be 1..254, got {channel}")
    state = 1 if closed else 0
    return bytes((START, channel, state, (START + channel + state) & 0xFF))


def parse_status(data: bytes) -> dict[int, bool]:
    """Channel states from a status reply (``CH1: ON\\r\\nCH2: OFF\\r\\n...``); later lines win."""
    return {int(m.group(1)): m.group(2).upper() == b"ON" for m in _STATUS_LINE.finditer(data)}


class LcusBoard(SerialRelayBackend):
    """An LCUS/CH340 USB relay board."""

    def __init__(
        self, profile: LcusRelayProfile, *, port: str | None, resources: Resources, holder: str = "relays"
    ) -> None:
        super().__init__(profile, port=port, resources=resources, holder=holder)
        self.profile: LcusRelayProfile = profile
        self._channels = {name: spec.channel for name, _, spec in profile.relays()}
        self._ser: serial.Serial | None = None

    def switch(self, relay: str, closed: bool) -> None:
        """Send the relay's frame, then give the board's microcontroller its pause."""
        ser = self._serial()
        try:
            ser.write(lcus_frame(self._channels[relay], closed))
            ser.flush()
        except (serial.SerialException, OSError) as exc:
            self._drop()
            raise self._not_answering(f"writing failed ({exc})") from exc
        if self.profile.command_gap_ms:
            time.sleep(self.profile.command_gap_ms / 1000)

    def read(self) -> dict[str, bool]:
        """Send the status query ``0xFF`` and read every configured channel from the reply."""
        ser = self._serial()
        wanted = set(self._channels.values())
        timeout = self.profile.reply_timeout_s
        got: dict[int, bool] = {}
        try:
            ser.reset_input_buffer()  # an old, partial reply must not be taken for this one
            ser.write(QUERY)
            ser.flush()
            reply = b""
            deadline = time.monotonic() + timeout
            while not wanted <= got.keys() and time.monotonic() < deadline:
                reply += ser.read(ser.in_waiting or 1)
                got = parse_status(reply)
        except (serial.SerialException, OSError) as exc:
            self._drop()
            raise self._not_answering(f"the status query failed ({exc})") from exc
        missing = sorted(wanted - got.keys())
        if not got:
            raise self._not_answering(f"no answer to the status query within {timeout:g} s")
        if missing:
            raise self._not_answering(
                f"no status for channel {', '.join(map(str, missing))} within {timeout:g} s of the query"
            )
        return {name: got[channel] for name, channel in self._channels.items()}

    def close(self) -> None:
        """Close the port."""
        self._drop()

    def _serial(self) -> serial.Serial:
        if self._ser is not None:
            return self._ser
        path = self._find()
        try:
            ser = serial.Serial(
                path,
                baudrate=self.profile.baudrate,
                timeout=_READ_SLICE_S,
                write_timeout=1.0,  # a wedged USB adapter must not hold the bank's lock for long
                exclusive=True,  # flock: a second process driving the relays fails loudly
            )
        except (serial.SerialException, OSError) as exc:
            raise RelayFault(f"relay board at {self._port_name} cannot be opened: {exc}") from exc
        self._ser, self._open_path = ser, path
        log.info("%s: opened the LCUS relay board at %s", self.holder, path)
        return ser

    def _drop(self) -> None:
        if self._ser is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self._ser.close()
        self._ser = None
        self._open_path = None
