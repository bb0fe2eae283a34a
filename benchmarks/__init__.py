"""Benchmarks and the MONAI reference recipe; run from the repository root as ``python -m benchmarks.benchmark``."""
