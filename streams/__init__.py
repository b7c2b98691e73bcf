"""citystreams: a real-time IoT streaming pipeline for a smart city."""

__version__ = "0.1.0"
