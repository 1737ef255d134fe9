"""Deterministic orchestration: decide, order, retry, compensate."""
