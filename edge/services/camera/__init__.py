"""The counter camera service: capture, presence and tamper events, evidence around low ratings.

Modules: :mod:`~edge.services.camera.service` (the service: cameras, analysis threads, events,
``camera.calibrate``), :mod:`~edge.services.camera.analytics` (presence and tamper on small grey
frames), :mod:`~edge.services.camera.evidence` (ring buffer, clips and snapshots, retention) and
:mod:`~edge.services.camera.blur` (faces blurred before anything is written).
"""
