"""What every simulated device of ``edge sim`` shares: the control socket, the printed records, scenarios.

A person or a test drives a simulated device with JSON requests (``{"cmd": ...}``), from a scenario file
(:meth:`SimControl.run_scenario`) or over a Unix socket (:meth:`SimControl.serve`: one JSON object per
line, one JSON reply per line). What the simulated hardware did goes out as records
(:meth:`SimControl._emit`), kept for the ``outputs`` request and printed on a thread of their own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from edge.exceptions import EdgeError

log = logging.getLogger(__name__)

#: Records kept for the ``outputs`` request.
KEPT_OUTPUTS = 2000

Printer = Callable[[dict[str, Any]], None]


class SimError(EdgeError, ValueError):
    """A request the simulated device cannot carry out (unknown command, no such button...)."""


class SimControl(ABC):
    """A simulated device driven by requests. ``stop()`` is idempotent and ends with the printing.

    ``printer`` prints one record (as text or a JSON line). A subclass calls ``__init__`` before its
    first record, carries out requests in :meth:`_handle` and stops its hardware in :meth:`_shut_down`.
    """

    request_errors: ClassVar[tuple[type[Exception], ...]] = (EdgeError, ValueError, TypeError, KeyError)
    """What a failing request raises: the reply says it, the simulator goes on."""

    def __init__(self, printer: Printer) -> None:
        self._print = printer
        # Printing goes through a queue: a slow terminal or a full pipe must never hold up the driver
        # threads (pin callbacks, the panel's dispatcher, the services' observers) that emit records.
        self._printing: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10000)
        self._printer = threading.Thread(target=self._print_loop, name="sim-print", daemon=True)
        self._printer.start()
        self._lock = threading.Lock()
        self._outputs: list[dict[str, Any]] = []
        self._stopped = threading.Event()
        self._server: socket.socket | None = None
        self.control_path: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Close the control socket, stop the device (:meth:`_shut_down`), then the printing. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()
            if self.control_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.control_path.unlink()
        self._shut_down()
        with contextlib.suppress(queue.Full):
            self._printing.put(None, timeout=1)
        self._printer.join(timeout=2)

    @abstractmethod
    def _shut_down(self) -> None:
        """Stop the daemon and the simulated hardware (after the control socket, before the printing)."""

    def note(self, text: str) -> None:
        """Print a line of the simulator's own (where the control socket is, ...)."""
        self._emit("sim", {"text": text})

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a ``stop`` request (True) or ``timeout``."""
        return self._stopped.wait(timeout)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` has begun."""
        return self._stopped.is_set()

    # -- requests ----------------------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Carry out one request; the reply has ``ok`` and either the result or an ``error``."""
        try:
            result = self._handle(dict(request))
        except self.request_errors as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, **(result or {})}

    @abstractmethod
    def _handle(self, req: dict[str, Any]) -> dict[str, Any] | None:
        """Carry out ``req`` (a copy of the request); return what the reply adds to ``ok``."""

    def run_scenario(self, steps: Iterable[dict[str, Any]]) -> bool:
        """Run requests in order; stops at the first that fails (printed). True if all succeeded."""
        for step in steps:
            if self.stopping:
                return False
            reply = self.handle(step)
            if not reply["ok"]:
                self._emit("error", {"request": step, "error": reply["error"]})
                return False
        return True

    def _outputs_reply(self, req: dict[str, Any]) -> dict[str, Any]:
        """The reply to ``outputs``: the last ``last`` records (200 unless told)."""
        with self._lock:
            return {"outputs": list(self._outputs[-int(req.get("last", 200)) :])}

    def _stop_soon(self) -> None:
        """The ``stop`` request: stop on another thread, so the reply still goes out."""
        threading.Thread(target=self.stop, name="sim-stop", daemon=True).start()

    # -- the control socket ------------------------------------------------------------------------

    def serve(self, path: Path) -> None:
        """Listen for JSON-lines requests on a Unix socket at ``path`` (in the background)."""
        # Bound and listening under a temporary name, then renamed into place: whoever sees ``path``
        # appear can connect at once (a client between bind and listen would be refused).
        staging = path.with_name(f".{os.getpid()}.sock")  # no longer than most names: AF_UNIX paths are short
        for stale in (path, staging):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(staging))
        os.chmod(staging, 0o600)
        server.listen(4)
        os.replace(staging, path)
        self._server, self.control_path = server, path
        threading.Thread(target=self._accept, args=(server,), name="sim-control", daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while not self.stopping:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), name="sim-client", daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for raw in f:
                try:
                    request = json.loads(raw)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    reply = self.handle(request)
                except ValueError as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                try:
                    f.write(json.dumps(reply, ensure_ascii=False, default=str).encode() + b"\n")
                    f.flush()
                except OSError:
                    return

    # -- what the hardware did ---------------------------------------------------------------------

    def _emit(self, what: str, detail: dict[str, Any]) -> None:
        record = {"t": datetime.now().astimezone().isoformat(timespec="milliseconds"), "what": what, **detail}
        with self._lock:
            self._outputs.append(record)
            del self._outputs[:-KEPT_OUTPUTS]
        with contextlib.suppress(queue.Full):
            self._printing.put_nowait(record)

    def _print_loop(self) -> None:
        while True:
            record = self._printing.get()
            if record is None:
                return
            try:
                self._print(record)
            except Exception:  # stdout gone (a closed pipe): keep simulating
                log.debug("printing failed", exc_info=True)
