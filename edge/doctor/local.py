"""The doctor's checks of this machine's files: config, state directory, store, clock, keys, TLS files."""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.config import EdgeConfig, config_path, load_config_data, parse_config
from edge.doctor.report import Finding
from edge.exceptions import ConfigError, EdgeError, StoreCorrupt, StoreError
from edge.store.host import pid_alive, read_lock_note

log = logging.getLogger(__name__)

#: The account the unit runs the daemon as (systemd/commune-edge.service).
SERVICE_USER = "commune-edge"
UNIT_FILE = Path("/etc/systemd/system/commune-edge.service")
#: The unit's credentials, for a doctor run from a shell (no $CREDENTIALS_DIRECTORY): id -> source file.
DEFAULT_CREDENTIALS = {
    "device.key": Path("/etc/commune-edge/private/device.key"),
    "mqtt-password": Path("/etc/commune-edge/private/mqtt-password"),
}
#: Below this much free space on the state disk nothing can be committed reliably (SQLite needs room
#: for the WAL and a checkpoint): a failure. Below a tenth of the store's cap, a warning.
MIN_FREE_BYTES = 4 * 1024 * 1024
#: A wall clock further than this from what the device knows about the time is "far off".
CLOCK_FAR_S = 120.0

_CLASH = re.compile(r"(GPIO \d+|serial port \S+|camera \S+|audio device .+) is used by")


@dataclass
class Context:
    """What every check works from. ``config`` is the effective configuration; when the file has
    problems in optional sections it is the configuration without them (so the other checks still
    run), and ``problems`` lists what is wrong."""

    config_file: Path
    quick: bool
    timeout_s: float
    config: EdgeConfig | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    service_user: pwd.struct_passwd | None = None
    #: Filled in by the checks, read by later ones.
    notes: dict[str, Any] = field(default_factory=dict)

    def secret(self, path: Path) -> Path:
        """Where the daemon would read the secret ``path`` from: $CREDENTIALS_DIRECTORY when set, else
        the file the unit's ``LoadCredential=`` names for a relative path."""
        if path.is_absolute():
            return path
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / path).exists():
            return Path(creds) / path
        source = unit_credentials().get(str(path))
        return source if source is not None else path


def unit_credentials(unit: Path = UNIT_FILE) -> dict[str, Path]:
    """The installed unit's ``LoadCredential=ID:PATH`` lines (the shipped ones if it is not installed)."""
    try:
        text = unit.read_text()
    except OSError:
        return dict(DEFAULT_CREDENTIALS)
    found = {}
    for line in text.splitlines():
        if line.startswith("LoadCredential=") and ":" in line:
            ident, _, source = line.removeprefix("LoadCredential=").partition(":")
            found[ident.strip()] = Path(source.strip())
    return found


def load_context(config_file: Path | None, *, quick: bool, timeout_s: float) -> Context:
    ctx = Context(config_path(config_file), quick, timeout_s)
    with contextlib.suppress(KeyError):
        ctx.service_user = pwd.getpwnam(SERVICE_USER)
    try:
        data, source = load_config_data(ctx.config_file)
    except ConfigError as exc:
        ctx.problems = exc.problems
        return ctx
    try:
        from edge.commands.desired import load_effective_config

        ctx.config = load_effective_config(ctx.config_file)[0]
        return ctx
    except ConfigError as exc:
        ctx.problems = exc.problems
    # Leave out the optional sections with problems, so the store, the broker and the rest can
    # still be checked with what is right.
    required = {"device", "mqtt"}
    broken = {p.split(".")[0].split("[")[0] for p, _ in ctx.problems}
    if broken & required or not broken:
        return ctx
    trimmed = {k: v for k, v in data.items() if k not in broken}
    try:
        ctx.config = parse_config(trimmed, source)
        ctx.left_out = sorted(broken)
    except ConfigError:
        pass
    return ctx


