"""The loudspeaker's broadcast service (DESIGN.md §8): signed ``broadcast.*`` and ``relay.test``
commands in, audio and relays driven by a three-priority scheduler, ``broadcast`` proof-of-play
events out.

Modules:

- :mod:`~edge.services.broadcast.service`: :class:`~edge.services.broadcast.service.BroadcastService`,
  built for the ``loudspeaker`` role: the commands, the hardware, preparing sources ahead of time;
- :mod:`~edge.services.broadcast.scheduler`: the arbitration, the relay sequence and the events;
- :mod:`~edge.services.broadcast.plan`: the ``broadcast.play`` arguments and when each play is due;
- :mod:`~edge.services.broadcast.schedule`: the schedule table in ``events.db``;
- :mod:`~edge.services.broadcast.cache`: audio files fetched by URL into a content-addressed cache;
- :mod:`~edge.services.broadcast.live`: live relay of the commune station's stream with failover.
"""

#: The store ``meta`` key where the broadcast service keeps its current hardware problems (a JSON
#: object, e.g. ``{"relays": "relay board not answering on /dev/ttyUSB0"}``), read by ``edge status``.
HARDWARE_META = "broadcast.hardware"
