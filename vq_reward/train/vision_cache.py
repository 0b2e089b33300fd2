"""A frozen vision tower computes each distinct image once per training step instead of 3G times.

GRPO repeats every image G times (one per rollout), and each step reads it three times: to generate the rollouts,
in the reference model's forward and in the policy's training forward. With `freeze_vision` all of these get the
same image features, so `cache_frozen_vision(model)` makes the model's `get_image_features` compute only the images
it has not seen among the last `capacity` distinct ones, and hand back the stored features for the rest. Images are
matched exactly (same patch grid, equal pixel values), never by a hash alone. On CPU with the smoke model the vision
tower was a third of the step time; on a 7B model it is the largest forward there is per image.

The policy and the reference model get a cache each (their towers are equal only by construction), and a tower
that still has trainable parameters (e.g. LoRA on vision modules) is refused: its features change with every step.
"""

from collections import OrderedDict
from types import MethodType
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling


class VisionFeatureCache:
    """The pooled features of the last `capacity` distinct images, found by patch grid and pixel values."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"vision cache capacity must be >= 1 image, got {capacity}.")
        self.capacity = capacity
        self.entries: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.size = 0
        self.computed = self.reused = 0  # images, for tests and logs

    def lookup(self, key: tuple, pixels: torch.Tensor) -> torch.Tensor | None:
        for stored_pixels, features in self.entries.get(key, ()):
            if torch.equal(stored_pixels, pixels):
                self.entries.move_to_end(key)
                return features
        return None

    def store(self, key: tuple, pixels: torch.Tensor, features: torch.Tensor) -> None:
        self.entries.setdefault(key, []).append((pixels.clone(), features.detach()))  # not a view of the batch
        self.entries.move_to_end(key)
        self.size += 1
        while self.size > self.capacity:
            _, evicted = self.entries.popitem(last=False)
            self.size -= len(evicted)


def cache_frozen_vision(model: nn.Module, capacity: int) -> VisionFeatureCache:
    """Make `model` (a Qwen2.5-VL-like `...ForConditionalGeneration`) compute each distinct image's features once.

    Args:
        model: holds a module with a `visual` tower (every parameter frozen) and `get_image_features`.
        capacity: distinct images remembered; one step's distinct images (a generation batch) is enough.

    Returns the cache, whose `computed` and `reused` count images.
    """
    # The module that owns the tower and whose forward calls get_image_features (Qwen2_5_VLModel), also under PEFT.
    inner: Any = next((m for m in model.modules() if "visual" in dict(m.named_children())), None)
    if inner is None or not hasattr(inner, "get_image_features"):
        raise ValueError(f"{type(model).__name__} has no vision tower (a `visual` submodule) to cache.")
    visual = inner.visual
    trainable = [name for name, parameter in visual.named_parameters() if parameter.requires_grad]
    if trainable:
        raise ValueError(
            f"the vision tower still trains ({trainable[0]}, ...): its features change every step, so they cannot "
            "be cached. Freeze it (freeze_vision); keep adapters off its modules."
        )
    cache = VisionFeatureCache(capacity)
    inner.vision_feature_cache = cache
    # Bound to `inner` (not a closure), so a deepcopy of the model calls its own copy's tower and cache.
    inner.get_image_features = MethodType(_cached_image_features, inner)
    return cache


def _cached_image_features(
    self: Any, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **kwargs
) -> BaseModelOutputWithPooling:
    """`get_image_features` through `self.vision_feature_cache`: only unseen images reach the tower."""
    compute = type(self).get_image_features
    if image_grid_thw is None:
        return compute(self, pixel_values, image_grid_thw, **kwargs)
    kwargs["return_dict"] = True  # callers read `.pooler_output`; a tuple cannot be assembled from parts
    cache = self.vision_feature_cache
    grids = image_grid_thw.tolist()
    chunks = pixel_values.split([t * h * w for t, h, w in grids])
    sums = torch.stack([chunk.double().sum() for chunk in chunks]).tolist()  # one sync; narrows the exact matches
    keys = [(tuple(grid), total) for grid, total in zip(grids, sums, strict=True)]
    found = [cache.lookup(key, chunk) for key, chunk in zip(keys, chunks, strict=True)]
    firsts: list[int] = []  # the images the tower computes: the first of each set of equal uncached images
    missing: dict[int, int] = {}  # uncached image -> its first
    for index, features in enumerate(found):
        if features is None:
            same = (j for j in firsts if keys[j] == keys[index] and torch.equal(chunks[j], chunks[index]))
            missing[index] = next(same, index)
            if missing[index] == index:
                firsts.append(index)
    if firsts:
        output = compute(self, torch.cat([chunks[j] for j in firsts]), image_grid_thw[firsts], **kwargs)
        for j, features in zip(firsts, output.pooler_output, strict=True):
            cache.store(keys[j], chunks[j], features)
            found[j] = features
    for index, twin in missing.items():
        found[index] = found[twin]
    cache.computed += len(firsts)
    cache.reused += len(chunks) - len(firsts)
    # transformers' own output holds the per-image tuple in `pooler_output` too (get_image_features splits it).
    return BaseModelOutputWithPooling(pooler_output=tuple(found))  # type: ignore[arg-type]
