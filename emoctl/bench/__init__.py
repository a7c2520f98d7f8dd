"""Benchmarks behind ``emoctl bench ...``: each prints a Markdown table with ratios to a baseline measured in the same run."""
