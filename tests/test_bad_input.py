"""Bad input on the wire: rejected with a reason, counted, never a crash and never a loss."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt

from sim.harness import collector_rows, daemon_link, run_edge, wait_for


def raw_client(broker) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="vandal", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def publish_all(client: mqtt.Client, messages: list[tuple[str, bytes]]) -> None:
    for topic, payload in messages:
        client.publish(topic, payload, qos=1).wait_for_publish(5)


GOOD_EVENT = {
    "id": "01a1fee9-1a60-7526-a8fd-11c0b71e678f",
    "seq": 1,
    "type": "test",
    "priority": "normal",
    "ts": "2026-11-21T08:15:30.123+07:00",
    "clock_synced": True,
    "data": {},
}


def test_collector_rejects_and_counts_bad_batches_and_keeps_storing(device, collector, broker) -> None:
    collector.process.args = [*collector.process.args, "--max-message-bytes", "200000"]
    collector.start()
    daemon = device.daemon().start()
    vandal = raw_client(broker)
    try:
        # Once events flow end to end, the collector is surely subscribed.
        printed = run_edge(["emit", "test", "--count", "50"], env=device.env).stdout.split()
        assert wait_for(
            lambda: len(collector_rows(collector.db, "SELECT id FROM events WHERE type='test'")) >= 50, timeout=30
        )
        topic = "vn/gia-ray/dev/counter-01/evt/test"
        wrong_type = {
            "v": 1,
            "device": "counter-01",
            "commune": "gia-ray",
            "epoch": "00112233aabbccdd",
            "events": [{**GOOD_EVENT, "type": "rating"}],
        }
        publish_all(
            vandal,
            [
                (topic, b"{not json"),
                (topic, b"\xff\xfe\x00garbage"),
                (topic, json.dumps({"v": 1, "device": "counter-01"}).encode()),  # wrong schema
                (
                    topic,
                    json.dumps(
                        {
                            "v": 2,
                            "device": "counter-01",
                            "commune": "gia-ray",
                            "epoch": "00aa00aa",
                            "events": [GOOD_EVENT],
                        }
                    ).encode(),
                ),  # unknown version
                (topic, json.dumps(wrong_type).encode()),  # type differs from the topic
                ("vn/gia-ray/dev/counter-99/evt/test", json.dumps({**wrong_type, "events": [GOOD_EVENT]}).encode()),
                (topic, b"[" + b"1," * 150_000 + b"1]"),  # 300 kB: over the collector's limit
                # NaN is not JSON (Python's json writes it anyway): it must not be stored.
                (topic, json.dumps({**wrong_type, "events": [{**GOOD_EVENT, "data": {"x": float("nan")}}]}).encode()),
            ],
        )
        printed += run_edge(["emit", "test", "--count", "50"], env=device.env).stdout.split()
        assert wait_for(
            lambda: len(collector_rows(collector.db, "SELECT id FROM events WHERE type='test'")) >= 100, timeout=30
        )
    finally:
        vandal.loop_stop()
        vandal.disconnect()
        daemon.stop()
    summary = json.loads(collector.stop().strip().splitlines()[-1])
    stored = {r[0] for r in collector_rows(collector.db, "SELECT id FROM events WHERE type='test'")}
    assert stored == set(printed)
    rejected = summary["rejected"]
    assert rejected.get("malformed", 0) == 2
    assert rejected.get("schema", 0) == 3
    assert rejected.get("wrong_topic", 0) == 2
    assert rejected.get("oversized", 0) == 1


def test_device_rejects_and_counts_bad_evtacks_and_loses_nothing(device, collector, broker) -> None:
    daemon = device.daemon().start()
    vandal = raw_client(broker)
    try:
        printed = run_edge(["emit", "test", "--count", "20"], env=device.env).stdout.split()
        assert daemon.proc is not None
        assert wait_for(lambda: daemon_link(device.db, daemon.proc.pid) == "up", timeout=30)
        ack_topic = "vn/gia-ray/dev/counter-01/evtack"
        status = json.loads(run_edge(["status", "--json"], env=device.env).stdout)
        epoch = status["store"]["epoch"]
        publish_all(
            vandal,
            [
                (ack_topic, b"\x00\x01 not json"),
                (ack_topic, json.dumps({"v": 1, "epoch": epoch}).encode()),  # no ranges
                (ack_topic, json.dumps({"v": 1, "epoch": epoch, "ranges": [[5, 1]]}).encode()),  # inverted
                (ack_topic, json.dumps({"v": 1, "epoch": "ffffffffffffffff", "ranges": [[1, 1000]]}).encode()),
                (ack_topic, b'{"v":1,"epoch":"' + epoch.encode() + b'","ranges":[' + b"[1,1]," * 20000 + b"[1,1]]}"),
            ],
        )

        def counted() -> dict:
            return json.loads(run_edge(["status", "--json"], env=device.env).stdout)["counters"]

        expected = {"evtack_rejected_malformed": 1, "evtack_rejected_schema": 2, "rejected_oversized": 1}
        assert wait_for(lambda: expected.items() <= counted().items(), timeout=30), counted()
        # Nothing was acknowledged by those: everything is still pending on the device.
        status = json.loads(run_edge(["status", "--json"], env=device.env).stdout)
        assert status["queue"]["depth"] >= 20
        counters = status["counters"]
        assert counters.get("evtack_rejected_malformed") == 1
        assert counters.get("evtack_rejected_schema") == 2
        assert counters.get("rejected_oversized") == 1
        assert daemon.running
        # The real collector still gets everything.
        collector.start()
        assert wait_for(
            lambda: (
                {r[0] for r in collector_rows(collector.db, "SELECT id FROM events WHERE type='test'")} >= set(printed)
            ),
            timeout=30,
        )
    finally:
        vandal.loop_stop()
        vandal.disconnect()
        daemon.stop()


def test_corrupt_events_db_at_start_is_quarantined_and_the_daemon_runs_on(device, collector) -> None:
    device.state_dir.mkdir(parents=True, exist_ok=True)
    device.db.write_bytes(b"\x00garbage" * 4096)
    collector.start()
    daemon = device.daemon().start()
    try:
        printed = run_edge(["emit", "rating", "--data", '{"score": 4}', "--count", "3"], env=device.env).stdout.split()
        assert wait_for(
            lambda: set(printed) <= {r[0] for r in collector_rows(collector.db, "SELECT id FROM events")}, timeout=30
        )
        assert daemon.running
        quarantined = list(device.state_dir.glob("events.db.corrupt-*"))
        assert quarantined and quarantined[0].read_bytes().startswith(b"\x00garbage")
        security = collector_rows(collector.db, "SELECT data FROM events WHERE type = 'security'")
        assert any(json.loads(d)["kind"] == "store_quarantined" for (d,) in security)
    finally:
        daemon.stop()
