"""Installing a downloaded wheel as a new version beside the running one, and checking it with itself.

**Dependencies.** A device in the field may have no internet, so a new version is installed with
``pip install --no-index --no-deps``: the wheel alone. Its venv is made without pip
(``python -m venv --without-pip``, with system site-packages if the running venv has them) and gets
a ``commune_edge_deps.pth`` naming the directories the *running* version takes its dependencies
from: its own ``site-packages`` for a venv made by ``scripts/install-pi``, or the same directories
again for a version installed by an update, so a chain of updates always points at the venv that
really holds numpy, paho-mqtt and the rest (and never deletes it, :meth:`Installation.prune`). A
``.pth`` line only appends its directory to ``sys.path``, after the new venv's own
``site-packages``: the new ``edge`` package is found first, and the ``.pth`` files in the
dependency directory are not run (an editable install of the old version stays out). The wheel is
installed by the running version's pip (``pip --python <new>/bin/python``), whose scripts then name
the new interpreter. A new version whose declared requirements are not all met by those
dependencies is refused: an update carries this project only; new dependencies come with
``scripts/install-pi``.

**Checks**, each run by the new version itself in a process of its own (:func:`check_release`):
its metadata (version as the command says, requirements met, its state formats), ``edge --version``,
``edge config validate`` of this device's configuration, and ``edge doctor --quick``, which may
fail only where the running version's own doctor fails too (a board without its sound card is not
a reason to refuse an update).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge.commands.registry import CommandFailed
from edge.store.formats import compatible, formats
from edge.update.layout import DEPS_PTH, RELEASE_STAMP, Installation, site_packages

log = logging.getLogger(__name__)

#: What the new interpreter reports about the installed version: its version, the requirements its
#: metadata declares that the dependencies do not meet, and the state formats it reads and writes.
PROBE = r"""
import json
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
missing = []
for spec in metadata.requires("commune-edge") or []:
    req = Requirement(spec)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        missing.append(f"{spec} (not installed)")
        continue
    if req.specifier and not req.specifier.contains(have, prereleases=True):
        missing.append(f"{spec} ({have} installed)")
try:
    from edge.store.formats import formats
    found = formats()
except ImportError:
    found = {}
print(json.dumps({"version": metadata.version("commune-edge"), "missing": missing, "formats": found}))
"""

#: Output kept from a step that failed, for the ack.
TAIL_CHARS = 600


def dependency_dirs() -> list[Path]:
    """Where this process's dependencies come from: the directories its own deps ``.pth`` names, or
    else its venv's ``site-packages``; always real paths. A process started through the ``current``
    link would otherwise name ``current/...``, which after the switch is the new venv itself."""
    paths = sysconfig.get_paths()
    own = [Path(paths["purelib"]).resolve()]
    if Path(paths["platlib"]).resolve() != own[0]:
        own.append(Path(paths["platlib"]).resolve())
    pth = own[0] / DEPS_PTH
    try:
        lines = pth.read_text(encoding="utf-8").splitlines()
    except OSError:
        return own
    named = [Path(line.strip()).resolve() for line in lines if line.strip() and not line.startswith(("#", "import"))]
    return named or own


def _system_site_packages() -> bool:
    """Whether the running venv sees the system's site-packages (lgpio from Debian, for example)."""
    try:
        text = (Path(sys.prefix) / "pyvenv.cfg").read_text(encoding="utf-8")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "include-system-site-packages":
            return value.strip().lower() == "true"
    return False


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= TAIL_CHARS else "…" + text[-TAIL_CHARS:]


