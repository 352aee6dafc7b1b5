"""The demo: a simulated counter device syncing through a private Mosquitto to ``edge collect``.

Run by ``scripts/demo``. It starts a broker on a free port, the collector, and a simulated device
(``edge sim``) that emits health and test events; halfway through it kills the broker with
SIGKILL and restarts it, to show that nothing is lost. It ends with a summary of what arrived.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from sim.broker import MosquittoBroker
from sim.harness import EdgeProcess, collector_rows, run_edge, wait_for, write_device_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0, help="how long the device runs")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="commune-edge-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    broker = MosquittoBroker(work / "broker").start()
    print(f"broker      mosquitto on {broker.url} (private, generated config)")
    config = write_device_config(work / "edge.toml", broker.url, extra="", state_dir=work / "state")
    env = {"EDGE_CONFIG": str(config), "EDGE_HEALTH__INTERVAL_S": "3", "EDGE_SYNC__ACK_TIMEOUT_S": "3"}
    db = work / "collector.db"
    collector = EdgeProcess(
        ["collect", "--broker", broker.url, "--db", str(db), "--commune", "gia-ray", "--summary-interval", "0"],
        work / "collector.log",
    ).start()
    device = EdgeProcess(["sim", "--interval", "0.25"], work / "device.log", env).start()
    print(f"device      gia-ray/counter-01 (edge sim), config {config}")
    print(f"collector   edge collect -> {db}")
    try:
        time.sleep(args.seconds / 2)
        print("chaos       broker killed with SIGKILL and restarted")
        broker.kill()
        time.sleep(1.0)
        broker.start()
        time.sleep(args.seconds / 2)
        device.stop()
        committed = {e["id"] for e in json.loads(run_edge(["events", "--json", "--limit", "100000"], env).stdout)}
        wait_for(lambda: committed <= {r[0] for r in collector_rows(db)}, timeout=30)
    finally:
        device.stop()
        summary = collector.stop().strip().splitlines()
        broker.stop()

    stored = collector_rows(db, "SELECT type, COUNT(*), MIN(seq), MAX(seq) FROM events GROUP BY type")
    ids = [r[0] for r in collector_rows(db, "SELECT id FROM events")]
    missing = committed - set(ids)
    print()
    print("delivered to the collector:")
    for etype, n, lo, hi in stored:
        print(f"  {etype:<8} {n:>5} events  (seq {lo}..{hi})")
    for row in collector_rows(db, "SELECT seq, type, ts, data FROM events ORDER BY seq DESC LIMIT 3"):
        print(f"  last: seq {row[0]} {row[1]} at {row[2]} {row[3]}")
    if summary:
        print(f"collector summary: {summary[-1]}")
    print(f"committed on the device: {len(committed)}; stored at the collector: {len(ids)}; missing: {len(missing)}")
    print(f"files kept in {work}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
