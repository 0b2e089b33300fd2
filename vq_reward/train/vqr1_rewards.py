"""The RL2R rewards of VisualQuality-R1 for TRL's GRPOTrainer: a fidelity rank reward and an answer format reward.

Each is a picklable callable class (TRL's contract: `reward(prompts, completions, **columns) -> list[float | None]`)
around a pure function. `fidelity_reward` is the official formula: rollout j of image i is compared with the mean
prediction of every other image z of the same dataset in the batch,

    p = Phi((q_ij - mean_z) / sqrt(var_i + var_z + eps))        var: sample variance over each image's G rollouts
    f = sqrt(p * g + eps) + sqrt((1 - p) * (1 - g) + eps)      g = 1, 0 or 0.5 as mos_i >, <, = mos_z
    r_ij = mean over the B - 1 other images of f

Rows carry a `task` column ("score" when absent); these rewards score "score" rows and return None for other
tasks, so a second task family adds its own rewards beside them: Q-Insight's are in `qinsight_rewards`, and
`reward_registry.REWARDS` names them all for the entry point's `reward_funcs`.
"""

import math
import random
import re
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from vq_reward.data.rows import SCORE_TASK
from vq_reward.eval.metrics import srcc
from vq_reward.parsing import parse_score
from vq_reward.rewards import completion_text


_SQRT2 = math.sqrt(2.0)