def _fix_for(key: str, message: str, file: Path) -> str:
    if key == "(file)":
        if "does not exist" in message:
            return f"write one: edge init --role counter|loudspeaker -o {file} (or run scripts/install-pi)"
        return f"correct {file} (TOML syntax), then run: edge config validate"
    clash = _CLASH.search(message)
    if clash:
        return (
            f"two parts are set to use {clash.group(1)}: give one of them a free one (change the wiring and "
            f"the profile or section named), then run: edge config validate"
        )
    if message == "unknown key":
        return f"remove {key} from {file} or correct its spelling (edge init shows every key)"
    if message == "required key is missing":
        return f"add {key} to {file}"
    return f"correct {key} in {file}, then run: edge config validate"


def check_config(ctx: Context) -> list[Finding]:
    if not ctx.problems and ctx.config is not None:
        c = ctx.config
        return [
            Finding(
                "config",
                "ok",
                f"{ctx.config_file}: device {c.device.id} of {c.device.commune}, roles {', '.join(c.device.roles)}",
            )
        ]
    found = [
        Finding("config", "fail", f"{key}: {msg}", _fix_for(key, msg, ctx.config_file)) for key, msg in ctx.problems
    ]
    if ctx.left_out:
        found.append(
            Finding(
                "config",
                "warn",
                f"checked the rest without the section(s) with problems: {', '.join(ctx.left_out)}",
                "fix the problems above first",
            )
        )
    return found


def _needs_config(ctx: Context, name: str) -> list[Finding] | None:
    if ctx.config is None:
        return [Finding(name, "skip", "not checked: the configuration cannot be read")]
    return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_state_dir(ctx: Context) -> list[Finding]:
    if (skip := _needs_config(ctx, "state")) is not None:
        return skip
    assert ctx.config is not None
    d = ctx.config.store.state_dir
    if not d.exists():
        return [
            Finding(
                "state",
                "warn",
                f"{d} does not exist yet",
                f"start the daemon once (systemctl start commune-edge), or: install -d -m 0750 -o {SERVICE_USER} {d}",
            )
        ]
    if not d.is_dir():
        return [
            Finding("state", "fail", f"{d} is not a directory", "move it away; store.state_dir must be a directory")
        ]
    found: list[Finding] = []
    st = d.stat()
    owner = _user_name(st.st_uid)
    problems: list[str] = []
    fixes: list[str] = []
    if ctx.service_user is not None and os.geteuid() == 0 and st.st_uid != ctx.service_user.pw_uid:
        problems.append(f"owned by {owner}, but the daemon runs as {SERVICE_USER}")
        fixes.append(f"chown -R {SERVICE_USER}:{SERVICE_USER} {d}")
    elif os.geteuid() != 0 and not os.access(d, os.W_OK | os.X_OK):
        problems.append(f"not writable by {_user_name(os.geteuid())}")
        fixes.append(f"run the doctor as {owner} or root, or give the directory to the daemon's user")
    if st.st_mode & stat.S_IRWXO:
        problems.append(f"readable by every user (mode {stat.S_IMODE(st.st_mode):04o})")
        fixes.append(f"chmod 0750 {d}")
    if problems:
        found.append(
            Finding(
                "state",
                "fail" if fixes and "chown" in fixes[0] else "warn",
                f"{d}: " + "; ".join(problems),
                "; ".join(fixes),
            )
        )
    vfs = os.statvfs(d)
    free = vfs.f_bavail * vfs.f_frsize
    total = vfs.f_blocks * vfs.f_frsize
    cap = ctx.config.store.max_bytes
    space = f"{_size(free)} free of {_size(total)} on the disk holding {d}"
    if free < MIN_FREE_BYTES or vfs.f_favail == 0:
        ctx.notes["disk_full"] = True
        why = "no inodes left" if vfs.f_favail == 0 else "the state disk is full"
        found.append(
            Finding(
                "state.disk",
                "fail",
                f"{why}: {space}; new events cannot be committed",
                f"free space on that disk (old logs: journalctl --vacuum-size=50M; files that are not events.db), "
                f"or move store.state_dir to a larger disk; at least {_size(MIN_FREE_BYTES)} is needed",
            )
        )
    elif free < cap / 10:
        found.append(
            Finding(
                "state.disk",
                "warn",
                f"{space}: less than a tenth of the store's cap ({_size(cap)})",
                "free space on that disk, or lower store.max_bytes so the store evicts before the disk fills",
            )
        )
    else:
        found.append(Finding("state.disk", "ok", space))
    if (word := _daemon_on_a_full_disk(d)) is not None:
        found.append(word)
    if not found or all(f.check != "state" for f in found):
        found.insert(0, Finding("state", "ok", f"{d}: owner {owner}, mode {stat.S_IMODE(st.st_mode):04o}"))
    return found


