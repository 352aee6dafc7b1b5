"""The device never carries the commune side: nothing a device runs imports ``edge.server``.

Checked twice: in the source (every import statement, also the ones inside functions, of the
device's packages) and in a fresh interpreter that loads the daemon, the whole command line's
parser, the drivers and the simulated devices, then lists what it has loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The commune side, and the two subcommand modules that are its command line (``edge collect``;
#: ``edge verify``, ``report``, ``browse``), which import it only inside their commands.
SERVER_SIDE = {ROOT / "edge" / "server", ROOT / "edge" / "cli" / "collect.py", ROOT / "edge" / "cli" / "report.py"}
SIM_DEVICES = ("audio", "camera_scene", "control", "counter", "counter_camera", "gpio_panel", "gpio_relays",
               "loudspeaker", "pty_device", "rtsp_server", "serial_mcu", "serial_relay")  # fmt: skip


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_device_module_imports_the_commune_side() -> None:
    files = [
        p
        for top in ("edge", "drivers")
        for p in (ROOT / top).rglob("*.py")
        if not any(p == s or s in p.parents for s in SERVER_SIDE)
    ]
    files += [ROOT / "sim" / f"{name}.py" for name in SIM_DEVICES]
    assert len(files) > 50
    offenders = {
        str(p.relative_to(ROOT)): sorted(n for n in imported(p) if n == "edge.server" or n.startswith("edge.server."))
        for p in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_a_device_process_loads_nothing_of_the_commune_side() -> None:
    probe = (
        "import importlib, json, sys\n"
        "import edge.daemon, edge.cli\n"
        "edge.cli.build_parser()\n"
        "import drivers.panel, drivers.relay, drivers.audio, drivers.camera, drivers.profiles\n"
        f"for name in {SIM_DEVICES!r}: importlib.import_module('sim.' + name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('edge'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert "edge.daemon" in loaded and "edge.cli.report" in loaded  # the probe did load the device's code
    assert [m for m in loaded if m == "edge.server" or m.startswith("edge.server.")] == []
