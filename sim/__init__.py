"""Simulated hardware and infrastructure: the same interfaces as the real backends, with test handles."""