def _daemon_on_a_full_disk(d: Path) -> Finding | None:
    """What a running daemon says of a full disk in its lock note (kept where a full disk does not stop
    it): that it refuses new events, or that it has not even opened its store and waits for room.
    Either way the daemon is up and petting systemd, so only this line tells the technician."""
    from edge.cli.device import DISK_FULL_FIX as fix

    pid, note = read_lock_note(d)
    full = note.get("disk_full")
    if pid is None or not isinstance(full, dict) or not pid_alive(pid):
        return None
    since = full.get("since") or "?"
    if full.get("waiting"):
        return Finding(
            "state.disk",
            "fail",
            f"the daemon (pid {pid}) has waited since {since} for room to open its event store: {full['waiting']}",
            fix,
        )
    refused = int(full.get("refused") or 0)
    said = f"the daemon (pid {pid}) refuses new events since {since}: the disk is full ({refused} refused)"
    return Finding("state.disk", "fail", said, fix)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_store(ctx: Context) -> list[Finding]:
    if (skip := _needs_config(ctx, "store")) is not None:
        return skip
    assert ctx.config is not None
    from edge.store import Outbox

    db = ctx.config.db_path
    found: list[Finding] = []
    aside = sorted(db.parent.glob(db.name + ".corrupt-*")) if db.parent.is_dir() else []
    if aside:
        found.append(
            Finding(
                "store.quarantine",
                "warn",
                f"{len(aside)} damaged store(s) were moved aside, the last {aside[-1].name}",
                "the pending events that could be read were carried over; keep the file for the server team, "
                "and check the SD card (power cuts, wear) if this repeats",
            )
        )
    if not db.exists():
        found.insert(0, Finding("store", "warn", f"no {db} yet", "the daemon creates it at its first start"))
        return found
    try:
        with Outbox.open_readonly(db, max_bytes=ctx.config.store.max_bytes) as outbox:
            result = outbox.integrity_check()
            stats = outbox.stats()
            clock_record = outbox.get_meta("clock")
            daemon = outbox.get_meta("daemon")
    except StoreCorrupt as exc:
        found.insert(0, _corrupt(db, str(exc)))
        return found
    except StoreError as exc:
        text = str(exc)
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            found.insert(0, _corrupt(db, text))
        elif ctx.notes.get("disk_full"):
            # Even reading a WAL store needs room for its shared-memory file.
            found.insert(
                0,
                Finding(
                    "store",
                    "fail",
                    f"cannot open {db} while the disk is full: {text}",
                    "free space on the state disk first (see state.disk); the events in it are kept",
                ),
            )
        else:
            found.insert(
                0,
                Finding(
                    "store",
                    "fail",
                    f"cannot open {db} read-only: {text}",
                    f"check that {db} and its directory belong to {SERVICE_USER} "
                    f"(chown -R {SERVICE_USER}: {db.parent})",
                ),
            )
        return found
    ctx.notes["clock_record"] = clock_record
    ctx.notes["daemon"] = daemon
    if result != "ok":
        found.insert(0, _corrupt(db, result))
        return found
    age = stats.oldest_pending_age_s
    pending = f"{stats.depth} pending" + (f" (oldest {age:.0f} s)" if age is not None else "")
    found.insert(
        0, Finding("store", "ok", f"{db}: integrity ok, epoch {stats.epoch}, {pending}, {_size(stats.db_bytes)}")
    )
    return found


def _corrupt(db: Path, why: str) -> Finding:
    return Finding(
        "store",
        "fail",
        f"{db} is damaged: {why}",
        "restart the daemon (systemctl restart commune-edge): it moves the damaged file aside "
        f"({db.name}.corrupt-...), carries over the pending events it can read and starts a new store; "
        "if it happens again, replace the SD card",
    )


