"""`QualityReward`: the DDPO / Flow-GRPO / DanceGRPO reward, `fn(images, prompts, metadata) -> (scores, info)`."""

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vq_reward.images import Images, check_input_range
from vq_reward.rewards.source import REWARD_NAME, ScorerSource
from vq_reward.scorer import VisualQualityScorer


class QualityReward:
    """`fn(images, prompts=None, metadata=None) -> (scores, info)` for DDPO / Flow-GRPO / DanceGRPO loops.

    Args:
        scorer: a loaded scorer, or a model name (hub id, folder, "tiny") to load lazily on first call.
        input_range: value range of float inputs: (0, 1) for diffusers `output_type="pt"` / `"np"`, (-1, 1) for a
            raw `vae.decode(...).sample`.
        rescale: map the 1..5 score to [0, 1], for loops that hard-code a reward scale.
        device: where a lazily loaded scorer goes; `None` = `default_device()`.
        load_kwargs: `VisualQualityScorer.from_pretrained` arguments for a lazily loaded scorer (`dtype`,
            `max_pixels`, `attn_implementation`, `readout`, ...).

    Returns (per call):
        `scores`: numpy float32 `(N,)`, one per image, in input order (1..5, or 0..1 with `rescale`).
        `info`: `{"probs": (N, 5), "digit_mass": (N,), "std": (N,)}` float32, see `ScoreDetails`.

    Example (Flow-GRPO: register it in `multi_score`'s scorer dict; DDPO: pass it as `reward_function`):
        >>> reward_fn = scorer.as_reward()
        >>> scores, info = reward_fn(torch.rand(4, 3, 56, 56), ["a fox"] * 4, [{}] * 4)
        >>> scores.dtype, scores.shape
        (dtype('float32'), (4,))
    """

    def __init__(
        self,
        scorer: VisualQualityScorer | str | os.PathLike,
        input_range: tuple[float, float] = (0.0, 1.0),
        rescale: bool = False,
        device: str | torch.device | None = None,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.source = ScorerSource(scorer, device, load_kwargs)
        self.input_range = check_input_range(input_range)
        self.rescale = rescale
        self.__name__ = REWARD_NAME

    def __call__(
        self, images: Images, prompts: Sequence[Any] | None = None, metadata: Sequence[Any] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        details = self.source.get().score_details(images, input_range=self.input_range)
        scores = details.scores.numpy().astype(np.float32)
        if self.rescale:
            low, high = VisualQualityScorer.score_range
            scores = ((scores - low) / (high - low)).astype(np.float32)
        info = {"probs": details.probs.numpy(), "digit_mass": details.digit_mass.numpy(), "std": details.std.numpy()}
        return scores, info
