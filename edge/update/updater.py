"""The ``device.update`` command, and the new version's trial after it.

In the running version (A), ``device.update`` ``{"url", "sha256", "bytes", "version"}``:

1. refuses at once if this daemon does not run from a version under ``update.install_root``
   (``not_installed``), or an update is still on trial (``update_pending``);
2. downloads the wheel from an allowed host (:mod:`edge.fetch`: ``host_not_allowed``, ``bad_hash``,
   ``too_large``, ``unreachable``...), installs it as ``versions/<release>`` and checks it with
   itself (:mod:`edge.update.install`); a version that fails is deleted again and nothing else changed;
3. writes the marker (``pending``), switches ``current`` to the new version, answers ``succeeded``
   with ``"state": "switched"``, and once that answer is in the journal, stops (exit 0: systemd's
   ``Restart=always`` starts ``current/bin/edge run``, now the new version).

Each step is an ``in_progress`` ack and an ``update`` event (``downloading``, ``downloaded``,
``installed``, ``checked``, ``switched``; ``failed`` with the reason). What comes after is reported
by ``update`` events only, because the command has been answered by then:

- the new version (B) starts on trial (``trial``); once every loop is alive, the services have
  started and the broker link is up, steadily for :data:`STEADY_S`, it confirms itself
  (``confirmed``): the marker says so, ``confirmed`` points at it, old versions are pruned;
- if that does not happen within ``health_timeout_s`` of its start, B switches ``current`` back
  and stops (``rolled_back``); if B dies first, the guard at the next start does the same
  (:mod:`edge.update.guard`), and A reports it when it is back.

A daemon that runs from the installation with no update on trial makes ``confirmed`` point at itself
once it is healthy, so a version installed by hand (``scripts/install-pi``) becomes the one the guard
runs from.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import Field, StrictInt

from edge import __version__
from edge.commands.registry import CommandContext, CommandFailed, CommandRegistry
from edge.config import config_path, load_config
from edge.exceptions import ConfigError, EdgeError
from edge.fetch import Fetcher, FetchPolicy, FetchRejected, remove_partials
from edge.model import EdgeModel
from edge.store import formats
from edge.update.guard import roll_back
from edge.update.install import check_release, install_release
from edge.update.layout import CONFIRMED, CURRENT, Installation, release_name
from edge.update.marker import MarkerFile, UpdateMarker

if TYPE_CHECKING:
    from edge.daemon import Daemon

log = logging.getLogger(__name__)

#: A PEP 440 version as wheels carry it (it becomes part of a directory and a file name).
VERSION_PATTERN = r"^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?(\+[a-z0-9]+(\.[a-z0-9]+)*)?$"

#: How long the new version must stay healthy before it confirms itself: a loop that dies right after
#: the link came up is caught by the supervisor's next rounds.
STEADY_S = 5.0
#: How often the trial looks at the daemon.
POLL_S = 0.5
#: How long the answer to ``device.update`` may take to reach the journal before the daemon stops anyway.
ACK_WAIT_S = 30.0
#: How long the ack may take to reach the broker before the daemon stops (it is durable either way).
SEND_WAIT_S = 5.0
#: How long a daemon asked to stop for a switch of versions may take before the process ends anyway.
EXIT_GRACE_S = 60.0
#: The exit status then; systemd's ``Restart=always`` starts the unit again whatever it is.
FORCED_EXIT_STATUS = 75

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
FETCH_DEADLINE_S = 1800.0

#: Install, check, switch and prune one at a time in a process.
_install_lock = threading.Lock()
#: When this process's trial ends (monotonic), once it started: an in-process restart of the daemon
#: (a configuration change) goes on with the same trial rather than starting another.
_trial_lock = threading.Lock()
_trial_deadline: float | None = None


class UpdateArgs(EdgeModel):
    url: str = Field(
        min_length=1, max_length=2048, description="https:// URL of the wheel, on a host in update.allow_hosts."
    )
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="The wheel's sha256, 64 hex digits.")
    bytes: StrictInt = Field(ge=1, description="The wheel's size in bytes.")
    version: str = Field(
        max_length=64, pattern=VERSION_PATTERN, description="The version the wheel installs (its metadata's)."
    )


def _wheel_name(url: str, version: str) -> str:
    """The file name pip is given: the URL's own if it is a wheel of this version, else a pure one."""
    name = PurePosixPath(urlsplit(url).path).name
    tag = r"[A-Za-z0-9_.]+"
    if re.fullmatch(rf"commune_edge-{re.escape(version)}-{tag}-{tag}-{tag}\.whl", name):
        return name
    return f"commune_edge-{version}-py3-none-any.whl"