def check_clock(ctx: Context) -> list[Finding]:
    """The kernel's NTP state, then what the device knows about the time: the last synchronised time
    the daemon recorded (in this boot: where the clock should be; after a reboot: a time that has
    certainly passed). The broker check adds the commune server's last word on the time."""
    from edge.clock import SyncRecord, _kernel_synced
    from edge.store.host import boot_id, since_boot

    found: list[Finding] = []
    synced = _kernel_synced()
    flag = Path("/run/systemd/timesync/synchronized").exists()
    now = time.time()
    text = datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds")
    if synced or flag:
        found.append(Finding("clock", "ok", f"{text}, synchronised (NTP)"))
    else:
        found.append(
            Finding(
                "clock",
                "warn",
                f"{text}, not synchronised: events are marked clock_synced=false",
                "let the device reach an NTP server (timedatectl status; systemctl status systemd-timesyncd; "
                "UDP port 123 open to the commune network's time server)",
            )
        )
    raw = ctx.notes.get("clock_record")
    if raw:
        try:
            data = json.loads(raw)
            record = SyncRecord(float(data["wall"]), float(data["boottime"]), str(data["boot_id"]))
        except (ValueError, KeyError, TypeError):
            record = None
        if record is not None:
            up = since_boot()
            if record.boot_id == boot_id() and up >= record.boottime:
                expected = record.wall + (up - record.boottime)
                off = now - expected
                if abs(off) > CLOCK_FAR_S:
                    found.append(_far_off(off, f"from where it was when last synchronised ({_when(record.wall)})"))
            elif now < record.wall + up - CLOCK_FAR_S:
                behind = record.wall + up - now
                found.append(
                    _far_off(-behind, f"at least: it was {_when(record.wall)} when last synchronised, before this boot")
                )
    ctx.notes["now"] = now
    return found


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).astimezone().isoformat(timespec="seconds")


def _far_off(offset_s: float, basis: str) -> Finding:
    way = "behind" if offset_s < 0 else "ahead"
    return Finding(
        "clock.offset",
        "fail",
        f"the clock is {_duration(abs(offset_s))} {way} {basis}",
        "set the time right (timedatectl set-ntp true and let NTP answer, or date -s 'YYYY-MM-DD HH:MM' by hand), "
        "then restart the daemon; a Pi without a battery clock boots with the time it last saved",
    )


def _duration(s: float) -> str:
    if s >= 1.5 * 86400:
        return f"{s / 86400:.1f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.1f} hours"
    if s >= 120:
        return f"{s / 60:.0f} minutes"
    return f"{s:.0f} s"


def check_command_keys(ctx: Context) -> list[Finding]:
    if (skip := _needs_config(ctx, "keys")) is not None:
        return skip
    assert ctx.config is not None
    from edge.keys import key_id, load_trusted_key

    specs = ctx.config.commands.trusted_keys
    if not specs:
        return [
            Finding(
                "keys",
                "warn",
                "no trusted command keys: every command is rejected",
                "add the commune server's key under [commands.trusted_keys] (its kid and public key, from "
                "`edge keys signing show` on the server)",
            )
        ]
    found = []
    good = []
    for kid, spec in specs.items():
        try:
            key = load_trusted_key(spec)
        except (EdgeError, OSError, ValueError) as exc:
            found.append(
                Finding(
                    "keys",
                    "fail",
                    f"commands.trusted_keys.{kid}: {exc}",
                    "put the server's Ed25519 public key there (a PEM file path or the base64url key "
                    "`edge keys signing show` prints)",
                )
            )
            continue
        actual = key_id(key)
        if actual != kid:
            found.append(
                Finding(
                    "keys",
                    "warn",
                    f"commands.trusted_keys.{kid}: the key's own id is {actual}",
                    "the server signs with kid = the key's id: name the entry by it, or commands signed "
                    "with this key are rejected as from an unknown key",
                )
            )
        good.append(kid)
    if good:
        found.insert(0, Finding("keys", "ok", f"{len(good)} trusted command key(s): {', '.join(good)}"))
    return found


