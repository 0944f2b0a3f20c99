"""Benchmarks: `make perf` (python -m bench) prints one table, each figure beside its goal."""
