"""Benchmarks of citystreams against a floor and other contenders (``python -m bench``)."""
