"""Benchmarks of tda_explorer against ground truth and peer libraries."""
