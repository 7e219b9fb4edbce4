"""The test suite (a package, so its modules import each other and the benchmarks without path edits)."""
