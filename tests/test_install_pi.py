"""scripts/install-pi on a fresh Debian Bookworm root made by debootstrap, as on a new Raspberry Pi.

The root is built once a day (``debootstrap --variant=minbase``, about 200 MB) and cached under
``~/.cache/commune-edge-tests``; each test mounts it read-only under an overlay, so every test starts
from the same fresh system and the cache is never changed. Downloaded ``.deb`` files and pip's cache
are kept beside it. systemd does not run in the chroot, as in an image being prepared: install-pi
must install and enable the unit and say that it did not start it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.test_update_daemon import WheelShop

#: The install downloads and sets up a venv in the root: minutes, more on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "commune-edge-tests"
SOURCE_IN_ROOT = "/root/commune-edge"
HOST_CA = "/root/host-ca-certificates.crt"
#: Not part of the installed system: kernel file systems, scratch space, and the caches bound in.
NOT_MANIFESTED = ("proc", "sys", "dev", "run", "tmp", "root/.cache", "var/cache/apt/archives")


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb.debian.org when none is configured)."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"] and len(words) > 2 and "debian" in words[1] and "security" not in words[1]:
                return words[1]
    return "http://deb.debian.org/debian"


def run(cmd: list[str], timeout: float = 1800, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def bookworm_root() -> Path:
    """A pristine minbase Bookworm root, built today or taken from today's cache."""
    if os.geteuid() != 0:
        pytest.skip("debootstrap, chroot and mounts need root")
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed: apt-get install -y debootstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    root = CACHE / f"debootstrap-bookworm-minbase-{datetime.date.today().isoformat()}"
    if root.is_dir():
        return root
    for old in CACHE.glob("debootstrap-bookworm-minbase-*"):
        shutil.rmtree(old, ignore_errors=True)  # yesterday's, or an interrupted build
    partial = root.with_name(root.name + ".partial")
    done = run(["debootstrap", "--variant=minbase", "bookworm", str(partial), debian_mirror()])
    assert done.returncode == 0, f"debootstrap failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    partial.rename(root)
    return root


@dataclass
class Chroot:
    """A fresh root: the cached one under an overlay, with /proc, /dev and the caches mounted."""

    root: Path
    mounts: list[Path] = field(default_factory=list)

    def mount(self, *args: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        done = run(["mount", *args, str(target)])
        assert done.returncode == 0, f"mount {args} {target}: {done.stderr}"
        self.mounts.append(target)

    def sh(self, script: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
            "PIP_CACHE_DIR": "/root/.cache/pip",
        }
        if (self.root / HOST_CA.lstrip("/")).exists():
            env["PIP_CERT"] = HOST_CA
        return run(["chroot", str(self.root), "/bin/bash", "-c", script], timeout=timeout, env=env)

    def unmount_all(self) -> None:
        for target in reversed(self.mounts):
            if run(["umount", str(target)]).returncode != 0:
                run(["umount", "-l", str(target)])
        self.mounts.clear()


@pytest.fixture
def chroot(bookworm_root: Path, tmp_path: Path) -> Iterator[Chroot]:
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "root"
    for d in (upper, work, merged):
        d.mkdir()
    c = Chroot(merged)
    try:
        layers = f"lowerdir={bookworm_root},upperdir={upper},workdir={work}"
        c.mount("-t", "overlay", "overlay", "-o", layers, target=merged)
        c.mount("-t", "proc", "proc", target=merged / "proc")
        c.mount("--rbind", "/dev", target=merged / "dev")
        run(["mount", "--make-rslave", str(merged / "dev")])
        for name, inside in (("apt-archives", "var/cache/apt/archives"), ("pip", "root/.cache/pip")):
            (CACHE / name).mkdir(parents=True, exist_ok=True)
            c.mount("--bind", str(CACHE / name), target=merged / inside)
        shutil.copy("/etc/resolv.conf", merged / "etc/resolv.conf")
        # The certificates this machine's own pip trusts (a proxy that inspects TLS brings its own).
        ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
        if ca.is_file():
            shutil.copy(ca, merged / HOST_CA.lstrip("/"))
        copy_checkout(merged / SOURCE_IN_ROOT.lstrip("/"))
        yield c
    finally:
        c.unmount_all()


def copy_checkout(dest: Path) -> None:
    """The files of this checkout (tracked and new, not ignored ones such as .venv) into ``dest``."""
    listed = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO)
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        src = REPO / name
        if not src.is_file():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def manifest(root: Path) -> dict[str, tuple[object, ...]]:
    """Every file, directory and link of the system: type, mode, owner, and content hash and mtime
    (files) or target (links)."""
    found: dict[str, tuple[object, ...]] = {}
    skip = {root / p for p in NOT_MANIFESTED}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            path = here / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path), st.st_uid, st.st_gid)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, digest)
            else:
                found[rel] = ("other", st.st_mode, st.st_uid, st.st_gid)
    return found


