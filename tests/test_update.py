"""Software update, the parts that need no daemon: ``[update]``, the command's arguments, the state
formats of ``events.db`` and ``desired.json``, the guard that runs before each start, and pruning.

The installation here is real directories and symlinks laid out as ``edge.update.layout`` describes;
the versions in it are stand-ins (a stamp file, and a deps ``.pth`` where a version takes its
dependencies from another), which is all the guard and the pruning look at. Installing and running
real versions is ``test_update_daemon.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.commands.desired import DesiredStore, effective_config
from edge.config import load_config_data, parse_config
from edge.exceptions import ConfigError, StoreError
from edge.model import problems
from edge.store import Outbox, formats
from edge.update import Installation, MarkerFile, UpdateArgs, UpdateMarker, guard
from edge.update.layout import DEPS_PTH, RELEASE_STAMP
from sim.harness import run_edge, write_device_config

SHA = "ab" * 32


# -- configuration and arguments -------------------------------------------------------------------


def config_with(tmp_path: Path, update_toml: str) -> Path:
    return write_device_config(tmp_path / "edge.toml", "mqtt://127.0.0.1:1883", extra=update_toml)


def test_update_section_defaults_and_every_error_with_its_key_path(tmp_path: Path) -> None:
    data, source = load_config_data(config_with(tmp_path, ""))
    config = parse_config(data, source)
    assert config.update.allow_hosts == []  # no host: every device.update is refused
    assert str(config.update.install_root) == "/opt/commune-edge"
    assert config.update.keep_versions == 2

    bad = config_with(
        tmp_path,
        '[update]\nallow_hosts = ["updates.gia-ray.lan", "https://x/y"]\nhealth_timeout_s = 1\nkeep_versions = 0\n',
    )
    out = run_edge(["config", "validate", "--config", str(bad)], check=False)
    assert out.returncode != 0
    assert "update.allow_hosts[1]:" in out.stdout + out.stderr
    assert "update.health_timeout_s:" in out.stdout + out.stderr
    assert "update.keep_versions:" in out.stdout + out.stderr


def test_update_section_can_only_be_set_in_the_local_file(tmp_path: Path) -> None:
    data, _ = load_config_data(config_with(tmp_path, ""))
    with pytest.raises(ConfigError) as err:
        effective_config(data, {"update": {"allow_hosts": ["elsewhere.example"]}})
    assert err.value.problems == [("update.allow_hosts", "can only be set in the local config file")]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"sha256": SHA, "bytes": 10, "version": "0.2.0"}, "url"),
        ({"url": "https://u/w.whl", "sha256": "ab", "bytes": 10, "version": "0.2.0"}, "sha256"),
        ({"url": "https://u/w.whl", "sha256": SHA, "bytes": 0, "version": "0.2.0"}, "bytes"),
        ({"url": "https://u/w.whl", "sha256": SHA, "bytes": "10", "version": "0.2.0"}, "bytes"),
        ({"url": "https://u/w.whl", "sha256": SHA, "bytes": 10, "version": "../../etc"}, "version"),
        ({"url": "https://u/w.whl", "sha256": SHA, "bytes": 10, "version": "0.2.0", "force": True}, "force"),
    ],
)
def test_device_update_arguments_are_strict(args: dict[str, Any], key: str) -> None:
    with pytest.raises(ValidationError) as err:
        UpdateArgs.model_validate(args)
    assert [k for k, _ in problems(err.value)] == [key]


# -- state formats -----------------------------------------------------------------------------------


def meta(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('format', 'format_compat')").fetchall())
    finally:
        conn.close()


def set_meta(db: Path, **values: str) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            for key, value in values.items():
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
    finally:
        conn.close()


def dump(db: Path) -> list[str]:
    """Everything in a store, as SQL (a checkpoint may move pages between the WAL and the file)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_a_store_records_its_format_and_one_written_before_formats_gets_them(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Outbox(db) as outbox:
        outbox.append("test", {"n": 1})
    assert meta(db) == {"format": str(formats.STORE_FORMAT), "format_compat": str(formats.STORE_COMPAT)}

    # A store from before the formats were recorded: no keys at all, read as format 1.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM meta WHERE key IN ('format', 'format_compat')")
    conn.close()
    with Outbox(db) as outbox:
        assert [e.data for e in outbox.list_events(type="test")] == [{"n": 1}]
    assert meta(db) == {"format": "1", "format_compat": "1"}


def test_a_store_a_newer_compatible_version_wrote_is_used_and_keeps_its_format(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Outbox(db) as outbox:
        outbox.append("test", {"n": 1})
    set_meta(db, format=str(formats.STORE_FORMAT + 1))  # a newer version added what this one can ignore

    with Outbox(db) as outbox:
        outbox.append("test", {"n": 2})
        assert sorted(e.data["n"] for e in outbox.list_events(type="test")) == [1, 2]
    assert meta(db)["format"] == str(formats.STORE_FORMAT + 1)  # not lowered by the older writer


def test_a_store_this_version_cannot_write_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Outbox(db) as outbox:
        outbox.append("test", {"n": 1})
    newer = formats.STORE_FORMAT + 1
    set_meta(db, format=str(newer), format_compat=str(newer))
    before = dump(db)

    with pytest.raises(StoreError) as err:
        Outbox(db)
    assert "newer commune-edge" in str(err.value)
    assert f"format {newer}" in str(err.value)
    assert dump(db) == before
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []  # not quarantined

    # Reading it stays possible: `edge status` on a device rolled back by hand still says what is there.
    with Outbox.open_readonly(db) as outbox:
        assert [e.data for e in outbox.list_events(type="test")] == [{"n": 1}]


def test_desired_json_carries_its_format_and_one_from_a_newer_version_is_left_alone(tmp_path: Path) -> None:
    store = DesiredStore(tmp_path)
    store.save(3, {"sync": {"max_inflight": 4}}, "cmd-1")
    doc = json.loads(store.path.read_text())
    assert (doc["format"], doc["format_compat"]) == (formats.DESIRED_FORMAT, formats.DESIRED_COMPAT)
    assert store.load() == (3, {"sync": {"max_inflight": 4}})

    doc.update(format=formats.DESIRED_FORMAT + 1, format_compat=formats.DESIRED_FORMAT + 1)
    store.path.write_text(json.dumps(doc))
    assert store.load() == (0, {})  # not understood: the server sends its configuration again
    assert json.loads(store.path.read_text()) == doc
    assert formats.desired_file_compat(store.path) == formats.DESIRED_FORMAT + 1


def test_two_versions_take_turns_only_if_each_writes_what_the_other_can() -> None:
    ours = formats.formats()
    same = dict(ours)
    assert formats.compatible(ours, same, {"store_compat": 1, "desired_compat": 1}) == []
    # An older version that knew no formats at all reads as format 1 everywhere.
    assert formats.compatible(ours, {}, {"store_compat": 1, "desired_compat": 1}) == []

    raises_compat = {**ours, "store_format": ours["store_format"] + 1, "store_compat": ours["store_format"] + 1}
    assert formats.compatible(ours, raises_compat, {}) == [
        "the new version writes events.db in a format this version could not write after a rollback"
    ]
    adds_a_table = {**ours, "store_format": ours["store_format"] + 1}
    assert formats.compatible(ours, adds_a_table, {}) == []
    too_old = {**ours, "desired_format": 1}
    assert formats.compatible(ours, too_old, {"desired_compat": 2}) == [
        "desired.json is written in a format the new version does not know (1)"
    ]


# -- the installation, the guard and pruning ---------------------------------------------------------


def fake_version(inst: Installation, release: str, deps_from: str | None = None, complete: bool = True) -> Path:
    """A version directory as the installer leaves it (no real venv: the guard and pruning look at
    the stamp and the deps .pth only)."""
    path = inst.path(release)
    site = path / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    if deps_from is not None:
        (site / DEPS_PTH).write_text(f"# deps\n{inst.path(deps_from) / 'lib/python3.11/site-packages'}\n")
    if complete:
        (path / RELEASE_STAMP).write_text(release + "\n")
    return path


def pending(from_release: str, to_release: str, **kw: Any) -> UpdateMarker:
    return UpdateMarker(
        cmd_id="c0ffee",
        from_release=from_release,
        to_release=to_release,
        from_version=from_release.split("-")[0],
        to_version=to_release.split("-")[0],
        sha256=SHA,
        health_timeout_s=60.0,
        **kw,
    )


@pytest.fixture
def inst(tmp_path: Path) -> Installation:
    inst = Installation(tmp_path / "opt")
    fake_version(inst, "0.1.0-aaaaaaaaaaaa")
    fake_version(inst, "0.2.0-bbbbbbbbbbbb", deps_from="0.1.0-aaaaaaaaaaaa")
    inst.point("current", "0.1.0-aaaaaaaaaaaa")
    inst.point("confirmed", "0.1.0-aaaaaaaaaaaa")
    return inst


def test_symlinks_switch_in_one_rename_and_only_to_complete_versions(inst: Installation) -> None:
    inst.point("current", "0.2.0-bbbbbbbbbbbb")
    assert (inst.root / "current").readlink() == Path("versions/0.2.0-bbbbbbbbbbbb")  # relative
    assert inst.current() == "0.2.0-bbbbbbbbbbbb"
    assert inst.confirmed() == "0.1.0-aaaaaaaaaaaa"
    fake_version(inst, "0.3.0-cccccccccccc", complete=False)  # an install cut short
    with pytest.raises(FileNotFoundError):
        inst.point("current", "0.3.0-cccccccccccc")
    assert inst.current() == "0.2.0-bbbbbbbbbbbb"
    assert sorted(p.name for p in inst.root.iterdir()) == ["confirmed", "current", "versions"]  # no .new left


def test_guard_lets_a_new_version_start_once_then_takes_it_back(inst: Installation, tmp_path: Path) -> None:
    markers = MarkerFile(tmp_path / "state")
    markers.path.parent.mkdir()
    assert guard(inst, markers) == "no update on trial"

    markers.save(pending("0.1.0-aaaaaaaaaaaa", "0.2.0-bbbbbbbbbbbb"))
    inst.point("current", "0.2.0-bbbbbbbbbbbb")
    assert guard(inst, markers).startswith("starting 0.2.0-bbbbbbbbbbbb on trial")
    marker = markers.load()
    assert marker is not None and (marker.state, marker.launches) == ("pending", 1)
    assert inst.current() == "0.2.0-bbbbbbbbbbbb"

    # Started again with no confirmation: the new version stopped before it was healthy.
    assert "rolled back to 0.1.0-aaaaaaaaaaaa" in guard(inst, markers)
    assert inst.current() == "0.1.0-aaaaaaaaaaaa"
    marker = markers.load()
    assert marker is not None
    assert (marker.state, marker.reported) == ("rolled_back", False)  # the old version reports it
    assert marker.reason == "0.2.0 stopped before it was healthy"
    assert guard(inst, markers) == "no update on trial"  # and nothing more happens


def test_guard_rolls_back_a_version_whose_daemon_ran_without_confirming(inst: Installation, tmp_path: Path) -> None:
    # No guard before its first start (edge run by hand), but its daemon counted the run.
    markers = MarkerFile(tmp_path)
    markers.save(pending("0.1.0-aaaaaaaaaaaa", "0.2.0-bbbbbbbbbbbb", runs=1))
    inst.point("current", "0.2.0-bbbbbbbbbbbb")
    guard(inst, markers)
    assert inst.current() == "0.1.0-aaaaaaaaaaaa"


def test_guard_records_a_switch_that_never_happened(inst: Installation, tmp_path: Path) -> None:
    markers = MarkerFile(tmp_path)
    markers.save(pending("0.1.0-aaaaaaaaaaaa", "0.2.0-bbbbbbbbbbbb"))  # power cut before the rename
    assert "did not happen" in guard(inst, markers)
    marker = markers.load()
    assert marker is not None and marker.state == "failed"
    assert inst.current() == "0.1.0-aaaaaaaaaaaa"


def test_the_guard_command_and_update_status(inst: Installation, tmp_path: Path) -> None:
    state = tmp_path / "state"
    extra = f'[update]\ninstall_root = "{inst.root}"\n'
    config = write_device_config(tmp_path / "edge.toml", "mqtt://127.0.0.1:1883", state_dir=state, extra=extra)
    state.mkdir()
    MarkerFile(state).save(pending("0.1.0-aaaaaaaaaaaa", "0.2.0-bbbbbbbbbbbb"))
    inst.point("current", "0.2.0-bbbbbbbbbbbb")

    out = run_edge(["update", "guard", "--config", str(config)])
    assert out.stdout.startswith("edge update guard: starting 0.2.0-bbbbbbbbbbbb on trial")

    report = json.loads(run_edge(["update", "status", "--json", "--config", str(config)]).stdout)
    assert report["current"] == "0.2.0-bbbbbbbbbbbb"
    assert report["confirmed"] == "0.1.0-aaaaaaaaaaaa"
    assert report["last_update"]["state"] == "pending"
    assert report["last_update"]["launches"] == 1
    by_release = {v["release"]: v for v in report["versions"]}
    assert by_release["0.2.0-bbbbbbbbbbbb"]["dependencies_from"] == ["0.1.0-aaaaaaaaaaaa"]
    text = run_edge(["update", "status", "--config", str(config)]).stdout
    assert "last update   0.1.0 -> 0.2.0: pending (on trial, 60 s to be healthy)" in text


def test_pruning_keeps_current_confirmed_and_the_venv_others_take_dependencies_from(
    inst: Installation,
) -> None:
    fake_version(inst, "0.3.0-cccccccccccc", deps_from="0.1.0-aaaaaaaaaaaa")
    fake_version(inst, "0.4.0-dddddddddddd", deps_from="0.1.0-aaaaaaaaaaaa")
    fake_version(inst, "0.5.0-eeeeeeeeeeee", complete=False)  # an install cut short
    now = time.time()
    for age, release in enumerate(["0.4.0-dddddddddddd", "0.3.0-cccccccccccc", "0.2.0-bbbbbbbbbbbb"]):
        stamp = inst.path(release) / RELEASE_STAMP
        os.utime(stamp, (now - 10 * (age + 1), now - 10 * (age + 1)))
    os.utime(inst.path("0.1.0-aaaaaaaaaaaa") / RELEASE_STAMP, (now - 100, now - 100))
    inst.point("current", "0.4.0-dddddddddddd")
    inst.point("confirmed", "0.4.0-dddddddddddd")

    removed = inst.prune(keep=2)

    assert sorted(removed) == ["0.2.0-bbbbbbbbbbbb", "0.5.0-eeeeeeeeeeee"]
    # 0.4.0 (current) and 0.3.0 (the newest other) are kept, and 0.1.0 because both run on its venv.
    assert sorted(p.name for p in inst.versions.iterdir()) == [
        "0.1.0-aaaaaaaaaaaa",
        "0.3.0-cccccccccccc",
        "0.4.0-dddddddddddd",
    ]
    assert inst.releases() == ["0.4.0-dddddddddddd", "0.3.0-cccccccccccc", "0.1.0-aaaaaaaaaaaa"]
