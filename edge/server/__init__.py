"""The commune side: what runs on the commune's server, never on a device.

Chain verification (:mod:`edge.server.chain`), the monthly report (:mod:`edge.server.report`,
:mod:`edge.server.report_html`) and browsing the collector's database in Datasette
(:mod:`edge.server.browse`), all reading the collector's SQLite database
(:mod:`edge.server.db`). The device daemon never imports this package; it may import the device's
own modules (the chain's canonical form lives with the device's store, :mod:`edge.store.chain`).
"""
