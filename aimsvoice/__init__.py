"""aimsvoice: a local, full-duplex voice agent on the command line (NVIDIA PersonaPlex)."""

__version__ = "0.1.0"
