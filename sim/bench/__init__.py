"""Benchmarks (not tests: they print figures), one module per benchmark, run by ``scripts/bench_*``.

Each prints its figures next to a baseline measured in the same run on the same machine, and a
PASS/MISS line per target; :mod:`sim.bench.common` holds what they share (percentiles, CPU and
memory of a process, the table of targets, the work directory and ``--json``).

- :mod:`sim.bench.pipeline` — outbox, MQTT sync and collector (``scripts/bench_pipeline``);
- :mod:`sim.bench.panel` — press → commit → LED / ACK on the rating panel (``scripts/bench_panel``).
"""
