"""Hardware drivers: each device sits on a backend interface (real hardware or a simulator).

See DESIGN.md §2: services talk to a driver interface; the backend is chosen by configuration.
"""
