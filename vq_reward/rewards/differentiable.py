"""`DifferentiableQualityReward`: the scorer's readout with a graph back to the pixels (DRaFT, AlignProp, ReFL)."""

import os
from collections.abc import Sequence
from typing import Any

import torch

from vq_reward.images import MIN_SIDE, ImageInputError, check_input_range
from vq_reward.rewards.pixels import QwenImageLayout, pixel_inputs, resize_to_budget
from vq_reward.rewards.source import REWARD_NAME, ScorerSource
from vq_reward.scorer import VisualQualityScorer
from vq_reward.scores import check_finite
from vq_reward.views import Views, as_views, tensor_view


class DifferentiableQualityReward:
    """`fn(images) -> Tensor[N]`: expected scores in [1, 5] with a graph back to `images` (DRaFT, AlignProp, ReFL).

    The pixels go through `vq_reward.rewards.pixels` (smart resize with bicubic antialias `F.interpolate`, the
    processor's normalisation, Qwen's patch layout) into the scorer's HF backend (`HFBackend.read_pixel_scores`:
    the frozen model, `batch_size` images per forward, the scorer's own prompt and readout; "number" gives the
    gradient of the expected number). A score that is not finite raises `NonFiniteScoreError`.
    On an image whose size already conforms (sides multiples of 28 inside the pixel budget) and whose values are
    multiples of 1/255, the score equals `scorer.score()`; otherwise it differs by the resize filter and by
    `score()`'s uint8 rounding. Values outside `input_range` are clamped (their gradient is zero), as diffusion loops
    do with VAE output.

    Args:
        scorer: a loaded scorer (its weights stay frozen), or a model name to load lazily.
        input_range: (0, 1) for pipeline `output_type="pt"`, (-1, 1) for raw VAE output.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant checkpointing, switched on
            for the call only; the model runs in training mode meanwhile, which changes nothing for Qwen2.5-VL: it
            has no dropout).
        device: where a lazily loaded scorer goes; `None` = `default_device()`.
        load_kwargs: `VisualQualityScorer.from_pretrained` arguments for a lazily loaded scorer.
        views: K > 1 returns the mean score over K deterministic views of each image at the model's size (view 0
            the image itself, then seeded crops with bicubic `F.interpolate` rescales, as `score(views=K)` cuts
            them: `vq_reward.views`), so a pixel pattern tuned to one exact patch grid earns less; the gradient
            flows through every view. Costs K forwards and backwards per image.

    The call also accepts and ignores `prompts` (the scorer is no-reference), so it fits `fn(images, prompts)` loops.

    Memory: the frozen weights get no gradient or optimizer state, so the cost is the weights plus the activations
    kept for the backward pass, which grow linearly with the image tokens (`H * W / 784` per image, plus ~100 prompt
    tokens); `benchmarks/bench_rewards.py --activation-memory` measures them at the 3B and 7B widths (results in
    `benchmarks/README.md`). To fit more, cap the pixels (`from_pretrained(..., max_pixels=512 * 512)`), score fewer
    images per step, or turn on `gradient_checkpointing`.

    Example (DRaFT-1: gradient through the last denoising step only):
        >>> reward_fn = scorer.as_differentiable_reward(input_range=(-1, 1))
        >>> pixels = torch.rand(2, 3, 56, 56, requires_grad=True)
        >>> loss = -reward_fn(pixels * 2 - 1).mean()
        >>> loss.backward()  # reaches the pixels (and a policy behind them); the scorer's weights get no gradient
        >>> pixels.grad.shape
        torch.Size([2, 3, 56, 56])
    """

    def __init__(
        self,
        scorer: VisualQualityScorer | str | os.PathLike,
        input_range: tuple[float, float] = (0.0, 1.0),
        gradient_checkpointing: bool = False,
        device: str | torch.device | None = None,
        load_kwargs: dict[str, Any] | None = None,
        views: int | Views = 1,
    ) -> None:
        if isinstance(scorer, VisualQualityScorer) and scorer.backend.name != "hf":
            raise TypeError(
                f"DifferentiableQualityReward needs the in-process HF model: gradients cannot flow back through the "
                f"{scorer.backend.name} backend (a vLLM engine or server returns numbers, not a graph). Load the "
                "scorer with VisualQualityScorer.from_pretrained(..., backend='hf'), or use as_reward() for a reward "
                "without gradients."
            )
        self.source = ScorerSource(scorer, device, load_kwargs)
        self.input_range = check_input_range(input_range)
        self.gradient_checkpointing = gradient_checkpointing
        self.views = as_views(views)
        self.__name__ = REWARD_NAME

    def __call__(
        self, images: torch.Tensor | Sequence[torch.Tensor], prompts: Sequence[Any] | None = None
    ) -> torch.Tensor:
        scorer = self.source.get()
        backend = scorer.hf_backend()
        batch = _tensor_list(images, scorer.max_input_pixels)
        unit = [self._to_unit_range(image) for image in batch]
        layout = QwenImageLayout.from_processor(backend.processor)
        request = scorer.request()
        scores = []
        for start in range(0, len(unit), scorer.batch_size):
            chunk = unit[start : start + scorer.batch_size]
            # One (N, 3, H, W) tensor has one size, so its chunk is resized in one call; a list may mix sizes.
            group = torch.stack(chunk) if isinstance(images, torch.Tensor) else chunk
            per_view = []
            for index in range(self.views.count):
                pixel_values, grid = pixel_inputs(_view(group, index, layout, self.views), layout)
                with scorer.lock:
                    details = backend.read_pixel_scores(
                        request, pixel_values, grid, scorer.tokens, scorer.readout, self.gradient_checkpointing
                    )
                per_view.append(details.scores)
            scores.append(torch.stack(per_view).mean(dim=0))
        result = torch.cat(scores)
        check_finite(result, [f"images[{i}]" for i in range(len(batch))], backend.name)
        return result.to(batch[0].device)

    def _to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        low, high = self.input_range
        return ((images - low) / (high - low)).clamp(0.0, 1.0)