def differences(before: dict[str, tuple[object, ...]], after: dict[str, tuple[object, ...]]) -> list[str]:
    lines = [f"added {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    both = sorted(before.keys() & after.keys())
    lines += [f"changed {p}: {before[p]} -> {after[p]}" for p in both if before[p] != after[p]]
    return lines


def passwd_entry(root: Path, name: str) -> str | None:
    for line in (root / "etc/passwd").read_text().splitlines():
        if line.startswith(name + ":"):
            return line
    return None


def user_ids(root: Path, name: str) -> tuple[int, int]:
    entry = passwd_entry(root, name)
    assert entry is not None, name
    _name, _pw, uid, gid, *_rest = entry.split(":")
    return int(uid), int(gid)


def group_members(root: Path) -> dict[str, list[str]]:
    groups = {}
    for line in (root / "etc/group").read_text().splitlines():
        name, _pw, _gid, members = line.split(":")
        groups[name] = [m for m in members.split(",") if m]
    return groups


INSTALL = (
    f"bash {SOURCE_IN_ROOT}/scripts/install-pi --role counter --device counter-01 --commune gia-ray"
    " --broker mqtts://server.gia-ray.local:8883"
)
#: A shell command run as the daemon's user, as the unit runs it (no capabilities).
AS_DAEMON = "setpriv --reuid=commune-edge --regid=commune-edge --init-groups --bounding-set=-all -- "
OPT = "/opt/commune-edge"


def make_versions(chroot: Chroot, versions: dict[str, tuple[str, str | None]]) -> None:
    """Complete versions made as the daemon makes them on updates, as its user: ``name: (stamp
    time, the version its commune_edge_deps.pth names or None)``."""
    site = chroot.sh(f"cd {OPT}/current && ls -d lib/python3.*/site-packages").stdout.strip()
    assert site, "the installed venv has no site-packages"
    lines = [f"set -e; site={site}"]
    for name, (when, deps) in versions.items():
        d = f"{OPT}/versions/{name}"
        stamp = f"{d}/.commune-edge-release"
        lines.append(f'mkdir -p {d}/$site; echo {name} > {stamp}; touch -d "{when}" {stamp}')
        if deps is not None:
            lines.append(f"echo {OPT}/versions/{deps}/$site > {d}/$site/commune_edge_deps.pth")
    script = "\n".join(lines)
    made = chroot.sh(f"{AS_DAEMON} /bin/bash -c {shlex.quote(script)}")
    assert made.returncode == 0, made.stdout + made.stderr


#: What the daemon does with a signed device.update once the wheel is downloaded (edge.update), run by
#: the installed version as the daemon's user: install it beside the running version, check it with
#: itself, switch current and confirmed, prune.
UPDATE = r"""
import json, sys
from pathlib import Path
from edge.store import formats
from edge.update import Installation
from edge.update.install import check_release, install_release
inst = Installation(Path("/opt/commune-edge"))
wheel, release, version = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
target = install_release(inst, wheel, release, timeout_s=600)
on_disk = {"store_compat": formats.STORE_COMPAT, "desired_compat": formats.DESIRED_COMPAT}
checks = check_release(target, version, Path("/etc/commune-edge/edge.toml"), on_disk, timeout_s=600)
inst.point("current", release)
inst.point("confirmed", release)
print(json.dumps({"checks": checks, "removed": sorted(inst.prune(2))}))
"""


def switch_as_daemon(chroot: Chroot, link: str, release: str) -> None:
    """Point ``link`` at ``release`` as the daemon does (edge.update.layout), as its user."""
    script = f"ln -s versions/{release} {OPT}/.{link}.new && mv -T {OPT}/.{link}.new {OPT}/{link}"
    done = chroot.sh(f"{AS_DAEMON} /bin/bash -c {shlex.quote(script)}")
    assert done.returncode == 0, done.stdout + done.stderr


def test_install_twice_changes_nothing_the_second_time_then_uninstall(chroot: Chroot, tmp_path: Path) -> None:
    root = chroot.root
    assert passwd_entry(root, "commune-edge") is None
    assert not (root / "usr/bin/systemctl").exists()  # a fresh minbase root: no systemd at all

    first = chroot.sh(INSTALL)
    assert first.returncode == 0, f"first install failed:\n{first.stdout}\n{first.stderr}"
    out = first.stdout
    assert "installing Debian packages" in out
    assert "systemd is not running here" in out and "not started" in out
    assert "wrote a starter /etc/commune-edge/edge.toml for the counter role" in out

    # The user and its groups; gpio did not exist on plain Debian and was made.
    entry = passwd_entry(root, "commune-edge")
    assert entry is not None and entry.endswith(":/var/lib/commune-edge:/usr/sbin/nologin")
    members = group_members(root)
    for g in ("gpio", "dialout", "audio", "video"):
        assert "commune-edge" in members[g], g
    # The venv, the symlink, the unit (enabled by hand: no systemctl), config and state.
    current = root / "opt/commune-edge/current"
    assert current.is_symlink() and os.readlink(current).startswith("versions/0.1.0-")
    assert (current / "bin/edge").exists()
    # The guard before every start runs from confirmed: the first version is confirmed as installed.
    confirmed = root / "opt/commune-edge/confirmed"
    assert os.readlink(confirmed) == os.readlink(current)
    release = os.readlink(current).removeprefix("versions/")
    # The installation is the daemon's to update: /opt/commune-edge and versions/ are root's, writable
    # by its group and sticky; the venv and both symlinks are its own, every file of it.
    uid, gid = user_ids(root, "commune-edge")
    for d in (root / "opt/commune-edge", root / "opt/commune-edge/versions"):
        st = d.lstat()
        assert (stat.S_ISDIR(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (True, 0o1775, 0, gid), d
    assert current.lstat().st_uid == confirmed.lstat().st_uid == uid
    not_its_own = chroot.sh(f"find {OPT}/versions/{release} ! -user commune-edge -o ! -group commune-edge")
    assert not_its_own.returncode == 0 and not_its_own.stdout == "", not_its_own.stdout[:2000]
    # The groups install-pi made are recorded where the daemon cannot write.
    record = root / "etc/commune-edge/.install-pi-groups"
    assert record.read_text().split() == ["gpio"] and record.stat().st_uid == 0
    unit = root / "etc/systemd/system/commune-edge.service"
    assert unit.read_bytes() == (REPO / "systemd/commune-edge.service").read_bytes()
    wants = root / "etc/systemd/system/multi-user.target.wants/commune-edge.service"
    assert os.readlink(wants) == "/etc/systemd/system/commune-edge.service"
    config = root / "etc/commune-edge/edge.toml"
    assert 'id = "counter-01"' in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "etc/commune-edge/private").stat().st_mode) == 0o700
    state = root / "var/lib/commune-edge"
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    version = chroot.sh("/opt/commune-edge/current/bin/edge --version")
    assert version.returncode == 0 and "commune-edge 0.1.0" in version.stdout
    validated = chroot.sh("/opt/commune-edge/current/bin/edge config validate --config /etc/commune-edge/edge.toml")
    assert validated.returncode == 0, validated.stdout + validated.stderr

    # The second run: same source, same config: not one file, owner, mode or user differs.
    before = manifest(root)
    second = chroot.sh(INSTALL)
    assert second.returncode == 0, f"second install failed:\n{second.stdout}\n{second.stderr}"
    assert "is already installed" in second.stdout
    assert "keeping the existing /etc/commune-edge/edge.toml" in second.stdout
    assert "installing Debian packages" not in second.stdout
    assert differences(before, manifest(root)) == []

    # Versions come and go on updates, made by the daemon as its user. Then install-pi runs again
    # (keep_versions = 2): it keeps current and the confirmed version, though older than a newer one,
    # and the version the confirmed one takes its dependencies from, though the oldest of all.
    newer, junk, based, base = "9.9.9-dddddddddddd", "0.0.8-bbbbbbbbbbbb", "0.0.9-cccccccccccc", "0.0.7-aaaaaaaaaaaa"
    make_versions(
        chroot,
        {
            base: ("2020-01-01", None),
            junk: ("2021-01-01", None),
            based: ("2022-01-01", base),
            newer: ("tomorrow", None),
        },
    )
    partial = chroot.sh(f"{AS_DAEMON} mkdir {OPT}/versions/0.0.6-eeeeeeeeeeee")  # an install cut short
    assert partial.returncode == 0, partial.stderr
    switch_as_daemon(chroot, "confirmed", based)
    # What root made there the daemon cannot move or replace.
    moved = chroot.sh(f"{AS_DAEMON} mv -T {OPT}/versions {OPT}/elsewhere")
    assert moved.returncode != 0 and (root / "opt/commune-edge/versions").is_dir()
    pruned = chroot.sh(INSTALL)
    assert pruned.returncode == 0, f"third install failed:\n{pruned.stdout}\n{pruned.stderr}"
    gone = {line.split()[-1] for line in pruned.stdout.splitlines() if "removed the old version" in line}
    assert gone == {newer, junk, "0.0.6-eeeeeeeeeeee"}, pruned.stdout
    kept = sorted(p.name for p in (root / "opt/commune-edge/versions").iterdir())
    assert kept == sorted([release, based, base])
    assert os.readlink(current) == f"versions/{release}" and os.readlink(confirmed) == f"versions/{based}"

    # A signed update, as the daemon's user: a wheel of version B installed beside the installed
    # version, its dependencies from that venv, checked with itself, switched to, and the versions
    # nobody needs any more pruned; then the unit's guard, from confirmed.
    b = WheelShop(tmp_path / "wheels")["B"]
    shutil.copy(b.path, root / "tmp" / b.path.name)
    # By the interpreter the daemon runs on: the one its `edge` script names, in versions/.
    python = f"{OPT}/versions/{release}/bin/python"
    assert chroot.sh(f"head -1 {OPT}/current/bin/edge").stdout.strip() == f"#!{python}"
    updated = chroot.sh(f"{AS_DAEMON} {python} -c {shlex.quote(UPDATE)} /tmp/{b.path.name} {b.release} {b.version}")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    result = json.loads(updated.stdout.splitlines()[-1])
    assert result["checks"]["version"] == b.version and result["checks"]["config"] == "valid"
    assert result["removed"] == sorted([based, base])
    assert os.readlink(current) == os.readlink(confirmed) == f"versions/{b.release}"
    assert sorted(p.name for p in (root / "opt/commune-edge/versions").iterdir()) == sorted([release, b.release])
    guarded = chroot.sh(f"EDGE_CONFIG=/etc/commune-edge/edge.toml {AS_DAEMON} {OPT}/confirmed/bin/edge update guard")
    assert guarded.returncode == 0 and "no update on trial" in guarded.stdout, guarded.stdout + guarded.stderr
    version_b = chroot.sh(f"{AS_DAEMON} {OPT}/current/bin/edge --version")
    assert version_b.stdout.strip() == f"commune-edge {b.version}", version_b.stdout + version_b.stderr

    # The unit as installed passes systemd-analyze verify (systemd installed as a Pi has it).
    got_systemd = chroot.sh("apt-get install -y -qq --no-install-recommends systemd >/dev/null")
    assert got_systemd.returncode == 0, got_systemd.stderr
    installed = "/etc/systemd/system/commune-edge.service"
    verify = chroot.sh(f"systemd-analyze verify {installed}")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    security = chroot.sh(f"systemd-analyze security --offline=true --threshold=30 {installed}")
    assert security.returncode == 0, security.stdout + security.stderr
    assert "Overall exposure level for commune-edge.service" in security.stdout

    # The daemon can delete what install-pi installed, as its pruning does once no kept version needs it.
    deleted = chroot.sh(f"{AS_DAEMON} rm -rf {OPT}/versions/{release}")
    assert deleted.returncode == 0, deleted.stderr[:2000]
    assert not (root / "opt/commune-edge/versions" / release).exists()

    # Uninstall: unit, venvs and user go; config and state stay.
    (state / "events.db").write_bytes(b"kept")
    removed = chroot.sh(f"bash {SOURCE_IN_ROOT}/scripts/install-pi --uninstall")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not (root / "opt/commune-edge").exists()
    assert not unit.exists() and not wants.exists()
    assert passwd_entry(root, "commune-edge") is None
    assert "gpio" not in group_members(root)  # made by install-pi, so removed by it
    assert not record.exists()
    assert config.exists() and (state / "events.db").read_bytes() == b"kept"

    # Installing again finds the kept config and state and gives the state to the new user.
    again = chroot.sh(INSTALL)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "keeping the existing /etc/commune-edge/edge.toml" in again.stdout
    uid, gid = user_ids(root, "commune-edge")
    assert (state / "events.db").stat().st_uid == uid
    # The kept config's group was the old user's: the new one must be able to read it.
    assert "gave /etc/commune-edge/edge.toml to the group commune-edge" in again.stdout
    assert config.stat().st_gid == gid

    purged = chroot.sh(f"bash {SOURCE_IN_ROOT}/scripts/install-pi --uninstall --purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not (root / "etc/commune-edge").exists() and not state.exists()
    assert passwd_entry(root, "commune-edge") is None
