"""Benchmark tasks, baselines and the benchmark runner."""