class Updater:
    """``device.update`` for ``daemon``, the trial of a new version, and reporting how updates ended."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.settings = daemon.config.update
        self.inst = Installation(self.settings.install_root)
        self.markers = MarkerFile(daemon.config.store.state_dir)
        self._seen_running = False

    def register(self, registry: CommandRegistry) -> None:
        # Serial: two updates at once would race for the symlink.
        registry.register(
            "device.update",
            UpdateArgs,
            self._on_update,
            description="Install a signed wheel as a new version, check it, switch to it and restart; "
            "it rolls back by itself if it is not healthy in time.",
            serial=True,
        )

    def start(self) -> None:
        """Report an update that ended while no daemon ran, and watch this start if it runs from the
        installation (a trial, or adopting a version installed by hand)."""
        marker = self.markers.load()
        if marker is not None and marker.state != "pending" and not marker.reported:
            self._report(marker)
        if self.inst.running() is None:
            return
        threading.Thread(target=self._watch, name="update-trial", daemon=True).start()

    # -- the command -------------------------------------------------------------------------------

    def _on_update(self, args: UpdateArgs, ctx: CommandContext) -> dict[str, Any]:
        step = "preparing"
        try:
            with _install_lock:
                return self._update(args, ctx)
        except CommandFailed as exc:
            step = str(exc.result.get("step", step))
            self._event("failed", {"cmd_id": ctx.claims.cmd_id, "to": args.version, "step": step, "reason": exc.reason})
            raise
        except Exception:
            self._event("failed", {"cmd_id": ctx.claims.cmd_id, "to": args.version, "reason": "internal_error"})
            raise

    def _update(self, args: UpdateArgs, ctx: CommandContext) -> dict[str, Any]:
        cmd_id = ctx.claims.cmd_id
        sha = args.sha256.lower()
        running = self.inst.running()
        if running is None:
            raise CommandFailed(
                "not_installed",
                f"this daemon runs from {sys.prefix}, not from a version in {self.inst.versions} (update.install_root)",
            )
        pending = self.markers.load()
        if pending is not None and pending.state == "pending":
            raise CommandFailed("update_pending", f"the update to {pending.to_release} is still on trial")
        release = release_name(args.version, sha)
        if release == running:
            return {"state": "current", "version": args.version, "release": release}
        config_file = self._config_file()
        about = {"cmd_id": cmd_id, "from": __version__, "to": args.version, "release": release}

        fetcher = self._fetcher(args)  # the URL and the size are refused before anything is dialled
        try:
            self._step(ctx, "downloading", {**about, "url": args.url, "bytes": args.bytes})
            wheel = self._download(fetcher, args, sha)
        finally:
            fetcher.close()
        self._step(ctx, "downloaded", {**about, "sha256": sha, "bytes": args.bytes})
        try:
            target = install_release(self.inst, wheel, release, self.settings.check_timeout_s)
        except CommandFailed as exc:
            exc.result.setdefault("step", "install")
            raise
        finally:
            wheel.unlink(missing_ok=True)
        self._step(ctx, "installed", {**about, "path": str(target)})
        try:
            checks = check_release(target, args.version, config_file, self._on_disk(), self.settings.check_timeout_s)
        except CommandFailed:
            if release not in (self.inst.current(), self.inst.confirmed()):
                shutil.rmtree(target, ignore_errors=True)  # it failed; nothing of it stays
            raise
        self._step(ctx, "checked", {**about, "checks": checks})

        marker = UpdateMarker(
            cmd_id=cmd_id,
            from_release=running,
            to_release=release,
            from_version=__version__,
            to_version=args.version,
            sha256=sha,
            health_timeout_s=self.settings.health_timeout_s,
        )
        self.markers.save(marker)  # before the switch: whoever starts next knows it is a trial
        try:
            self.inst.point(CURRENT, release)
        except OSError as exc:
            marker.end("failed", f"could not switch {self.inst.root / CURRENT}: {exc}")
            marker.reported = True  # the failed ack and event say it
            self.markers.save(marker)
            raise CommandFailed("install_failed", marker.reason, {"step": "switch"}) from None
        result = {**about, "previous_release": running, "health_timeout_s": self.settings.health_timeout_s}
        self._step(ctx, "switched", result)
        self._leave_after(cmd_id)
        return {"state": "switched", **result, "checks": checks}

    def _config_file(self) -> Path:
        """The configuration file this daemon was started with, as the new version must read it."""
        path = config_path(None)
        try:
            found = load_config(path)
        except ConfigError as exc:
            raise CommandFailed("config_error", str(exc)) from None
        mine = self.daemon.config
        if found.device.id != mine.device.id or found.store.state_dir != mine.store.state_dir:
            raise CommandFailed(
                "config_error",
                f"{path} is not the configuration this daemon runs with: start edge run with EDGE_CONFIG "
                "naming its file (the systemd unit does)",
            )
        return path

    def _fetcher(self, args: UpdateArgs) -> Fetcher:
        """A fetcher for ``args.url``, checked against ``[update]`` (no I/O)."""
        if args.bytes > self.settings.max_bytes:
            raise CommandFailed(
                "too_large",
                f"{args.bytes} bytes announced; update.max_bytes is {self.settings.max_bytes}",
                {"step": "download"},
            )
        try:
            fetcher = Fetcher(
                FetchPolicy(
                    section="update",
                    allow_hosts=self.settings.allow_hosts,
                    ca_file=self.settings.ca_file,
                    connect_timeout_s=CONNECT_TIMEOUT_S,
                    read_timeout_s=READ_TIMEOUT_S,
                    fetch_deadline_s=FETCH_DEADLINE_S,
                )
            )
        except ConfigError as exc:
            raise CommandFailed("config_error", str(exc), {"step": "download"}) from None
        try:
            fetcher.check_url(args.url)
        except FetchRejected as exc:
            fetcher.close()
            raise CommandFailed(exc.reason, exc.detail, {"step": "download"}) from None
        return fetcher

    def _download(self, fetcher: Fetcher, args: UpdateArgs, sha: str) -> Path:
        downloads = self.inst.downloads
        try:
            downloads.mkdir(mode=0o700, parents=True, exist_ok=True)
            remove_partials(downloads)
            dest = downloads / _wheel_name(args.url, args.version)
            return fetcher.download(args.url, sha, args.bytes, dest, cap=self.settings.max_bytes)
        except FetchRejected as exc:
            raise CommandFailed(exc.reason, exc.detail, {"step": "download"}) from None
        except OSError as exc:
            raise CommandFailed("install_failed", f"{downloads}: {exc}", {"step": "download"}) from None

    def _on_disk(self) -> dict[str, int]:
        """The format numbers of the state on disk now (events.db's meta, desired.json)."""
        from edge.commands.desired import DESIRED_FILE

        return {
            "store_compat": int(self.daemon.outbox.get_meta("format_compat") or 1),
            "desired_compat": formats.desired_file_compat(self.daemon.config.store.state_dir / DESIRED_FILE),
        }

    def _step(self, ctx: CommandContext, state: str, data: dict[str, Any]) -> None:
        ctx.progress({"step": state, **{k: v for k, v in data.items() if k != "cmd_id"}})
        self._event(state, data)

    def _event(self, state: str, data: dict[str, Any]) -> bool:
        """Commit an ``update`` event (critical: what software a device runs is never evicted)."""
        try:
            self.daemon.outbox.append("update", {"state": state, **data}, "critical")
        except EdgeError as exc:
            log.error("could not record the update event %s: %s", state, exc)
            return False
        return True

    def _leave_after(self, cmd_id: str) -> None:
        """Stop the daemon once the command's answer is in the journal (and, briefly, on its way)."""

        def wait_then_leave() -> None:
            journal = self.daemon.journal
            deadline = time.monotonic() + ACK_WAIT_S
            while time.monotonic() < deadline:
                outcome = journal.get(cmd_id)
                if outcome is not None and outcome.state in ("succeeded", "failed"):
                    break
                time.sleep(0.1)
            deadline = time.monotonic() + SEND_WAIT_S
            while time.monotonic() < deadline and journal.pending_replies(limit=1):
                time.sleep(0.1)
            self._leave("switched to the new version")

        threading.Thread(target=wait_then_leave, name="update-restart", daemon=True).start()

    def _leave(self, why: str) -> None:
        """End this process so that the version ``current`` points at runs next: as a stop would
        (SIGTERM, exit 0, systemd's ``Restart=always`` starts the unit again), or, if the daemon does
        not get there in :data:`EXIT_GRACE_S` (a start that hangs), at once."""
        log.warning("stopping: %s", why)

        def force() -> None:
            time.sleep(EXIT_GRACE_S)
            log.critical("the daemon did not stop within %.0f s; exiting", EXIT_GRACE_S)
            os._exit(FORCED_EXIT_STATUS)

        threading.Thread(target=force, name="update-exit", daemon=True).start()
        # A decision taken while the daemon still starts waits for it: before `edge run` handles
        # SIGTERM, the signal would end the process without its orderly stop.
        deadline = time.monotonic() + EXIT_GRACE_S
        while not self.daemon.supervisor.alive() and not self.daemon.supervisor.failed.is_set():
            if time.monotonic() >= deadline:
                return
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    # -- after a switch ----------------------------------------------------------------------------

    def _watch(self) -> None:
        try:
            self._watch_start()
        except Exception:
            log.exception("watching this start for the update failed")

    def _watch_start(self) -> None:
        global _trial_deadline
        running = self.inst.running()
        marker = self.markers.load()
        if marker is not None and marker.state == "pending":
            if marker.to_release != running:
                return  # the version before, between the switch and its stop: nothing to adopt
            with _trial_lock:
                if _trial_deadline is None:
                    if marker.runs >= 1:
                        self._roll_back(marker, f"{marker.to_version} stopped before it was healthy")
                        return
                    marker.runs += 1
                    self.markers.save(marker)
                    _trial_deadline = time.monotonic() + marker.health_timeout_s
                    self._event("trial", {**marker.summary(), "health_timeout_s": marker.health_timeout_s})
            self._trial(marker.to_release, _trial_deadline, marker.health_timeout_s)
        elif running is not None and self.inst.confirmed() != running and self._wait_healthy(None) is None:
            # Healthy with no update on trial: this version (installed by hand) is the known good one.
            with _install_lock:
                if self.inst.confirmed() != running and self.inst.current() == running:
                    self.inst.point(CONFIRMED, running)

    def _trial(self, release: str, deadline: float, timeout_s: float) -> None:
        why = self._wait_healthy(deadline)
        marker = self.markers.load()
        if marker is None or marker.state != "pending" or marker.to_release != release:
            return  # settled meanwhile (by hand)
        if why == "stopped":
            return  # this daemon stopped (or lost a loop): the next start decides
        if why is not None:
            self._roll_back(marker, f"not healthy within {timeout_s:g} s: {why}")
            return
        with _install_lock:
            marker.end("confirmed")
            self.markers.save(marker)
            self.inst.point(CONFIRMED, release)
            self._report(marker)
            log.info("update to %s confirmed", release)
            removed = self.inst.prune(self.settings.keep_versions)
        if removed:
            log.info("old versions deleted: %s", ", ".join(removed))

    def _wait_healthy(self, deadline: float | None) -> str | None:
        """None once the daemon has been healthy for :data:`STEADY_S`; "stopped" if it stopped first;
        else, at ``deadline``, what was wrong."""
        steady: float | None = None
        while True:
            why = self._unhealthy()
            if why == "stopped":
                return why
            now = time.monotonic()
            if why is None:
                steady = now if steady is None else steady
                if now - steady >= STEADY_S:
                    return None
            else:
                steady = None
            if deadline is not None and now >= deadline:
                return why or "not steadily healthy"
            time.sleep(POLL_S)

    def _unhealthy(self) -> str | None:
        """What keeps this daemon from being healthy now (None: nothing); "stopped" once it has stopped."""
        sup = self.daemon.supervisor
        if sup.failed.is_set():
            return "stopped"
        if not sup.alive():
            return "stopped" if self._seen_running else "the daemon has not finished starting"
        self._seen_running = True
        if not self.daemon.link.connected.is_set():
            return "the broker link is not up"
        return None

    def _roll_back(self, marker: UpdateMarker, reason: str) -> None:
        with _install_lock:
            roll_back(self.inst, self.markers, marker, reason)
            self._report(marker)
        self._leave(f"rolled back to {marker.from_release}")

    def _report(self, marker: UpdateMarker) -> None:
        """The outcome of ``marker`` as an ``update`` event, once."""
        if self._event(marker.state, {**marker.summary(), "ended_at": marker.ended_at}):
            marker.reported = True
            self.markers.save(marker)


def register_update(registry: CommandRegistry, daemon: Daemon) -> Updater:
    """Register ``device.update`` for ``daemon`` and start watching this start (see the module)."""
    updater = Updater(daemon)
    updater.register(registry)
    updater.start()
    return updater