def _view(
    images: torch.Tensor | list[torch.Tensor], index: int, layout: QwenImageLayout, views: Views
) -> torch.Tensor | list[torch.Tensor]:
    """View `index` of each image at the model's size, as `score(views=...)` cuts it (view 0: the images as given)."""
    if index == 0:
        return images
    if isinstance(images, torch.Tensor):
        return tensor_view(resize_to_budget(images, layout), index, views).clamp(0, 1)
    return [tensor_view(resize_to_budget(image.reshape(1, *image.shape[-3:]), layout), index, views).clamp(0, 1)
            for image in images]  # fmt: skip


def _tensor_list(images: torch.Tensor | Sequence[torch.Tensor], max_pixels: int) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor) and (images.ndim != 4 or images.shape[1] != 3):
        raise ImageInputError(
            f"images has shape {tuple(images.shape)}; expected (N, 3, H, W) RGB, channels first (use "
            ".permute(0, 3, 1, 2) for NHWC), or a list of (3, H, W) tensors."
        )
    batch = list(images)
    if not batch:
        raise ImageInputError("No images given: pass a float tensor (N, 3, H, W) or a list of (3, H, W) tensors.")
    for index, image in enumerate(batch):
        name = f"images[{index}]"
        if not isinstance(image, torch.Tensor) or not image.is_floating_point():
            kind = type(image).__name__ if not isinstance(image, torch.Tensor) else f"tensor of {image.dtype}"
            raise ImageInputError(
                f"{name} is a {kind}; the differentiable reward takes float tensors (N, 3, H, W), since uint8 "
                "pixels or PIL images carry no gradient. Use scorer.as_reward() for those."
            )
        if image.ndim != 3 or image.shape[0] != 3:
            raise ImageInputError(
                f"{name} has shape {tuple(image.shape)}; expected (3, H, W) RGB, channels first (use "
                ".permute(2, 0, 1) for HWC)."
            )
        height, width = image.shape[-2:]
        if min(height, width) < MIN_SIDE:
            raise ImageInputError(f"{name} has sides {(height, width)}; both must be at least {MIN_SIDE}.")
        if height * width > max_pixels:
            raise ImageInputError(
                f"{name} is {width}x{height} = {height * width:,} pixels, over the scorer's max_input_pixels="
                f"{max_pixels:,}; downscale it first, or raise max_input_pixels."
            )
        if not torch.isfinite(image).all():
            raise ImageInputError(f"{name} contains NaN or infinite values; check the model output that produced it.")
    return batch
