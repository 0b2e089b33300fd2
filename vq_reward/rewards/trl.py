"""`TrlQualityReward`: a `trl.GRPOTrainer` reward function that scores one image per completion."""

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vq_reward.images import ImageInputError
from vq_reward.rewards.source import REWARD_NAME, ScorerSource
from vq_reward.rewards.win_rate import check_mode, group_ids, win_rates
from vq_reward.scorer import VisualQualityScorer
from vq_reward.views import Views, as_views


class TrlQualityReward:
    """A `trl.GRPOTrainer` reward: `(prompts, completions, completion_ids=None, **columns) -> list[float | None]`.

    Args:
        scorer: a loaded scorer, or a model name to load lazily on first call (on `default_device()`: under
            `accelerate launch` each process loads its own copy on its own GPU).
        image_key: the dataset or `rollout_func` column holding one image per completion (PIL, path, array or
            tensor; `None` for a row scores `None`). Not used when `image_fn` is given.
        image_fn: turns completions into images, e.g. a text-to-image pipeline rendering the prompts an LLM writes.
            Called once per batch as `image_fn(prompts=prompts, completions=texts, **columns)` with the completion
            texts (plain strings), returning one image or `None` (cannot render) per completion.
        device: where a lazily loaded scorer goes; `None` = `default_device()`.
        load_kwargs: `VisualQualityScorer.from_pretrained` arguments for a lazily loaded scorer, e.g.
            `{"dtype": torch.bfloat16, "max_pixels": 512 * 512}`.
        mode: "score" (default) or "win-rate": each completion's mean probability of beating the other completions
            of its group (same prompt, or same value in the `group_key` column), from the number readout's scores
            and stds, in [0, 1], 0.5 on average per group (`vq_reward.rewards.QualityReward` says when to use
            which; rows without an image get `None` and take no part).
        views: K > 1 scores each image as the mean over K deterministic views (`score(views=K)`): K forwards.
        group_key: with `mode="win-rate"`, the column whose values group the rows; `None` groups by prompt.

    A completion whose image is `None` gets `None` (TRL gives a row that every reward skips an advantage of 0).
    The same image object in several rows (G completions of one dataset image) is scored once. When TRL passes
    `log_metric`, the mean digit probability mass is logged as "visual_quality/digit_mass" (a health figure).

    Example:
        >>> reward = scorer.as_trl_reward(image_key="image")
        >>> reward(prompts=["p"], completions=[[{"role": "assistant", "content": "a fox"}]],
        ...        image=[torch.rand(3, 56, 56)])[0] > 1.0
        True
    """

    def __init__(
        self,
        scorer: VisualQualityScorer | str | os.PathLike,
        image_key: str | None = "image",
        image_fn: Callable[..., Sequence[Any]] | None = None,
        device: str | torch.device | None = None,
        load_kwargs: dict[str, Any] | None = None,
        mode: str = "score",
        views: int | Views = 1,
        group_key: str | None = None,
    ) -> None:
        if image_key is None and image_fn is None:
            raise ValueError("TrlQualityReward needs image_key (a dataset/rollout column) or image_fn; both are None.")
        self.source = ScorerSource(scorer, device, load_kwargs)
        self.image_key = image_key
        self.image_fn = image_fn
        self.mode = check_mode(mode)
        self.views = as_views(views)
        self.group_key = group_key
        self.__name__ = REWARD_NAME

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        images = self._images(prompts, completions, kwargs)
        unique: dict[int, Any] = {}
        for image in images:
            if image is not None:
                unique.setdefault(id(image), image)
        if not unique:
            return [None] * len(images)
        win_rate = self.mode == "win-rate"
        details = self.source.get().score_details(
            list(unique.values()), readout="number" if win_rate else None, views=self.views
        )
        by_id = dict(zip(unique, zip(details.scores.tolist(), details.std.tolist(), strict=True), strict=True))
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(f"{REWARD_NAME}/digit_mass", details.digit_mass.mean().item())
        rows = [i for i, image in enumerate(images) if image is not None]
        scores, stds = zip(*(by_id[id(images[i])] for i in rows), strict=True)
        values = list(scores)
        if win_rate:
            groups = self._groups(prompts, kwargs, len(images))
            values = win_rates(scores, stds, [groups[i] for i in rows]).tolist()
        rewards: list[float | None] = [None] * len(images)
        for i, value in zip(rows, values, strict=True):
            rewards[i] = value
        return rewards

    def _groups(self, prompts: Sequence[Any], columns: dict[str, Any], count: int) -> list[Any]:
        """Each row's group: the `group_key` column, else the prompt (its repr when it is a chat message list)."""
        if self.group_key is None:
            return group_ids(count, prompts)
        if self.group_key not in columns:
            raise KeyError(
                f"group_key={self.group_key!r} is not among the columns TRL passed to the reward: "
                f"{sorted(columns)}. Pass a column that holds one group id per row, or group_key=None (by prompt)."
            )
        return group_ids(count, list(columns[self.group_key]))

    def _images(self, prompts: Sequence[Any], completions: Sequence[Any], columns: dict[str, Any]) -> list[Any]:
        if self.image_fn is not None:
            name = getattr(self.image_fn, "__name__", type(self.image_fn).__name__)
            texts = [completion_text(completion) for completion in completions]
            images = list(self.image_fn(prompts=prompts, completions=texts, **columns))
            source = f"image_fn {name!r}"
        else:
            if self.image_key not in columns:
                available = sorted(key for key in columns if key not in ("trainer_state", "log_extra", "log_metric"))
                raise KeyError(
                    f"image_key={self.image_key!r} is not among the columns TRL passed to the reward: {available}. "
                    "Pass the column that holds the images, or image_fn= to make images from the completions."
                )
            images = [_single_image(row, self.image_key, index) for index, row in enumerate(columns[self.image_key])]
            source = f"column {self.image_key!r}"
        if len(images) != len(completions):
            raise ValueError(
                f"{source} gave {len(images)} images for {len(completions)} completions; it must give exactly one "
                "image (or None) per completion."
            )
        return images


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a plain string, or the last message of a conversational completion.

    Its content may be a string or a list of parts (`[{"type": "text", "text": ...}]`).

    Example:
        >>> completion_text([{"role": "assistant", "content": "a red fox"}])
        'a red fox'
        >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a fox"}]}])
        'a fox'
    """
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _single_image(row: Any, key: str, index: int) -> Any:
    if isinstance(row, (list, tuple)):
        if len(row) == 1:
            return row[0]
        raise ImageInputError(
            f"column {key!r} row {index} holds {len(row)} images; the quality reward scores one image per completion. "
            "Pass image_fn= to pick the image to score."
        )
    return row
