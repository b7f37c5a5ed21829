"""Benchmarks: ``python -m bench.ingest`` (see bench/README.md)."""
