"""Win-rate rewards: each image's probability of beating the other images of its group, from the scores and the
model's own uncertainty (a Thurstone model, the one RL2R trains VisualQuality-R1 with).

Within a group (the images generated for one prompt), image i's reward is the mean over the group's other images j
of

    Phi((mu_i - mu_j) / sqrt(s_i^2 + s_j^2 + floor^2))

with mu the expected score and s its standard deviation (the number readout's `scores` and `std`) and Phi the
standard normal CDF. Properties: every reward is in [0, 1]; a group's rewards average exactly 0.5 (Phi(x) +
Phi(-x) = 1); a group of one image gets 0.5. In a group of two, and in any group whose images have equal stds, the
order of the rewards is the order of the scores; with unequal stds an uncertain image's win rate is pulled towards
0.5 (the model is less sure it wins or loses), so the order can differ where scores nearly tie.

The floor (`WIN_RATE_FLOOR`, 0.05 score points, 1/80 of the 1..5 range) keeps the denominator away from zero when
the model is certain of both answers, so two near-identical certain scores still compare smoothly instead of as a
hard 0/1 step.

Why, and how it meets GRPO's own group normalisation: GRPO subtracts each group's mean reward and divides by its
std, so a score gap of 0.01 between images the model cannot tell apart becomes an advantage of +-1, the "illusory
advantage" Pref-GRPO (arXiv 2508.20751) traced reward hacking to. Win rates change what is normalised: each reward
is a smooth rank within the group, weighted by the model's confidence, so an image far ahead saturates at 1
instead of taking the group's whole spread, and pushing one image's score ever higher stops paying. They do not, by
themselves, stop the division by the group std from blowing up a group whose gaps are all tiny: win rates of 0.49
and 0.51 standardise to +-1 too. For that, turn the std division off (TRL: `GRPOConfig(scale_rewards="none")`, or
"batch"; elsewhere: advantage = win rate - 0.5): the advantage is then bounded by how sure the model is that one
image beats the others, and near 0 where it is not. Keep `mode="score"` where the absolute level matters (a global
baseline as in DDPO, best-of-N across prompts, logging).

`win_rates` is a pure function of (scores, stds, groups): the in-process rewards and a served reward call the same
code.
"""

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch


WIN_RATE_FLOOR = 0.05
MODES = ("score", "win-rate")
GROUP_KEY = "group"


def win_rates(
    scores: Sequence[float] | np.ndarray | torch.Tensor,
    stds: Sequence[float] | np.ndarray | torch.Tensor,
    groups: Sequence[Hashable],
    floor: float = WIN_RATE_FLOOR,
) -> np.ndarray:
    """Each image's mean probability of beating the other images of its group (see the module docstring).

    Args:
        scores: `(N,)` expected scores.
        stds: `(N,)` their standard deviations (the model's uncertainty), >= 0.
        groups: `(N,)` a hashable group id per image (e.g. its prompt); images with equal ids compete.
        floor: added in quadrature to the pair's standard deviation, in score points; > 0.

    Returns:
        float64 `(N,)` in [0, 1]; 0.5 for an image alone in its group.

    Example:
        >>> win_rates([3.0, 3.0, 4.0], [0.2, 0.2, 0.2], ["a", "a", "b"]).tolist()
        [0.5, 0.5, 0.5]
        >>> rates = win_rates([2.0, 3.0], [0.5, 0.5], ["a", "a"])
        >>> rates.round(3).tolist(), float(rates.sum())
        ([0.079, 0.921], 1.0)
    """
    mu = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    sigma = torch.as_tensor(np.asarray(stds, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != mu.shape or len(groups) != len(mu):
        raise ValueError(
            f"win_rates needs one score, std and group per image; got {tuple(mu.shape)} scores, "
            f"{tuple(sigma.shape)} stds and {len(groups)} groups."
        )
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all() and (sigma >= 0).all()):
        raise ValueError("win_rates needs finite scores and finite, non-negative stds; check the scorer's output.")
    if not floor > 0:
        raise ValueError(f"floor must be > 0 (score points added in quadrature to the pair's std), got {floor!r}.")
    rates = np.full(len(mu), 0.5)
    for members in _members(groups).values():
        if len(members) < 2:
            continue
        index = torch.tensor(members)
        m, s = mu[index], sigma[index]
        gap = (m[:, None] - m[None, :]) / (s[:, None] ** 2 + s[None, :] ** 2 + floor**2).sqrt()
        beats = torch.special.ndtr(gap)
        beats.fill_diagonal_(0.0)
        rates[members] = (beats.sum(dim=1) / (len(members) - 1)).numpy()
    return rates


def group_ids(count: int, prompts: Sequence[Any] | None = None, metadata: Sequence[Any] | None = None) -> list:
    """The group of each of `count` images: `metadata[i]["group"]` where every metadata entry has one, else the
    prompt (its `repr` when it is not hashable, e.g. a chat message list), else one group for the whole batch.

    Example:
        >>> group_ids(3, ["a fox", "a fox", "a cat"])
        ['a fox', 'a fox', 'a cat']
        >>> group_ids(2, ["x", "y"], [{"group": 7}, {"group": 7}])
        [7, 7]
    """
    if (
        metadata is not None
        and len(metadata) == count
        and all(isinstance(entry, dict) and GROUP_KEY in entry for entry in metadata)
    ):
        return [_hashable(entry[GROUP_KEY]) for entry in metadata]
    if prompts is not None:
        if len(prompts) != count:
            raise ValueError(
                f"mode='win-rate' groups images by prompt, but got {len(prompts)} prompts for {count} images; pass "
                'one prompt per image, or metadata=[{"group": id}, ...] per image.'
            )
        return [_hashable(prompt) for prompt in prompts]
    return [0] * count


def check_mode(mode: str) -> str:
    """`mode` when it is one of `MODES`, else a `ValueError` naming them."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} ('score': the expected score; 'win-rate': see win_rate.py), "
                         f"got {mode!r}.")  # fmt: skip
    return mode


def _members(groups: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    return members


def _hashable(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value
