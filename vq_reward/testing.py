"""Moved: the smoke checkpoints are built by `vq_reward.smoke` and resolved by `vq_reward.hub`."""

from vq_reward.hub import resolve_model, tiny_checkpoint
from vq_reward.smoke import build_tiny_checkpoint


__all__ = ["build_tiny_checkpoint", "resolve_model", "tiny_checkpoint"]
