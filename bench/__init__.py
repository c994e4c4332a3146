"""Benchmarks: ``python -m bench.prep``, ``python -m bench.train``, ``python -m bench.generate``."""
