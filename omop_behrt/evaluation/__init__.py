"""Heads, baselines, metrics, the method comparison, its report and the benchmark."""
