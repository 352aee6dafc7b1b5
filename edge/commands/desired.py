"""Live configuration: the signed, versioned ``cfg/desired`` (DESIGN.md §4, ``config.desired``).

The commune server sends ``{"version": N, "config": {...}}`` where ``config`` is an *overlay* in the
shape of the TOML file (``{"sync": {"max_inflight": 8}, "rating": {...}}``). The device's effective
configuration is always the local file (plus ``EDGE_*`` variables) with the latest applied overlay on
top; a new version replaces the previous overlay rather than stacking on it, so leaving a key out of
version N+1 returns it to the local value.

- A version not newer than the applied one is ignored (the retained message comes back on every
  reconnect).
- **Convergence after downtime.** The server publishes ``cfg/desired`` retained and *without* an MQTT
  message expiry (``edge command send``), so the broker keeps the latest version until the next one
  replaces it, and a device that was off for a day or a week gets it when it comes back. The device
  takes a ``config.desired`` on ``cfg/desired`` whose signed version is newer than the applied one
  even after its ``exp``; every other check stays (signature by a trusted key, device and commune,
  the name, the life at most ``max_life_s``, the replay set, the arguments).

  Why this keeps replay protection: for other commands the time window is what bounds a replay once
  the journal has forgotten the ``cmd_id``. Desired configurations have a stronger bound, the signed
  version: the applied version is on disk (``desired.json``, fsynced) before it is reported, only a
  strictly newer one is taken, and the server only ever signs increasing versions. An old token,
  replayed at any time, is stale by its version and ignored; no version is applied twice and a
  device never goes back to an older one. What expiry no longer does: withdraw a version that was
  signed but never applied; the server withdraws one by publishing a newer version (the same
  overlay as before, for instance). Someone able to publish on ``cfg/desired`` (the broker's ACL
  lets only the server) could hold back the newest version and deliver an older, still newer than
  applied, one: a delay they could cause anyway by dropping messages, and never a rollback.
  Only ``cfg/desired`` converges: a ``config.desired`` sent on ``cmd/config.desired`` expires as
  any command does.
- The merged configuration is validated with the same models as the TOML; any problem rejects the
  whole version, and ``cfg/reported`` names the key path.
- Some keys can only be set on the device itself (:data:`LOCAL_ONLY`): who the device is, where it
  keeps its data, how it reaches the broker and whom it trusts. A server (or a stolen signing key)
  must not be able to cut a device off in a way only a ladder can undo.
- An applied overlay is written to ``<state_dir>/desired.json`` (atomically) before it is reported, and
  is loaded again at start. Changes to keys in :data:`edge.services.LIVE_KEYS` take effect at once;
  any other change restarts the daemon in-process.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

from pydantic import Field, StrictInt

from edge.clock import now_iso
from edge.commands.registry import CommandContext, CommandFailed, CommandRegistry
from edge.config import EdgeConfig, load_config_data, merge_config, parse_config
from edge.exceptions import ConfigError
from edge.messages import CfgReported
from edge.model import EdgeModel
from edge.store import formats
from edge.store.journal import CommandJournal

log = logging.getLogger(__name__)

DESIRED_FILE = "desired.json"

#: Key paths the server may not set (a section, or ``section.key``).
LOCAL_ONLY: tuple[str, ...] = ("device.id", "device.commune", "store.state_dir", "mqtt", "commands", "update")


class DesiredArgs(EdgeModel):
    version: StrictInt = Field(ge=1, description="Monotonic version of the desired configuration.")
    config: dict[str, Any] = Field(description="Overlay on the local configuration, in the TOML's shape.")


def _is_version(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _covered(path: str, keys: tuple[str, ...] | frozenset[str]) -> bool:
    return any(path == k or path.startswith(k + ".") for k in keys)


def changed_keys(old: EdgeConfig, new: EdgeConfig) -> set[str]:
    """Key paths whose effective value differs between two configurations."""
    a = dict(_flatten(old.model_dump(mode="json")))
    b = dict(_flatten(new.model_dump(mode="json")))
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and all(isinstance(k, str) for k in value):
            out.extend(_flatten(value, path + "."))
        else:
            out.append((path, value))
    return out


def is_live(changed: set[str], live_keys: frozenset[str]) -> bool:
    return all(_covered(path, live_keys) for path in changed)


class DesiredStore:
    """The applied overlay on disk: ``<state_dir>/desired.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DESIRED_FILE

    def load(self) -> tuple[int, dict[str, Any]]:
        """``(version, overlay)``; ``(0, {})`` when nothing was ever applied or the file is unreadable."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not formats.desired_readable(data):
                raise ValueError(f"written by a newer version (format_compat {data.get('format_compat')!r})")
            version, overlay = data["version"], data["config"]
            if isinstance(version, int) and isinstance(overlay, dict):
                return version, overlay
            raise ValueError("wrong types")
        except FileNotFoundError:
            return 0, {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring %s: %s", self.path, exc)
            return 0, {}

    def save(self, version: int, overlay: Mapping[str, Any], cmd_id: str) -> None:
        doc = {
            **formats.desired_stamp(),
            "version": version,
            "config": overlay,
            "cmd_id": cmd_id,
            "applied_at": now_iso(),
        }
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def effective_config(base: Mapping[str, Any], overlay: Mapping[str, Any], source: str = "") -> EdgeConfig:
    """The local data with an overlay on top, validated; raises ConfigError with key paths."""
    paths = [path for path, _ in _flatten(overlay)]
    problems = [(p, "can only be set in the local config file") for p in paths if _covered(p, LOCAL_ONLY)]
    if problems:
        raise ConfigError(problems, source)
    return parse_config(merge_config(dict(base), overlay), source)


def load_effective_config(path: str | os.PathLike[str] | None = None) -> tuple[EdgeConfig, dict[str, Any], int]:
    """``(config, base data, applied version)`` for ``edge run`` and ``edge config show``: the local
    file with the last applied overlay. An overlay that no longer fits the local file (it was edited
    since) is left out, with an error in the log, rather than keeping the device from starting."""
    base, source = load_config_data(path)
    config = parse_config(base, source)
    version, overlay = DesiredStore(config.store.state_dir).load()
    if version and overlay:
        try:
            return effective_config(base, overlay, f"{source} + desired version {version}"), base, version
        except ConfigError as exc:
            log.error("the applied desired config (version %d) no longer fits %s: %s", version, source, exc)
    return config, base, version


class DesiredConfig:
    """The ``config.desired`` command: validate, persist, report, then apply."""

    def __init__(
        self,
        config: EdgeConfig,
        base: Mapping[str, Any],
        journal: CommandJournal,
        apply: Callable[[EdgeConfig, set[str]], None],
        on_reply: Callable[[], None],
    ) -> None:
        self.config = config
        self.base = dict(base)
        self.journal = journal
        self.apply = apply
        self.on_reply = on_reply
        self.store = DesiredStore(config.store.state_dir)
        self.version = self.store.load()[0]
        self._lock = threading.Lock()
        self._in_flight: set[int] = set()

    def register(self, registry: CommandRegistry) -> None:
        # Serial: two versions applied at once could leave the older one in force.
        registry.register(
            "config.desired",
            DesiredArgs,
            self._on_desired,
            description="Apply a signed, versioned overlay on the local configuration.",
            serial=True,
        )

    def is_stale(self, version: object) -> bool:
        """Whether ``version`` (as signed, any JSON value) is a version not newer than the applied one,
        or than one accepted and still to be applied. (A device with a persistent session gets the
        latest ``cfg/desired`` twice on reconnect, queued and retained: the second is not news.)"""
        if not _is_version(version):
            return False
        with self._lock:
            return version <= max(self.version, max(self._in_flight, default=0))

    def is_newer(self, version: object) -> bool:
        """Whether ``version`` is a version newer than the applied one (then not stale by time)."""
        return _is_version(version) and version > self.version

    def accepted(self, version: object) -> None:
        """The channel journaled a ``cfg/desired`` of this version; it is applied next."""
        if _is_version(version):
            with self._lock:
                self._in_flight.add(version)

    def report(self, version: int, status: str, reason: str | None = None) -> None:
        payload = CfgReported(version=version, status=status, reason=reason, ts=now_iso())  # type: ignore[arg-type]
        self.journal.reply("cfg/reported", payload.model_dump_json(exclude_none=True).encode(), retain=True)
        self.on_reply()

    def _on_desired(self, args: DesiredArgs, ctx: CommandContext) -> dict[str, Any]:
        try:
            return self._apply_desired(args, ctx)
        finally:
            with self._lock:
                self._in_flight.discard(args.version)

    def _apply_desired(self, args: DesiredArgs, ctx: CommandContext) -> dict[str, Any]:
        if args.version <= self.version:
            raise CommandFailed("stale_version", f"version {args.version} is not newer than {self.version}")
        try:
            new = effective_config(self.base, args.config, f"desired version {args.version}")
        except ConfigError as exc:
            reason = "; ".join(f"{key}: {msg}" for key, msg in exc.problems)
            self.report(args.version, "rejected", reason)
            raise CommandFailed("invalid_config", reason, {"version": args.version}) from None
        changed = changed_keys(self.config, new)
        self.store.save(args.version, args.config, ctx.claims.cmd_id)
        self.version = args.version
        self.report(args.version, "applied")
        log.info("desired config version %d applied (%s)", args.version, ", ".join(sorted(changed)) or "no change")
        self.config = new
        self.apply(new, changed)
        return {"version": args.version, "changed": sorted(changed)}
