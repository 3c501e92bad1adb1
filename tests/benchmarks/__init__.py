"""Benchmarks against the targets in BENCHMARKS.md; run by ``make bench`` only."""
