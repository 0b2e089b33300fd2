"""`QualityReward`: the DDPO / Flow-GRPO / DanceGRPO reward, `fn(images, prompts, metadata) -> (scores, info)`."""

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vq_reward.images import Images, check_input_range
from vq_reward.rewards.source import REWARD_NAME, ScorerSource
from vq_reward.rewards.win_rate import check_mode, group_ids, win_rates
from vq_reward.scorer import VisualQualityScorer
from vq_reward.views import Views, as_views


class QualityReward:
    """`fn(images, prompts=None, metadata=None) -> (scores, info)` for DDPO / Flow-GRPO / DanceGRPO loops.

    Args:
        scorer: a loaded scorer, or a model name (hub id, folder, "tiny") to load lazily on first call.
        input_range: value range of float inputs: (0, 1) for diffusers `output_type="pt"` / `"np"`, (-1, 1) for a
            raw `vae.decode(...).sample`.
        rescale: map the 1..5 score to [0, 1], for loops that hard-code a reward scale (not used with win rates,
            which are in [0, 1] already).
        mode: "score" (default): the expected score. "win-rate": each image's mean probability of beating the other
            images of its group, `Phi(gap / sqrt(s_i^2 + s_j^2 + 0.05^2))` from the number readout's scores and
            stds (read with `readout="number"` whatever the scorer's readout), in [0, 1], 0.5 on average per
            group and for an image alone; groups are `metadata[i]["group"]` when every entry has one, else the
            prompts, else the whole batch. For group-relative loops (Flow-GRPO, DanceGRPO): a win rate saturates
            once the model is sure, so pushing one image's score ever higher stops paying; to keep a gap the model
            is unsure of from becoming a +-1 advantage, also drop the division by the group's std (advantage = win
            rate - 0.5). `vq_reward.rewards.win_rate` explains; keep "score" where the absolute level matters.
        views: K > 1 scores each image as the mean over K deterministic views (`score(views=K)`): K forwards.
        device: where a lazily loaded scorer goes; `None` = `default_device()`.
        load_kwargs: `VisualQualityScorer.from_pretrained` arguments for a lazily loaded scorer (`dtype`,
            `max_pixels`, `attn_implementation`, `readout`, ...).

    Returns (per call):
        `scores`: numpy float32 `(N,)`, one per image, in input order (1..5, or 0..1 with `rescale`).
        `info`: `{"probs": (N, 5), "digit_mass": (N,), "std": (N,)}` float32, see `ScoreDetails`; with
            `mode="win-rate"` also `"scores"` (N,), the scores the win rates come from.

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
        mode: str = "score",
        views: int | Views = 1,
    ) -> None:
        self.source = ScorerSource(scorer, device, load_kwargs)
        self.input_range = check_input_range(input_range)
        self.rescale = rescale
        self.mode = check_mode(mode)
        self.views = as_views(views)
        self.__name__ = REWARD_NAME

    def __call__(
        self, images: Images, prompts: Sequence[Any] | None = None, metadata: Sequence[Any] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        win_rate = self.mode == "win-rate"
        details = self.source.get().score_details(
            images, input_range=self.input_range, readout="number" if win_rate else None, views=self.views
        )
        scores = details.scores.numpy().astype(np.float32)
        if win_rate:
            info = {"probs": details.probs.numpy(), "digit_mass": details.digit_mass.numpy(),
                    "std": details.std.numpy(), "scores": scores}  # fmt: skip
            groups = group_ids(len(scores), prompts, metadata)
            return win_rates(details.scores, details.std, groups).astype(np.float32), info
        if self.rescale:
            low, high = VisualQualityScorer.score_range
            scores = ((scores - low) / (high - low)).astype(np.float32)
        info = {"probs": details.probs.numpy(), "digit_mass": details.digit_mass.numpy(), "std": details.std.numpy()}
        return scores, info
