"""The commune side: what runs on the commune's server, never on a device.

The collector (:mod:`edge.server.collector`, ``edge collect``) and where it stores
(:mod:`edge.server.storage`: SQLite or PostgreSQL), evidence uploads (:mod:`edge.server.media`),
chain verification (:mod:`edge.server.chain`), the monthly report (:mod:`edge.server.report`,
:mod:`edge.server.report_html`), all reading the collector's database through one read-only
interface (:mod:`edge.server.db`), and browsing its SQLite file in Datasette
(:mod:`edge.server.browse`). The device daemon never imports this package (tests/test_layout.py);
it may import the device's own modules (the chain's canonical form lives with the device's store,
:mod:`edge.store.chain`).
"""
