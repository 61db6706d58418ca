"""Performance scripts that print numbers; run from the repository root as `python -m benchmarks.<name>`."""
