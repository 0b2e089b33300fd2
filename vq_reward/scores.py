"""What the scorer's calls return, and how a call's figures are put together from its batches.

`Rating` is one generated answer (`generate`); `score_details` returns the readout's `ScoreDetails`, gathered back
into input order from size-sorted batches (`in_input_order`) and averaged over views (`mean_over_views`). A score
that is not a finite number is never returned: `check_finite` raises `NonFiniteScoreError`, naming the images.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vq_reward.parsing import parse_answer
from vq_reward.readout import ScoreDetails
from vq_reward.views import view_mixture


SCORE_RANGE = (1.0, 5.0)  # 1 (very poor) to 5 (excellent)
NO_REASONING_WARNING = (
    "generate(thinking=True): the model wrote no <think>...</think> reasoning in some answers, so their "
    "Rating.reasoning is None. Models not taught to reason (the smoke models 'tiny' and 'taught') never write it; "
    "a reasoning model that does not may have run out of max_new_tokens."
)


@dataclass(frozen=True)
class Rating:
    """One generated answer.

    Attributes:
        score: the parsed score clipped into [1, 5]; `None` when the answer holds no number (never made up).
        raw_score: the number as the model wrote it, before clipping (e.g. 7.0 or -1.0); `None` likewise.
        reasoning: the text of the last `<think>` block (thinking mode), else `None`; also `None` when the model
            wrote no `<think>` block (`generate(thinking=True)` warns then).
        text: the whole decoded completion.
    """

    score: float | None
    raw_score: float | None
    reasoning: str | None
    text: str

    @classmethod
    def from_text(cls, text: str) -> "Rating":
        """Parse a completion with the VisualQuality-R1 parser and clip its score into [1, 5].

        Example:
            >>> Rating.from_text("<answer>7</answer>").score
            5.0
        """
        parsed = parse_answer(text)
        low, high = SCORE_RANGE
        score = None if parsed.score is None else min(max(parsed.score, low), high)
        return cls(score=score, raw_score=parsed.score, reasoning=parsed.reasoning, text=text)


class NonFiniteScoreError(ValueError):
    """Scores that came out NaN or infinite: never returned as scores.

    Attributes:
        indices: the positions of those images among the images scored (the caller's list, when each input is one
            image: a path, a PIL image, an array or tensor of one image).
        details: `score_details`' figures of the whole call in input order (the other images' scores are finite
            and usable), or `None`.
    """

    def __init__(self, message: str, indices: list[int], details: ScoreDetails | None = None) -> None:
        super().__init__(message)
        self.indices = indices
        self.details = details

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.indices, self.details)


def check_finite(
    scores: torch.Tensor, names: Sequence[str], backend: str, details: ScoreDetails | None = None
) -> None:
    """Raise `NonFiniteScoreError` naming the images (`names`, in the order of `scores`) whose score is not finite."""
    indices = (~torch.isfinite(scores.detach())).nonzero().flatten().tolist()
    if not indices:
        return
    shown = ", ".join(names[i] for i in indices[:5]) + (f" and {len(indices) - 5} more" if len(indices) > 5 else "")
    what = "its score is not a finite number" if len(indices) == 1 else (
        f"{len(indices)} of {len(scores)} scores are not finite numbers")  # fmt: skip
    raise NonFiniteScoreError(
        f"{shown}: {what} (NaN or inf). The model's output ({backend} backend) was not finite; likely causes: broken "
        "weights (e.g. a NaN lm_head), float16 overflow (load with dtype=torch.bfloat16 or torch.float32), or a "
        "server answering NaN log-probabilities.",
        indices,
        details,
    )


def in_input_order(parts: list[tuple[list[int], ScoreDetails]], count: int, readout: str) -> ScoreDetails:
    """The batches' figures (each with the input positions of its rows) scattered back into input order, as float32
    CPU tensors."""

    def gather(name: str) -> torch.Tensor:
        first = getattr(parts[0][1], name)
        out = torch.empty((count, *first.shape[1:]), dtype=torch.float32)
        for indices, details in parts:
            out[indices] = getattr(details, name).detach().float().cpu()
        return out

    return ScoreDetails(
        scores=gather("scores"), std=gather("std"), probs=gather("probs"), digit_mass=gather("digit_mass"),
        dot_mass=gather("dot_mass") if parts[0][1].dot_mass is not None else None, readout=readout,
    )  # fmt: skip


def mean_over_views(details: ScoreDetails, count: int) -> ScoreDetails:
    """Each image's `count` consecutive view rows as one mixture: mean score, probs and health; the mixture's std."""

    def mean(values: torch.Tensor) -> torch.Tensor:
        return values.reshape(-1, count, *values.shape[1:]).mean(dim=1)

    scores, std = view_mixture(details.scores.reshape(-1, count), details.std.reshape(-1, count))
    dot_mass = None if details.dot_mass is None else mean(details.dot_mass)
    return ScoreDetails(scores=scores, std=std, probs=mean(details.probs), digit_mass=mean(details.digit_mass),
                        dot_mass=dot_mass, readout=details.readout)  # fmt: skip
