"""Data: MOS label files, training rows (normalised, split by reference, merged), Q-Insight rows, synthetic
degradations, the one JSONL reader/writer, and the resumable results file of `vq-reward score`.

Imports the inference core (images, prompts, the scorer for `results`); never imported by it.
"""
