"""The counter camera: capture, officer presence and tamper analytics, and evidence with faces blurred."""