def _run(step: str, argv: Sequence[str], timeout_s: float, reason: str) -> subprocess.CompletedProcess[str]:
    """Run one step; a non-zero exit or a timeout is a :exc:`CommandFailed` with ``reason``."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired:
        raise CommandFailed(reason, f"{step}: no answer within {timeout_s:g} s", {"step": step}) from None
    except OSError as exc:
        raise CommandFailed(reason, f"{step}: {exc}", {"step": step}) from None
    if done.returncode != 0:
        raise CommandFailed(
            reason,
            f"{step} exited {done.returncode}: {_tail(done.stderr or done.stdout)}",
            {"step": step, "exit_status": done.returncode},
        )
    return done


def install_release(inst: Installation, wheel: Path, release: str, timeout_s: float) -> Path:
    """Install ``wheel`` as ``versions/<release>`` (a version already complete there is kept as it is).

    Raises :exc:`CommandFailed` ``install_failed``; nothing half-installed is left behind.
    """
    target = inst.path(release)
    if inst.is_complete(release):
        log.info("%s is already installed", target)
        return target
    if target.exists():
        shutil.rmtree(target)  # an install a crash cut short
    inst.versions.mkdir(parents=True, exist_ok=True)
    deps = dependency_dirs()
    try:
        venv = [sys.executable, "-m", "venv", "--without-pip"]
        if _system_site_packages():
            venv.append("--system-site-packages")
        _run("venv", [*venv, str(target)], timeout_s, "install_failed")
        site = site_packages(target)
        if site is None:
            raise CommandFailed("install_failed", f"venv: {target} has no lib/python*/site-packages", {"step": "venv"})
        (site / DEPS_PTH).write_text(
            "# The dependencies of this version: those of the version it was installed by.\n"
            + "".join(f"{d}\n" for d in deps),
            encoding="utf-8",
        )
        pip = [sys.executable, "-m", "pip", "--isolated", "--python", str(target / "bin" / "python"), "install"]
        pip += ["--no-index", "--no-deps", "--no-cache-dir", "--disable-pip-version-check"]
        pip += ["--no-warn-script-location", "--quiet", str(wheel)]
        _run("pip install", pip, timeout_s, "install_failed")
        stamp = target / RELEASE_STAMP
        with open(stamp, "w", encoding="utf-8") as f:  # last: it marks the installation complete
            f.write(release + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    log.info("installed %s into %s (dependencies from %s)", wheel.name, target, ", ".join(map(str, deps)))
    return target


def _edge(target: Path, *args: str) -> list[str]:
    return [str(target / "bin" / "edge"), *args]


def doctor_failures(argv: Sequence[str], timeout_s: float) -> tuple[set[str], dict[str, str]]:
    """The checks ``edge doctor --quick --json`` (run as ``argv``) reports as failed, with their details.

    Raises :exc:`CommandFailed` ``health_check_failed`` if it does not answer with its report.
    """
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired:
        raise CommandFailed(
            "health_check_failed", f"doctor: no answer within {timeout_s:g} s", {"step": "doctor"}
        ) from None
    try:
        report = json.loads(done.stdout)
        checks = report["checks"]
        failed = {str(c["check"]): str(c.get("detail", "")) for c in checks if c.get("status") == "fail"}
    except (ValueError, KeyError, TypeError):
        raise CommandFailed(
            "health_check_failed",
            f"doctor exited {done.returncode} without its report: {_tail(done.stderr or done.stdout)}",
            {"step": "doctor", "exit_status": done.returncode},
        ) from None
    return set(failed), failed


def check_release(
    target: Path,
    version: str,
    config_file: Path,
    on_disk: Mapping[str, int],
    timeout_s: float,
) -> dict[str, Any]:
    """Check the version installed at ``target`` with itself; the checks passed, for the ack.

    ``on_disk`` holds the format numbers of the state now on disk (``store_compat``,
    ``desired_compat``). Raises :exc:`CommandFailed`: ``health_check_failed``, ``missing_dependencies``
    or ``incompatible_state``.
    """
    done = _run("probe", [str(target / "bin" / "python"), "-I", "-c", PROBE], timeout_s, "health_check_failed")
    try:
        probe = json.loads(done.stdout)
        found_version, missing, theirs = str(probe["version"]), list(probe["missing"]), dict(probe["formats"])
    except (ValueError, KeyError, TypeError):
        raise CommandFailed("health_check_failed", f"probe: {_tail(done.stdout)}", {"step": "probe"}) from None
    if found_version != version:
        detail = f"the wheel is version {found_version}, the command says {version}"
        raise CommandFailed("health_check_failed", detail, {"step": "probe"})
    if missing:
        raise CommandFailed(
            "missing_dependencies",
            "not on this device: " + "; ".join(missing) + " (install that version with scripts/install-pi)",
            {"step": "probe", "missing": missing},
        )
    problems = compatible(formats(), theirs, on_disk)
    if problems:
        raise CommandFailed("incompatible_state", "; ".join(problems), {"step": "formats", "formats": theirs})

    done = _run("edge --version", _edge(target, "--version"), timeout_s, "health_check_failed")
    if done.stdout.split()[-1:] != [version]:
        raise CommandFailed(
            "health_check_failed", f"edge --version says {done.stdout.strip()!r}", {"step": "edge --version"}
        )
    config = ["--config", str(config_file)]
    _run("edge config validate", _edge(target, "config", "validate", *config), timeout_s, "health_check_failed")

    before, _ = doctor_failures([sys.executable, "-m", "edge", "doctor", "--quick", "--json", *config], timeout_s)
    after, details = doctor_failures(_edge(target, "doctor", "--quick", "--json", *config), timeout_s)
    new = sorted(after - before)
    if new:
        raise CommandFailed(
            "health_check_failed",
            "edge doctor --quick with the new version: " + "; ".join(f"{c}: {details[c]}" for c in new),
            {"step": "doctor", "failed": new},
        )
    return {
        "version": found_version,
        "formats": theirs,
        "config": "valid",
        "doctor": "no new failures" + (f" (failing before too: {', '.join(sorted(after))})" if after else ""),
    }
