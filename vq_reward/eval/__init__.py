"""Evaluation: agreement metrics (thin wrappers over scipy.stats) and per-dataset reports of a scorer."""
