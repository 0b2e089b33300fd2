"""Q-Insight readouts: degradation perception and pairwise comparison, deterministic over closed answer sets.

Q-Insight (bytedance/Q-Insight) answers in `<think>...</think><answer>...</answer>`, with a JSON object for the
degradation task and one of "Image A" / "Image B" / "Similar" for the comparison task. The readout forces an empty
reasoning block and `<answer>\\n` (`prompts.QINSIGHT_ANSWER_PREFIX`), scores every allowed answer by its
teacher-forced log-likelihood (`readout.candidate_logprobs`: all answers and all images of a batch in one forward),
and normalises over the set: a probability per answer that sums to one, the same every call. `mass` is how much of
the model's probability the set covers (a health figure, like the scorer's digit mass). The generate path samples
the model's own reasoning with Q-Insight's official settings and parses its answer.

`VisualQualityScorer.degradation()` and `.compare()` call these with the scorer's model and prepared images.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from vq_reward import prompts, readout
from vq_reward.parsing import parse_answer, parse_comparison, parse_degradation


DEGRADATION_CLASSES = prompts.QINSIGHT_DEGRADATION_CLASSES
SEVERITIES = prompts.QINSIGHT_SEVERITIES
COMPARISON_RESULTS = prompts.QINSIGHT_COMPARISON_RESULTS
NO_DISTORTION = prompts.QINSIGHT_NONE

_DEGRADATION_ANSWERS = [(kind, level) for kind in DEGRADATION_CLASSES for level in SEVERITIES] + [
    (NO_DISTORTION, NO_DISTORTION)
]


@dataclass(frozen=True)
class Degradation:
    """What distorts an image and how badly.

    Attributes:
        distortion_class: "noise", "compression", "blur", "darken", or "null" (none); `None` if a generated answer
            could not be parsed.
        severity: readout: the likeliest severity of the likeliest class; generate path: the parsed answer's.
            "slight" .. "catastrophic", or "null".
        class_probs: readout only: probability of each class (and "null"), summing to one.
        severity_probs: readout only: probability of each severity given the chosen class, summing to one.
        mass: readout only: the model's probability of answering inside the closed set at all.
        reasoning: generate path only: the model's `<think>` text.
        text: generate path only: the whole completion.
    """

    distortion_class: str | None
    severity: str | None
    class_probs: dict[str, float] | None = None
    severity_probs: dict[str, float] | None = None
    mass: float | None = None
    reasoning: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class Comparison:
    """Which of two enhanced images is better, given the degraded reference.

    Attributes:
        result: "Image A", "Image B" or "Similar"; `None` if a generated answer matches none of them.
        probs: readout only: probability of each result, summing to one.
        mass: readout only: the model's probability of answering inside the closed set at all.
        reasoning / text: generate path only.
    """

    result: str | None
    probs: dict[str, float] | None = None
    mass: float | None = None
    reasoning: str | None = None
    text: str | None = None


def degradation_answer(distortion_class: str, severity: str) -> str:
    """The answer JSON Q-Insight is trained to write.

    Example:
        >>> degradation_answer("blur", "serious")
        '{"distortion_class": "blur", "severity": "serious"}'
    """
    return json.dumps({"distortion_class": distortion_class, "severity": severity})


def degradation_answers() -> list[tuple[str, str]]:
    """Every (class, severity) answer of the closed set the degradation readout scores, in its order.

    Example:
        >>> answers = degradation_answers()
        >>> len(answers), answers[0], answers[-1]
        (21, ('noise', 'slight'), ('null', 'null'))
    """
    return list(_DEGRADATION_ANSWERS)


def read_degradation(
    model: PreTrainedModel, processor: ProcessorMixin, images: Sequence[Image.Image]
) -> list[Degradation]:
    """One-forward degradation readout of a batch of prepared images (see the module docstring)."""
    prompt = readout.chat_text(processor, prompts.degradation_messages()) + prompts.QINSIGHT_ANSWER_PREFIX
    answers = [degradation_answer(kind, level) for kind, level in _DEGRADATION_ANSWERS]
    logprobs = _answer_logprobs(model, processor, [prompt] * len(images), list(images), answers)
    return [_degradation(row) for row in logprobs]


def read_comparison(
    model: PreTrainedModel, processor: ProcessorMixin, triples: Sequence[Sequence[Image.Image]]
) -> list[Comparison]:
    """One-forward comparison readout of a batch of (reference, A, B) triples of prepared images."""
    prompt = readout.chat_text(processor, prompts.comparison_messages()) + prompts.QINSIGHT_ANSWER_PREFIX
    logprobs = _answer_logprobs(model, processor, [prompt] * len(triples), list(triples), list(COMPARISON_RESULTS))
    results = []
    for row in logprobs:
        probs = dict(zip(COMPARISON_RESULTS, row.softmax(-1).tolist(), strict=True))
        results.append(Comparison(max(probs, key=probs.__getitem__), probs, row.logsumexp(-1).exp().item()))
    return results


def generate_degradation(
    model: PreTrainedModel, processor: ProcessorMixin, images: Sequence[Image.Image], settings: Mapping
) -> list[Degradation]:
    """Sample Q-Insight's reasoning and answer for each prepared image, and parse the class and severity."""
    prompt = readout.chat_text(processor, prompts.degradation_messages())
    inputs = readout.model_inputs(processor, [prompt] * len(images), list(images)).to(model.device)
    texts = readout.generate_texts(model, processor, inputs, settings)
    return [Degradation(*parse_degradation(t), reasoning=parse_answer(t).reasoning, text=t) for t in texts]


def generate_comparison(
    model: PreTrainedModel, processor: ProcessorMixin, triples: Sequence[Sequence[Image.Image]], settings: Mapping
) -> list[Comparison]:
    """Sample Q-Insight's reasoning and verdict for each (reference, A, B) triple of prepared images."""
    prompt = readout.chat_text(processor, prompts.comparison_messages())
    inputs = readout.model_inputs(processor, [prompt] * len(triples), list(triples)).to(model.device)
    texts = readout.generate_texts(model, processor, inputs, settings)
    return [Comparison(parse_comparison(t), reasoning=parse_answer(t).reasoning, text=t) for t in texts]


def _answer_logprobs(
    model: PreTrainedModel, processor: ProcessorMixin, texts: list[str], images: list, answers: list[str]
) -> torch.Tensor:
    candidates = readout.continuation_ids(processor.tokenizer, prompts.QINSIGHT_ANSWER_PREFIX, answers)
    inputs = readout.model_inputs(processor, texts, images).to(model.device)
    return readout.candidate_logprobs(model, inputs, candidates).cpu()


def _degradation(logprobs: torch.Tensor) -> Degradation:
    probs = logprobs.softmax(-1).tolist()
    by_class = {kind: 0.0 for kind in (*DEGRADATION_CLASSES, NO_DISTORTION)}
    for (kind, _), p in zip(_DEGRADATION_ANSWERS, probs, strict=True):
        by_class[kind] += p
    chosen = max(by_class, key=by_class.__getitem__)
    levels = [(level, p) for (kind, level), p in zip(_DEGRADATION_ANSWERS, probs, strict=True) if kind == chosen]
    total = sum(p for _, p in levels)
    severity_probs = {level: p / total for level, p in levels}
    return Degradation(
        distortion_class=chosen,
        severity=max(severity_probs, key=severity_probs.__getitem__),
        class_probs=by_class,
        severity_probs=severity_probs,
        mass=logprobs.logsumexp(-1).exp().item(),
    )
