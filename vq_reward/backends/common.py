"""What the two vLLM backends share, the offline engine (`backends.vllm`) and the server client (`backends.server`):
the prompt's token ids, the HF `generate` keywords as vLLM sampling fields, and reading the digits'
log-probabilities out of one generated position. Neither backend imports the other.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import ProcessorMixin

from vq_reward.readout import Request


GENERATE_KEYS = ("do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "seed", "repetition_penalty", "min_p")


def prompt_ids(processor: ProcessorMixin, request: Request) -> list[int]:
    """The prompt's ids, answer prefix included, with one `<|image_pad|>` per image (vLLM expands it itself:
    pre-expanded ids are silently read wrong)."""
    return processor.tokenizer(request.text + request.answer_prefix, add_special_tokens=False)["input_ids"]


def sampling_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """HF `generate` keywords as vLLM sampling parameters (OpenAI request fields use the same names).

    `do_sample=False` is greedy (temperature 0); `max_new_tokens` becomes `max_tokens`; `temperature`, `top_k`,
    `top_p`, `min_p`, `repetition_penalty` and `seed` keep their names. What is not given keeps the checkpoint's
    generation config, as in HF.

    Example:
        >>> sampling_settings({"do_sample": False, "max_new_tokens": 10})
        {'temperature': 0.0, 'max_tokens': 10}
    """
    unknown = sorted(set(settings) - set(GENERATE_KEYS))
    if unknown:
        raise ValueError(
            f"generate settings {unknown} have no vLLM equivalent here; supported: {list(GENERATE_KEYS)}."
        )
    out = {key: settings[key] for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")
           if settings.get(key) is not None}  # fmt: skip
    if not settings.get("do_sample", True):
        out = {key: value for key, value in out.items() if key in ("repetition_penalty", "seed")}
        out["temperature"] = 0.0
    if settings.get("max_new_tokens") is not None:
        out["max_tokens"] = int(settings["max_new_tokens"])
    return out


def digit_logprobs(
    position: Mapping[int, float], ids: Sequence[int], source: str, fix: str, error: type[Exception] = RuntimeError
) -> list[float]:
    """The log-probabilities of `ids` at one generated position, by token id (vLLM may list the sampled token too).

    Raises:
        error: naming `source` and the `fix` when some of `ids` are missing.

    Example:
        >>> digit_logprobs({7: -0.5, 3: -1.0, 9: -4.0}, [3, 7], "vLLM", "raise max_logprobs")
        [-1.0, -0.5]
    """
    missing = [i for i in ids if i not in position]
    if missing:
        raise error(f"{source} returned no log-probability for token ids {missing}; {fix}")
    return [float(position[i]) for i in ids]
