"""commune-edge: the daemon and command line for commune counter and loudspeaker devices."""

__version__ = "0.1.0"
