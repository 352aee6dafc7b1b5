"""The doctor's findings, how they are printed, and the order the checks run in."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Finding:
    """The outcome of one check: ``check`` names it (``broker.tls``), ``detail`` says what was found,
    ``fix`` what to do about it (empty when ``ok``)."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def format_line(f: Finding) -> str:
    """``FAIL broker.tcp       nothing answers on ... -> fix: ...``: one line per check."""
    line = f"{f.status.upper():<4} {f.check:<16} {f.detail}"
    if f.fix:
        line += f" -> fix: {f.fix}"
    return line


def exit_status(findings: Iterable[Finding]) -> int:
    """1 if any check failed, else 0 (warnings do not fail)."""
    return 1 if any(f.status == "fail" for f in findings) else 0


def run_checks(config_file: Path | None, *, quick: bool = False, timeout_s: float = 5.0) -> list[Finding]:
    """Every check, in order; a check that raises unexpectedly is itself reported as a failure."""
    from edge.doctor import hardware, local, network

    ctx = local.load_context(config_file, quick=quick, timeout_s=timeout_s)
    checks: list[Callable[[local.Context], list[Finding]]] = [
        local.check_config,
        local.check_state_dir,
        local.check_store,
        local.check_clock,
        local.check_command_keys,
        local.check_tls_files,
        network.check_broker,
        hardware.check_serial,
        hardware.check_gpio,
        hardware.check_cameras,
        hardware.check_audio,
        hardware.check_speech,
    ]
    findings: list[Finding] = []
    for check in checks:
        try:
            findings.extend(check(ctx))
        except Exception as exc:  # one broken check must not hide the others
            log.debug("check %s failed", check.__name__, exc_info=True)
            name = check.__name__.removeprefix("check_")
            findings.append(
                Finding(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}", "report this")
            )
    return findings
