"""Loading a checkpoint's parts the way every user of them needs them: the processor left-padded with its pixel
budget pinned and checked, the model refused unless every weight loaded (a truncated weights file named, with the
fix), and never a line of code the checkpoint ships (the scorer, serving and training all use these). transformers'
"Loading weights" progress bar is kept off the terminal; its download bars and warnings are not.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
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


def pixel_budget(min_pixels: int | None = None, max_pixels: int | None = None) -> dict[str, int]:
    """The pixel budget asked for as `load_processor` keywords: only the bounds given (`None` keeps the checkpoint's).

    Example:
        >>> pixel_budget(None, 50176)
        {'max_pixels': 50176}
    """
    return {key: value for key, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if value}


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
    with refusing_custom_code(path), naming_broken_weights(path), quiet_weight_bar():
        loaded: Any = AutoModelForImageTextToText.from_pretrained(
            path,
            revision=revision,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=False,  # explicit: transformers would otherwise ask on stdin for an unknown model type
            output_loading_info=True,
        )
    model, info = loaded
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


@contextlib.contextmanager
def naming_broken_weights(path: str) -> Iterator[None]:
    """Turn safetensors' "Error while deserializing header" into which file is broken and what to do."""
    try:
        yield
    except SafetensorError as error:
        raise OSError(
            f"{broken_weights_file(path)} is truncated or corrupt ({error}): it was not downloaded or written "
            "completely. Download it again (for a hub id, delete it from the Hugging Face cache first) or re-save the "
            "checkpoint with save_pretrained."
        ) from None


def broken_weights_file(path: str) -> str:
    """The first `.safetensors` file of a local checkpoint folder that does not open; the folder if none fails."""
    for file in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError:
            return str(file)
    return path


@contextlib.contextmanager
def quiet_weight_bar() -> Iterator[None]:
    """Without transformers' "Loading weights" bar, which every load would print; other bars (downloads) stay."""
    from transformers.utils import logging as transformers_logging

    if not hasattr(transformers_logging, "set_tqdm_hook"):  # older transformers: leave its bars as they are
        yield
        return
    previous = transformers_logging.set_tqdm_hook(None)

    def hook(factory: Any, args: tuple, kwargs: dict) -> Any:
        if kwargs.get("desc") == "Loading weights":
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    transformers_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous)


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
