"""Benchmarks: each prints ratios measured side by side in one run; results are in RESULTS.md."""
