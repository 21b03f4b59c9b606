"""Benchmark scripts that print the tables of BENCHMARKS.md (not installed with the package)."""
