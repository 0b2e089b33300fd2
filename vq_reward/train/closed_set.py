"""Closed-set rollouts: GRPO answers drawn from exactly the distribution the scorer's Q-Insight readouts read.

The readouts (`scorer.degradation`, `scorer.compare`, `score()` with prompt_style="q-insight") force Q-Insight's
answer prefix "<think>\\n\\n</think>\\n<answer>\\n" and score a closed set of answers c by their teacher-forced
likelihood p(c) = prod_t p(c_t | prompt, c_<t); the readout's distribution over the set is

    P(c) = p(c) / sum_c' p(c')          (degradation: 21 JSON answers; comparison: 3; score: '{"rating": d', d=1..5)

With `closed_set_sampling`, each rollout is a draw from P itself: one forward scores every answer of the set for a
prompt (the prefix is already in the prompt, from the chat template), and G answers are sampled from P. TRL then
trains on those completions as on generated ones. Why the gradient is exact for P:

- TRL's policy-gradient term for rollout j is A_j * grad log p(c_j), with p the model's full-vocabulary token
  probabilities (temperature-scaled as here). grad log P(c_j) = grad log p(c_j) - grad log sum_c' p(c'), and the
  second term is the same for every rollout of the prompt; GRPO advantages sum to zero over a prompt's G rollouts
  (mean-centred, then optionally divided by the group's std), so it cancels: sum_j A_j grad log p(c_j) =
  sum_j A_j grad log P(c_j), an unbiased policy-gradient estimate of E_P[reward] -- for the very distribution the
  readout's argmax and probabilities come from.
- That holds when each rollout's gradient is weighted by A_j alone. loss_type "grpo" (the official aggregation)
  divides each completion's loss by its own token count, so it is exact only when all answers of the set have the
  same length; the entry point refuses it otherwise. "dr_grpo", "dapo" and "bnpo" divide by a batch constant.
- The completion is the answer's tokens and nothing else (no "\\n</answer>", no end-of-turn token), so no term
  outside the readout enters the gradient; the rewards close the answer block themselves (`answer_prefix`).
- Not exact: the KL term (beta) is TRL's per-token k3 estimate on the sampled answers, a regulariser towards the
  reference model's token probabilities rather than the KL between the two set distributions.

Unlike trie-constrained decoding (mask every token that leaves the set, renormalise at each step), which samples
from a different, locally normalised distribution whose per-prefix normalisers do not cancel, this samples P
exactly. Cost: one forward per distinct prompt, every answer of the set read in it (`readout.candidate_logprobs`).
"""

from collections.abc import Sequence

import torch

from vq_reward import qinsight, readout
from vq_reward.data.rows import COMPARISON_TASK, DEGRADATION_TASK, SCORE_TASK


def closed_set_answers(task: str) -> list[str]:
    """The answers a task's readout scores, as text after the answer prefix, in the readout's order.

    Example:
        >>> closed_set_answers("comparison")
        ['Image A', 'Image B', 'Similar']
        >>> closed_set_answers("score")[0]
        '{"rating": 1'
    """
    if task == DEGRADATION_TASK:
        return [qinsight.degradation_answer(kind, level) for kind, level in qinsight.degradation_answers()]
    if task == COMPARISON_TASK:
        return list(qinsight.COMPARISON_RESULTS)
    if task == SCORE_TASK:  # the score readout's distribution: the digit after '{"rating": '
        return ['{"rating": ' + str(digit) for digit in range(1, 6)]
    raise ValueError(
        f"no closed answer set for task {task!r}; known: {[SCORE_TASK, DEGRADATION_TASK, COMPARISON_TASK]}."
    )


