"""Modbus RTU relay backend: relay boards on RS-485, through pymodbus' serial client.

Each relay is a coil: function 05 (write single coil) switches it and the board echoes the request,
so every switch is acknowledged; with ``readback: true`` the coils are also read back (function 01)
to confirm the relays are where they were told to be. A board that does not answer within the
profile's ``timeout_s`` (after ``retries``) is a :exc:`RelayFault`; the client is dropped and the port
opened again on the next operation.
"""

from __future__ import annotations

import contextlib
import logging

from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from drivers.relay.profile import ModbusRelayProfile
from drivers.relay.serial import SerialRelayBackend
from drivers.resources import Resources
from edge.exceptions import RelayFault

log = logging.getLogger(__name__)

# pymodbus logs every unanswered request at ERROR. The bank reports a dead board once and retries
# quietly, so those records would only fill the journal while a board is unplugged.
logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)


class ModbusBoard(SerialRelayBackend):
    """A Modbus RTU relay board (unit id and serial settings from the profile)."""

    def __init__(
        self, profile: ModbusRelayProfile, *, port: str | None, resources: Resources, holder: str = "relays"
    ) -> None:
        super().__init__(profile, port=port, resources=resources, holder=holder)
        self.profile: ModbusRelayProfile = profile
        self._coils = {name: spec.coil for name, _, spec in profile.relays()}
        self._client: ModbusSerialClient | None = None

    def switch(self, relay: str, closed: bool) -> None:
        """Write the relay's coil (function 05) and check the board's echo."""
        coil = self._coils[relay]
        client = self._connect()
        try:
            response = client.write_coil(coil, closed, device_id=self.profile.unit)
        except ModbusException as exc:
            self._drop()
            raise self._no_answer(exc) from exc
        self._check(response, f"writing coil {coil}")

    def read(self) -> dict[str, bool]:
        """Read the coils from the lowest to the highest the profile uses (function 01)."""
        low, high = min(self._coils.values()), max(self._coils.values())
        client = self._connect()
        try:
            response = client.read_coils(low, count=high - low + 1, device_id=self.profile.unit)
        except ModbusException as exc:
            self._drop()
            raise self._no_answer(exc) from exc
        self._check(response, f"reading coils {low}..{high}")
        bits = list(response.bits)
        if len(bits) < high - low + 1:
            raise RelayFault(f"relay board on {self.where} returned {len(bits)} coils for {low}..{high}")
        return {name: bool(bits[coil - low]) for name, coil in self._coils.items()}

    def close(self) -> None:
        """Close the port."""
        self._drop()

    def _connect(self) -> ModbusSerialClient:
        if self._client is not None:
            return self._client
        path = self._find()
        p = self.profile
        client = ModbusSerialClient(
            path,
            framer=FramerType.RTU,
            baudrate=p.baudrate,
            bytesize=8,
            parity=p.parity,
            stopbits=p.stopbits,
            timeout=p.timeout_s,
            retries=p.retries,
        )
        if not client.connect():
            raise RelayFault(f"relay board at {self._port_name} cannot be opened ({path})")
        self._client, self._open_path = client, path
        log.info("%s: opened the Modbus relay board (unit %s) at %s", self.holder, p.unit, path)
        return client

    def _check(self, response: ModbusPDU, doing: str) -> None:
        if response.isError():
            code = getattr(response, "exception_code", "?")
            raise RelayFault(
                f"relay board on {self.where} (unit {self.profile.unit}) refused {doing}: Modbus exception {code}"
            )

    def _no_answer(self, exc: ModbusException) -> RelayFault:
        log.debug("%s: Modbus request failed: %s", self.holder, exc)
        return self._not_answering(
            f"no reply from unit {self.profile.unit} within {self.profile.timeout_s:g} s "
            f"({self.profile.retries} retries)"
        )

    def _drop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):  # pymodbus may raise anything from a dead port
                self._client.close()
        self._client = None
        self._open_path = None
