"""Loading a checkpoint's parts the way every user of them needs them: the processor left-padded with its pixel
budget pinned and checked, and the model refused unless every weight loaded (the scorer and training both use these).
"""

from typing import Any

from transformers import AutoProcessor, ProcessorMixin


def load_processor(path: str, revision: str | None = None, **budget: int) -> ProcessorMixin:
    """The checkpoint's processor, left-padded, with the pixel budget asked for pinned and checked."""
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