class ClosedSetSampler:
    """Score every answer of a row's closed set in one forward and draw the rollouts from the normalised set.

    Args:
        tokenizer: the processor's tokenizer.
        answer_prefix: the text every prompt ends with (Q-Insight's forced prefix); the answers are tokenized after
            it, as the readouts tokenize them.
        temperature: the logits are divided by it, as TRL does for the loss (1.0: the readout's distribution).

    Example:
        >>> sampler = ClosedSetSampler(processor.tokenizer, prompts.QINSIGHT_ANSWER_PREFIX)  # doctest: +SKIP
        >>> completion_ids = sampler.sample(model, prompt_ids, images, fields, tasks)  # doctest: +SKIP
    """

    def __init__(self, tokenizer, answer_prefix: str, temperature: float = 1.0) -> None:
        if not answer_prefix:
            raise ValueError(
                "closed-set sampling needs the answer prefix the prompts end with (force_answer_prefix=True)."
            )
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.prefix_ids = tokenizer(answer_prefix, add_special_tokens=False)["input_ids"]
        self.answer_ids: dict[str, list[list[int]]] = {
            task: readout.continuation_ids(tokenizer, answer_prefix, closed_set_answers(task))
            for task in (SCORE_TASK, DEGRADATION_TASK, COMPARISON_TASK)
        }

    def answer_lengths(self, task: str) -> set[int]:
        """The token lengths of a task's answers (one value: every answer is equally long)."""
        return {len(ids) for ids in self.answer_ids[task]}

    @torch.no_grad()
    def answer_logprobs(self, model, prompt: list[int], fields: dict, task: str) -> torch.Tensor:
        """log p(answer | prompt) of every answer of `task`'s set, `[K]`, from one forward (candidate_logprobs).

        `fields` are this prompt's multimodal inputs (`pixel_values`, `image_grid_thw`, `mm_token_type_ids`).
        """
        device = next(model.parameters()).device
        inputs = {"input_ids": torch.tensor([prompt], device=device), "attention_mask": torch.ones(1, len(prompt),
                  dtype=torch.long, device=device)}  # fmt: skip
        mm = fields.get("mm_token_type_ids", [0] * len(prompt))
        inputs["mm_token_type_ids"] = torch.tensor([list(mm)], device=device)
        if "pixel_values" in fields:
            inputs["pixel_values"] = fields["pixel_values"].to(device)
            inputs["image_grid_thw"] = fields["image_grid_thw"].to(device)
        return readout.candidate_logprobs(model, inputs, self.answer_ids[task], self.temperature)[0]

    def sample(
        self,
        model,
        prompt_ids: Sequence[list[int]],
        images: Sequence[list | None] | None,
        multimodal_fields: dict,
        tasks: Sequence[str],
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """One completion (answer token ids) per prompt, drawn from its set's normalised likelihoods.

        Consecutive identical prompts (TRL repeats each prompt G times in a row) share one forward.

        Args:
            prompt_ids: the tokenized prompts, each ending with the answer prefix.
            images: each prompt's images (TRL's list of lists), used to split `multimodal_fields` per prompt.
            multimodal_fields: the processor's batched image inputs (`pixel_values` rows of every image in order,
                `image_grid_thw` one row per image, `mm_token_type_ids` one list per prompt).
            tasks: each prompt's row task.
        """
        if len(tasks) != len(prompt_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(tasks)} tasks; the rows' tasks must be stashed.")
        per_prompt = _split_fields(multimodal_fields, images, len(prompt_ids))
        completions: list[list[int]] = []
        start = 0
        while start < len(prompt_ids):
            prompt, task, fields = list(prompt_ids[start]), tasks[start], per_prompt[start]
            if prompt[-len(self.prefix_ids) :] != self.prefix_ids:
                raise ValueError(
                    "closed-set sampling: the prompt does not end with the answer prefix; the chat template's "
                    "generation prompt must carry it (force_answer_prefix=True)."
                )
            if task not in self.answer_ids:
                raise ValueError(f"no closed answer set for task {task!r}; known: {sorted(self.answer_ids)}.")
            end = start + 1
            while end < len(prompt_ids) and _same_prompt(
                prompt, task, fields, prompt_ids[end], tasks[end], per_prompt[end]
            ):
                end += 1
            probs = self.answer_logprobs(model, prompt, fields, task).softmax(-1).cpu()
            for index in torch.multinomial(probs, end - start, replacement=True, generator=generator).tolist():
                completions.append(list(self.answer_ids[task][index]))
            start = end
        return completions


def _split_fields(fields: dict, images: Sequence[list | None] | None, count: int) -> list[dict]:
    """The batched multimodal inputs cut into one dict per prompt."""
    out: list[dict] = [{} for _ in range(count)]
    if "mm_token_type_ids" in fields:
        for index, row in enumerate(fields["mm_token_type_ids"]):
            out[index]["mm_token_type_ids"] = row.tolist() if isinstance(row, torch.Tensor) else list(row)
    if "pixel_values" not in fields:
        return out
    per_prompt = [len(i) if i else 0 for i in images] if images is not None else [1] * count
    grid = fields["image_grid_thw"]
    rows_per_image = grid.prod(-1).tolist()
    image, row = 0, 0
    for index, n_images in enumerate(per_prompt):
        n_rows = int(sum(rows_per_image[image : image + n_images]))
        if n_images:
            out[index]["pixel_values"] = fields["pixel_values"][row : row + n_rows]
            out[index]["image_grid_thw"] = grid[image : image + n_images]
        image, row = image + n_images, row + n_rows
    if image != len(rows_per_image) or row != fields["pixel_values"].shape[0]:
        raise ValueError(
            f"cannot split the image inputs per prompt: {len(rows_per_image)} images and "
            f"{fields['pixel_values'].shape[0]} patch rows for {sum(per_prompt)} images in the prompts."
        )
    return out


def _same_prompt(prompt: list[int], task: str, fields: dict, other_prompt, other_task: str, other: dict) -> bool:
    if task != other_task or list(other_prompt) != prompt or fields.keys() != other.keys():
        return False
    return all(
        torch.equal(value, other[key]) if isinstance(value, torch.Tensor) else value == other[key]
        for key, value in fields.items()
    )
