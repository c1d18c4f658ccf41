"""The batch-inference benchmark harness (see BENCHMARKS.md); not part of the installed package."""