def check_tls_files(ctx: Context) -> list[Finding]:
    """The CA, certificate and key files are readable and fit together (no network)."""
    if (skip := _needs_config(ctx, "tls")) is not None:
        return skip
    assert ctx.config is not None
    m = ctx.config.mqtt
    if not m.address.tls:
        return [Finding("tls", "skip", f"{m.broker} is not TLS (mqtt://): no certificates to check")]
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    found: list[Finding] = []
    tls = m.tls
    certs: dict[str, Any] = {}
    for label, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file)):
        if path is None:
            continue
        try:
            certs[label] = x509.load_pem_x509_certificate(path.read_bytes())
        except OSError as exc:
            found.append(
                Finding("tls", "fail", f"mqtt.tls.{label}: cannot read {path}: {exc.strerror}", _perm_fix(path, ctx))
            )
        except ValueError as exc:
            found.append(
                Finding(
                    "tls",
                    "fail",
                    f"mqtt.tls.{label}: {path} is not a PEM certificate: {exc}",
                    f"copy the right file to {path}",
                )
            )
    if tls.key_file is not None:
        key_path = ctx.secret(tls.key_file)
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except OSError as exc:
            found.append(
                Finding(
                    "tls.key",
                    "fail",
                    f"mqtt.tls.key_file: cannot read {key_path}: {exc.strerror}",
                    _perm_fix(key_path, ctx),
                )
            )
        except (ValueError, TypeError) as exc:
            found.append(
                Finding(
                    "tls.key",
                    "fail",
                    f"mqtt.tls.key_file: {key_path} is not an unencrypted PEM private key ({exc})",
                    f"put the device key made by `edge keys device` at {key_path} (mode 0600); if it is lost, make a "
                    "new key and request, and have the commune CA sign it",
                )
            )
        else:
            cert = certs.get("cert_file")
            if cert is not None and cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
                found.append(
                    Finding(
                        "tls.key",
                        "fail",
                        f"{key_path} is not the key of the certificate {tls.cert_file}",
                        "use the certificate the CA signed for this key's request (edge keys device --csr ...)",
                    )
                )
    cert = certs.get("cert_file")
    if cert is not None:
        from edge.pki import certificate_cn

        now = datetime.now(UTC)
        cn = certificate_cn(cert)
        if cert.not_valid_after_utc < now:
            found.append(
                Finding(
                    "tls.cert",
                    "fail",
                    f"the device certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}",
                    "have the commune CA sign a new one (edge keys device --csr ...), or check the clock",
                )
            )
        elif cert.not_valid_before_utc > now:
            found.append(
                Finding(
                    "tls.cert",
                    "fail",
                    f"the device certificate is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                    "the clock is behind: set it right (see clock)",
                )
            )
        if cn != ctx.config.device.id:
            found.append(
                Finding(
                    "tls.cert",
                    "fail",
                    f"the device certificate is for {cn!r}, this device is {ctx.config.device.id!r}",
                    "the broker names a device by its certificate: install this device's own certificate",
                )
            )
    if not any(f.status != "ok" for f in found):
        have = [k for k in ("ca_file", "cert_file") if k in certs] + (["key_file"] if tls.key_file else [])
        found.insert(0, Finding("tls", "ok", f"readable and matching: {', '.join(have) or 'system CAs only'}"))
    return found


def _perm_fix(path: Path, ctx: Context) -> str:
    if not path.exists():
        return f"copy the file to {path} (or correct the path in the config)"
    return (
        f"make it readable by the daemon: under systemd a relative key_file comes from LoadCredential= "
        f"(/etc/commune-edge/private, root, mode 0600); otherwise chown {SERVICE_USER} {path} && chmod 0600 {path}"
    )


def group_access(path: str) -> str | None:
    """Why the service user could not open the device ``path`` (None if it could, or cannot tell)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    user = None
    with contextlib.suppress(KeyError):
        user = pwd.getpwnam(SERVICE_USER)
    if user is None:
        return None if os.access(path, os.R_OK | os.W_OK) else f"{path} is not readable and writable by this user"
    if st.st_uid == user.pw_uid or st.st_mode & 0o006 == 0o006:
        return None
    group = grp.getgrgid(st.st_gid)
    member = user.pw_gid == st.st_gid or SERVICE_USER in group.gr_mem
    if member and st.st_mode & 0o060 == 0o060:
        return None
    return (
        f"{path} belongs to group {group.gr_name} (mode {stat.S_IMODE(st.st_mode):04o}) and {SERVICE_USER} is not in it"
    )


def which(program: str) -> str | None:
    return shutil.which(program)
