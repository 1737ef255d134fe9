"""Benchmarks for the issue's speed targets; `python -m bench` (or `make bench`) runs them all.

Each benchmark starts its own Temporal dev server, worker and API, measures scaleflow and a
baseline in the same run, and prints the ratio. Figures are recorded in docs/benchmarks.md.
"""
