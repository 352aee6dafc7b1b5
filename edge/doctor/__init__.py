"""``edge doctor``: is this device installed so that it works? One line per check, with the fix.

Each check gives a :class:`Finding`: ``ok``, ``warn`` (works, but something is off), ``fail`` (this
stops the device from doing its job) or ``skip`` (not checked: the role does not need it, ``--quick``,
or a check it depends on failed). A finding that is not ``ok`` says what to do, in words a
technician on site can follow.

The checks, in order: the configuration (every problem with its key path, pin and port clashes
among them), the state directory (owner, mode, free space), the event store (opened read-only, its
integrity checked), the clock, the trusted command keys, the TLS files, the broker (DNS, TCP, TLS
handshake, MQTT login and a round trip through the device's own topics; left out by ``--quick``),
then the hardware the roles use: serial ports, GPIO, cameras, audio output and capture, espeak-ng
voices. Nothing is written anywhere: the store is opened read-only, the round trip publishes only a
non-retained ``status`` that tells the truth (online if the daemon runs).
"""

from __future__ import annotations

from edge.doctor.report import Finding, Status, exit_status, format_line, run_checks

__all__ = ["Finding", "Status", "exit_status", "format_line", "run_checks"]
