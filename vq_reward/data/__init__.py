"""Data: MOS label files, training rows (normalised, split by reference, merged), Q-Insight rows, synthetic
degradations and the one JSONL reader/writer.

Imports the inference core (images, prompts); never imported by it. The results files of `vq-reward score` are
`vq_reward.batch`.
"""