def fidelity_reward(
    pred: torch.Tensor, mos: torch.Tensor, eps: float = 1e-6, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """The official fidelity reward of every rollout, vectorised: `pred` `[B, G]`, `mos` `[B]` -> `[B, G]`.

    Args:
        pred: predicted scores, G rollouts for each of B images of one dataset.
        mos: the images' ground-truth scores; only their order matters.
        eps: the official epsilon, inside the square roots and the Thurstone denominator.
        valid: `[B, G]` booleans, False for rollouts whose answer could not be parsed. They are left out of the
            means and variances and get reward 0. An image with one valid rollout has variance 0; an image with
            none is no partner for the others. `None` means all valid (the official behaviour).

    Returns:
        float64 `[B, G]`; NaN for an image with no partner to compare with (B = 1, or every other image invalid).

    Example:
        >>> r = fidelity_reward(torch.tensor([[3.5, 3.5], [3.4, 3.4]]), torch.tensor([4.0, 2.0]))
        >>> [round(v, 4) for v in r[:, 0].tolist()]
        [1.001, 1.001]
    """
    pred = pred.to(torch.float64)
    mos = mos.to(torch.float64)
    if pred.ndim != 2 or mos.shape != pred.shape[:1]:
        raise ValueError(f"expected pred [B, G] and mos [B], got {tuple(pred.shape)} and {tuple(mos.shape)}.")
    valid = torch.ones_like(pred, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    count = valid.sum(1).to(torch.float64)  # [B]
    filled = torch.where(valid, pred, torch.zeros_like(pred))
    mean = filled.sum(1) / count.clamp(min=1)
    var = (((pred - mean[:, None]) ** 2) * valid).sum(1) / (count - 1).clamp(min=1)  # unbiased, as torch.var
    # [B(i), G(j), B(z)]: rollout j of image i against the mean of image z.
    z_score = (pred[:, :, None] - mean[None, None, :]) / torch.sqrt(var[:, None, None] + var[None, None, :] + eps)
    p = 0.5 * (1.0 + torch.erf(z_score / _SQRT2))
    g = (mos[:, None] > mos[None, :]).to(torch.float64) + 0.5 * (mos[:, None] == mos[None, :])
    g = g[:, None, :]
    fidelity = torch.sqrt(p * g + eps) + torch.sqrt((1.0 - p) * (1.0 - g) + eps)
    partner = ~torch.eye(len(mos), dtype=torch.bool) & (count > 0)[None, :]  # [B(i), B(z)]
    partners = partner.sum(1)
    reward = (fidelity * partner[:, None, :]).sum(2) / partners.clamp(min=1)[:, None]
    reward = torch.where(valid, reward, torch.zeros_like(reward))
    return torch.where((partners > 0)[:, None], reward, torch.full_like(reward, math.nan))


class FidelityRankReward:
    """The VisualQuality-R1 fidelity reward as a TRL reward function.

    Completions arrive G at a time per image (TRL's order). Each is parsed with the shared parser; images are
    compared only with images of the same `dataset_name`.

    Args:
        num_generations: G, as in `GRPOConfig.num_generations`.
        scope: "local" compares images within this process's batch (the official behaviour); "global" gathers the
            parsed scores of every process first, so each image has more partners.
        parse_failure: "exclude" (default) leaves an unparseable rollout out of the statistics with reward 0;
            "random" replaces its score by a random integer 1..5, as the official code does (parity only).
        fallback_to_text: without `<answer>` tags, read the first number of the whole completion (official).
        answer_prefix: text the generation prompt already ends with (e.g. "<answer>" in the non-thinking fast
            path); it is put back in front of each completion before parsing, and a missing "</answer>" is closed.
        eps: the official epsilon.
        seed: seeds the "random" replacement (offset by the process rank).

    Example:
        >>> reward = FidelityRankReward(num_generations=2)
        >>> reward(completions=["<answer>4</answer>", "<answer>2</answer>", "<answer>3</answer>", "no number"],
        ...        mos=[4.0, 4.0, 2.0, 2.0])  # doctest: +ELLIPSIS
        [0.8729..., 0.4906..., 0.7081..., 0.0]
    """

    def __init__(
        self,
        num_generations: int,
        *,
        scope: Literal["local", "global"] = "local",
        parse_failure: Literal["exclude", "random"] = "exclude",
        fallback_to_text: bool = False,
        answer_prefix: str = "",
        eps: float = 1e-6,
        seed: int = 0,
    ) -> None:
        if num_generations < 2:
            raise ValueError(
                f"num_generations must be at least 2 (a variance needs two rollouts), got {num_generations}."
            )
        if scope not in ("local", "global"):
            raise ValueError(f"scope must be 'local' or 'global', got {scope!r}.")
        if parse_failure not in ("exclude", "random"):
            raise ValueError(f"parse_failure must be 'exclude' or 'random', got {parse_failure!r}.")
        self.__name__ = "fidelity"
        self.num_generations = num_generations
        self.scope = scope
        self.parse_failure = parse_failure
        self.fallback_to_text = fallback_to_text
        self.answer_prefix = answer_prefix
        self.eps = eps
        self.seed = seed
        self._rng: random.Random | None = None
        self.last_call: dict = {}

    def __call__(
        self,
        completions: Sequence,
        mos: Sequence[float],
        dataset_name: Sequence[str] | None = None,
        task: Sequence[str] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs,
    ) -> list[float | None]:
        groups = self._groups(completions, mos, dataset_name, task, kwargs.get("id"))
        rank, world = _rank_and_world() if self.scope == "global" else (0, 1)
        scope_groups = _gather(groups, world)
        offset = sum(len(per_rank) for per_rank in scope_groups[:rank])
        flat = [group for per_rank in scope_groups for group in per_rank]
        rewards = self._score(flat)
        out: list[float | None] = []
        for group_rewards in rewards[offset : offset + len(groups)]:
            if group_rewards is None:
                out.extend([None] * self.num_generations)
            else:
                out.extend(None if math.isnan(r) else r for r in group_rewards)
        self._record(groups, flat, log_metric)
        return out

    def _groups(self, completions, mos, dataset_name, task, ids) -> list[dict]:
        n, size = len(completions), self.num_generations
        if n % size:
            raise ValueError(
                f"the fidelity reward received {n} completions, not whole groups of num_generations={size}: make "
                "per_device_train_batch_size * steps_per_generation a multiple of num_generations."
            )
        groups = []
        for start in range(0, n, size):
            rows = range(start, start + size)
            keys = {(mos[i], _at(dataset_name, i), _at(task, i), _at(ids, i)) for i in rows}
            if len(keys) != 1:
                raise ValueError(
                    f"completions {start}..{start + size - 1} should be the {size} rollouts of one image but differ "
                    f"in (mos, dataset_name, task, id): {sorted(keys, key=str)}. Rewards need TRL's grouped order."
                )
            is_score = (_at(task, start) or SCORE_TASK) == SCORE_TASK
            preds = [self._parse(completion_text(completions[i])) for i in rows] if is_score else []
            label = float(mos[start]) if is_score else None  # other tasks' rows have no MOS
            groups.append({"score": is_score, "dataset": _at(dataset_name, start), "mos": label, "pred": preds})
        return groups

    def _parse(self, completion: str) -> float | None:
        text = completion
        if self.answer_prefix:
            text = self.answer_prefix + completion + ("" if "</answer>" in completion else "</answer>")
        score = parse_score(text, fallback_to_text=self.fallback_to_text)
        if score is None and self.parse_failure == "random":
            if self._rng is None:
                self._rng = random.Random(self.seed + _rank_and_world()[0])
            return float(self._rng.randint(1, 5))
        return score

    def _score(self, groups: list[dict]) -> list[list[float] | None]:
        out: list[list[float] | None] = [None] * len(groups)
        by_dataset: dict[object, list[int]] = {}
        for index, group in enumerate(groups):
            if group["score"]:
                by_dataset.setdefault(group["dataset"], []).append(index)
        for members in by_dataset.values():
            pred = torch.tensor([[math.nan if p is None else p for p in groups[i]["pred"]] for i in members])
            valid = ~torch.isnan(pred)
            mos = torch.tensor([groups[i]["mos"] for i in members])
            rewards = fidelity_reward(torch.nan_to_num(pred), mos, self.eps, valid)
            for i, row in zip(members, rewards.tolist(), strict=True):
                out[i] = row
        return out

    def _record(self, local: list[dict], scope: list[dict], log_metric: Callable | None) -> None:
        scored = [g for g in scope if g["score"]]
        local_preds = [p for g in local if g["score"] for p in g["pred"]]
        correlations = []
        for dataset in {g["dataset"] for g in scored}:
            members = [g for g in scored if g["dataset"] == dataset]
            means = [_mean(g["pred"]) for g in members]
            pairs = [(m, g["mos"]) for m, g in zip(means, members, strict=True) if m is not None]
            if len(pairs) > 1:
                value = srcc(*zip(*pairs, strict=True))
                if not math.isnan(value):
                    correlations.append(value)
        self.last_call = {
            "local_rollouts": len(local) * self.num_generations,
            "scope_rollouts": len(scope) * self.num_generations,
            "local_datasets": sorted({str(g["dataset"]) for g in local if g["score"]}),
            "scope_datasets": sorted({str(g["dataset"]) for g in scored}),
            "parse_failures": sum(p is None for p in local_preds),
            "batch_srcc": sum(correlations) / len(correlations) if correlations else None,
        }
        if log_metric is None:
            return
        if local_preds:
            log_metric("fidelity/parse_failure_rate", self.last_call["parse_failures"] / len(local_preds))
            log_metric("fidelity/datasets_per_device_batch", float(len(self.last_call["local_datasets"])))
        log_metric("fidelity/rollouts_in_scope", float(self.last_call["scope_rollouts"]))
        if correlations:  # undefined when every mean prediction is equal: then nothing is logged
            log_metric("fidelity/batch_srcc", self.last_call["batch_srcc"])


class AnswerFormatReward:
    """1.0 when a completion is exactly `<think>...</think> <answer>...</answer>` (the official full match), else 0.0.

    Args:
        thinking: False checks the non-thinking form `<answer>...</answer>` instead.
        answer_prefix: text the generation prompt already ends with; it is put back before matching.

    Example:
        >>> AnswerFormatReward()(completions=["<think>ok</think>\\n<answer>3</answer>", "<answer>3</answer>"])
        [1.0, 0.0]
    """

    def __init__(self, thinking: bool = True, answer_prefix: str = "") -> None:
        self.__name__ = "format"
        self.thinking = thinking
        self.answer_prefix = answer_prefix
        pattern = r"<think>.*?</think>\s*<answer>.*?</answer>" if thinking else r"\s*<answer>.*?</answer>\s*"
        self._pattern = re.compile(pattern, re.DOTALL)

    def __call__(self, completions: Sequence, **kwargs) -> list[float]:
        texts = [self.answer_prefix + completion_text(c) for c in completions]
        return [1.0 if self._pattern.fullmatch(text) else 0.0 for text in texts]


def _at(values: Sequence | None, index: int):
    return None if values is None else values[index]


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather(groups: list[dict], world: int) -> list[list[dict]]:
    """Every process's groups, in rank order (small records only: parsed scores, MOS, dataset names)."""
    if world == 1:
        return [groups]
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, groups)
    return gathered
