"""Q-Insight readouts: degradation perception and pairwise comparison, deterministic over closed answer sets.

Q-Insight (bytedance/Q-Insight) answers in `<think>...</think><answer>...</answer>` with a JSON object for the
degradation task and one of "Image A" / "Image B" / "Similar" for the comparison task. The one-forward readout
forces an empty reasoning block and `<answer>\\n`, then scores every allowed answer by its teacher-forced
log-likelihood in one batched forward, and normalises over the set: a probability per answer that sums to one,
the same every call. `mass` is how much of the model's probability the set covers (a health figure, like the
scorer's digit mass). The generate path samples the model's own reasoning and parses its answer.
"""

import json
import re
from dataclasses import dataclass

import torch
from PIL import Image

from vq_reward import prompts
from vq_reward.images import Images
from vq_reward.parsing import parse_answer


DEGRADATION_CLASSES = ("noise", "compression", "blur", "darken")
SEVERITIES = ("slight", "moderate", "obvious", "serious", "catastrophic")
COMPARISON_RESULTS = ("Image A", "Image B", "Similar")
NO_DISTORTION = "null"

_DEGRADATION_ANSWERS = [(kind, level) for kind in DEGRADATION_CLASSES for level in SEVERITIES] + [
    (NO_DISTORTION, NO_DISTORTION)
]
_CLASS_AND_SEVERITY = re.compile(r'"distortion_class"\s*:\s*"([^"]+)".*?"severity"\s*:\s*"([^"]+)"', re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class Degradation:
    """What distorts an image and how badly.

    Attributes:
        distortion_class: "noise", "compression", "blur", "darken", or "null" (none); `None` if a generated answer
            could not be parsed.
        severity: "slight" .. "catastrophic", or "null"; for the readout, the likeliest severity of that class.
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


def parse_degradation(text: str) -> tuple[str | None, str | None]:
    """Class and severity from the first `<answer>` block (Q-Insight's reward reads the first one)."""
    answer = _ANSWER.search(text)
    found = _CLASS_AND_SEVERITY.search(answer.group(1)) if answer else None
    return (found.group(1), found.group(2)) if found else (None, None)


def parse_comparison(text: str) -> str | None:
    """ "Image A" / "Image B" / "Similar" when the first `<answer>` block is exactly one of them, else `None`."""
    answer = _ANSWER.search(text)
    result = answer.group(1).strip() if answer else None
    return result if result in COMPARISON_RESULTS else None


def degradation_messages() -> list[dict]:
    """Q-Insight's degradation request: its system prompt, then the image and the question."""
    return prompts.image_message(prompts.QINSIGHT_DEGRADATION_QUESTION, system=prompts.QINSIGHT_SYSTEM)


def comparison_messages() -> list[dict]:
    """Q-Insight's comparison request: reference, image A and image B, each introduced by its label."""
    content = [
        {"type": "text", "text": prompts.QINSIGHT_COMPARE_INTRO},
        {"type": "image"},
        {"type": "text", "text": "Image A:"},
        {"type": "image"},
        {"type": "text", "text": "Image B:"},
        {"type": "image"},
        {"type": "text", "text": prompts.QINSIGHT_COMPARE_QUESTION},
    ]
    return [
        {"role": "system", "content": [{"type": "text", "text": prompts.QINSIGHT_SYSTEM}]},
        {"role": "user", "content": content},
    ]


def read_degradation(scorer, images: Images) -> list[Degradation]:
    """One-forward degradation readout of each image (see the module docstring)."""
    prompt = _chat_text(scorer, degradation_messages())
    candidates = [degradation_answer(kind, level) for kind, level in _DEGRADATION_ANSWERS]
    results = []
    for image in scorer.prepare(images):
        logprobs = _candidate_logprobs(scorer, [image], prompt + prompts.QINSIGHT_ANSWER_PREFIX, candidates)
        probs = logprobs.softmax(-1)
        by_class = {kind: 0.0 for kind in (*DEGRADATION_CLASSES, NO_DISTORTION)}
        for (kind, _), p in zip(_DEGRADATION_ANSWERS, probs.tolist(), strict=True):
            by_class[kind] += p
        chosen = max(by_class, key=by_class.__getitem__)
        levels = [
            (level, p) for (kind, level), p in zip(_DEGRADATION_ANSWERS, probs.tolist(), strict=True) if kind == chosen
        ]
        total = sum(p for _, p in levels)
        severity_probs = {level: p / total for level, p in levels}
        results.append(
            Degradation(
                distortion_class=chosen,
                severity=max(severity_probs, key=severity_probs.__getitem__),
                class_probs=by_class,
                severity_probs=severity_probs,
                mass=logprobs.logsumexp(-1).exp().item(),
            )
        )
    return results


def read_comparison(scorer, reference: Images, image_a: Images, image_b: Images) -> list[Comparison]:
    """One-forward comparison readout of each (reference, A, B) triple."""
    triples = _triples(scorer, reference, image_a, image_b)
    prompt = _chat_text(scorer, comparison_messages()) + prompts.QINSIGHT_ANSWER_PREFIX
    results = []
    for triple in triples:
        logprobs = _candidate_logprobs(scorer, triple, prompt, list(COMPARISON_RESULTS))
        probs = dict(zip(COMPARISON_RESULTS, logprobs.softmax(-1).tolist(), strict=True))
        results.append(
            Comparison(result=max(probs, key=probs.__getitem__), probs=probs, mass=logprobs.logsumexp(-1).exp().item())
        )
    return results


def generate_degradation(scorer, images: Images, **generate_kwargs) -> list[Degradation]:
    """Sample Q-Insight's reasoning and answer for each image, and parse the class and severity."""
    prompt = _chat_text(scorer, degradation_messages())
    texts = [_generate(scorer, [image], prompt, generate_kwargs) for image in scorer.prepare(images)]
    return [Degradation(*parse_degradation(t), reasoning=parse_answer(t).reasoning, text=t) for t in texts]


def generate_comparison(
    scorer, reference: Images, image_a: Images, image_b: Images, **generate_kwargs
) -> list[Comparison]:
    """Sample Q-Insight's reasoning and verdict for each (reference, A, B) triple."""
    prompt = _chat_text(scorer, comparison_messages())
    texts = [
        _generate(scorer, triple, prompt, generate_kwargs) for triple in _triples(scorer, reference, image_a, image_b)
    ]
    return [Comparison(parse_comparison(t), reasoning=parse_answer(t).reasoning, text=t) for t in texts]


def _triples(scorer, reference: Images, image_a: Images, image_b: Images) -> list[list[Image.Image]]:
    columns = [scorer.prepare(images) for images in (reference, image_a, image_b)]
    if len({len(column) for column in columns}) != 1:
        counts = ", ".join(
            f"{name}: {len(c)}" for name, c in zip(("reference", "image_a", "image_b"), columns, strict=True)
        )
        raise ValueError(f"compare() needs as many references as A and B images; got {counts}.")
    return [list(triple) for triple in zip(*columns, strict=True)]


def _chat_text(scorer, messages: list[dict]) -> str:
    return scorer.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _candidate_logprobs(scorer, images: list[Image.Image], context: str, candidates: list[str]) -> torch.Tensor:
    """Log-likelihood of each candidate continuation of `context`, all candidates in one batched forward.

    Candidates are tokenized together with the context (tokens can merge across the boundary); everything after
    the longest token prefix the candidates share is the candidate's own part, and only that part is scored.
    """
    tokenizer = scorer.processor.tokenizer
    texts = [context + candidate for candidate in candidates]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    shared = _common_prefix_length(ids)
    own = [len(sequence) - shared for sequence in ids]
    inputs = scorer.processor(
        text=texts, images=[images] * len(texts), padding=True, padding_side="left", return_tensors="pt"
    ).to(scorer.device)
    keep = max(own) + 1
    with scorer._lock, torch.inference_mode():
        logits = scorer.model(**inputs, logits_to_keep=keep, use_cache=False).logits.float()
    logprobs = logits[:, :-1].log_softmax(-1)  # position j predicts the token at j + 1
    targets = inputs["input_ids"][:, -(keep - 1) :]
    token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    positions = torch.arange(keep - 1, device=token_logprobs.device)
    mask = positions >= (keep - 1 - torch.tensor(own, device=positions.device)).unsqueeze(-1)
    return (token_logprobs * mask).sum(-1).cpu()


def _common_prefix_length(sequences: list[list[int]]) -> int:
    length = 0
    for column in zip(*sequences, strict=False):
        if len(set(column)) > 1:
            break
        length += 1
    return min(length, min(len(s) for s in sequences) - 1)  # every candidate keeps at least one own token


def _generate(scorer, images: list[Image.Image], prompt: str, generate_kwargs: dict) -> str:
    settings = {"do_sample": True, "top_k": 50, "top_p": 0.95, "max_new_tokens": 1024, **generate_kwargs}
    inputs = scorer.processor(text=[prompt], images=[images], return_tensors="pt").to(scorer.device)
    with scorer._lock, torch.inference_mode():
        output = scorer.model.generate(**inputs, **settings)
    return scorer.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]


_RATING = re.compile(r'"rating"\s*:\s*([\d\.]+)')


def parse_rating(text: str) -> float | None:
    """The `"rating": x` of the first `<answer>` block (Q-Insight's score reward reads it so), else `None`.

    Only digits and dots are read, as Q-Insight's regex does: a negative or malformed number ("4.5.1") is `None`.

    Example:
        >>> parse_rating('<think>\\nsharp\\n</think>\\n<answer>\\n{"rating": 4.25}\\n</answer>')
        4.25
        >>> parse_rating('<answer>{"rating": 2}</answer><answer>{"rating": 5}</answer>')
        2.0
        >>> parse_rating('{"rating": 3}') is None  # no answer block
        True
    """
    answer = _ANSWER.search(text)
    found = _RATING.search(answer.group(1)) if answer else None
    if found is None:
        return None
    try:
        return float(found.group(1))
    except ValueError:  # "4.5.1" or "." match the character class but are no number
        return None


def degradation_answers() -> list[tuple[str, str]]:
    """Every (class, severity) answer of the closed set the degradation readout scores, in its order.

    Example:
        >>> answers = degradation_answers()
        >>> len(answers), answers[0], answers[-1]
        (21, ('noise', 'slight'), ('null', 'null'))
    """
    return list(_DEGRADATION_ANSWERS)
