"""Loading a checkpoint's parts the way every user of them needs them: the processor left-padded with its pixel
budget pinned and checked, the model refused unless every weight loaded, and never a line of code the checkpoint
ships (the scorer, serving and training all use these).
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
)


def load_processor(path: str, revision: str | None = None, **budget: int) -> ProcessorMixin:
    """The checkpoint's processor, left-padded, with the pixel budget asked for pinned and checked."""
    with refusing_custom_code(path):
        processor = AutoProcessor.from_pretrained(
            path, revision=revision, padding_side="left", trust_remote_code=False, **budget
        )
    processor.tokenizer.padding_side = "left"
    processor.tokenizer.truncation_side = "left"
    # Hub configs can silently override a `size` argument; make sure the budget asked for is the one in force.
    size = processor.image_processor.size
    for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        if key in budget and size[edge] != budget[key]:
            raise RuntimeError(f"asked for {key}={budget[key]} but the processor of {path} uses {size[edge]}.")
    return processor


def load_config(path: str, revision: str | None = None) -> PretrainedConfig:
    """The checkpoint's config (the vLLM engine sizes its KV cache from it)."""
    with refusing_custom_code(path):
        return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=False)


def load_model(
    path: str,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """The checkpoint's model, only if every weight loaded (see `check_loaded`)."""
    with refusing_custom_code(path):
        model, info = AutoModelForImageTextToText.from_pretrained(
            path,
            revision=revision,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=False,  # explicit: transformers would otherwise ask on stdin for an unknown model type
            output_loading_info=True,
        )
    check_loaded(path, info)
    return model


@contextlib.contextmanager
def refusing_custom_code(path: str) -> Iterator[None]:
    """Turn transformers' "pass trust_remote_code=True" (an option vq_reward does not offer) into what to do."""
    try:
        yield
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"{path} needs its own Python code to load (its config maps to a model type transformers does not know); "
            "vq_reward never runs code a checkpoint ships. Use a Qwen2.5-VL checkpoint (VisualQuality-R1, Q-Insight, "
            "or one re-saved with save_pretrained)."
        ) from None


def check_loaded(path: str, info: dict[str, Any]) -> None:
    """Refuse a checkpoint that did not load completely (a partial load leaves random weights behind silently)."""
    problems = {key: sorted(info.get(key) or []) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {key: value for key, value in problems.items() if value}
    if problems:
        details = "; ".join(
            f"{key}: {len(value)} ({', '.join(map(str, value[:3]))}, ...)" for key, value in problems.items()
        )
        raise RuntimeError(
            f"{path} did not load completely ({details}). It is not a whole Qwen2.5-VL checkpoint, or was written by "
            "an incompatible transformers version; re-save it with save_pretrained."
        )
