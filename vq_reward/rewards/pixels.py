"""The Qwen2.5-VL image preprocessing written in torch, so a reward's gradient reaches the input pixels.

The HF processor is not written for autograd (it goes through uint8 and copies its inputs). This module does the
same three steps on float tensors:

1. smart resize: sides multiples of 28, pixel count inside the processor's budget, with `F.interpolate` (bicubic,
   antialias, the filter PIL uses), skipped when the size already conforms;
2. rescale/normalize with the processor's mean and std;
3. patchify into the processor's flat layout: rows ordered by 2x2 merge block, each row `(channel, temporal, 14,
   14)` with the frame repeated `temporal_patch_size` times, plus `image_grid_thw = [1, H/14, W/14]`.

On an image whose size already conforms, the output equals the processor's to float rounding
(`tests/test_pixels.py` holds it to the bound it states). The token side comes from `vq_reward.readout.token_inputs`,
the same function the PIL path uses.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import ProcessorMixin

from vq_reward.images import smart_resize


@dataclass(frozen=True)
class QwenImageLayout:
    """What the Qwen2-VL image processor does to pixels, read from a processor.

    Attributes:
        min_pixels / max_pixels: the pixel budget of the smart resize.
        mean / std: per-channel normalisation of [0, 1] pixels (CLIP's for Qwen2.5-VL).
        patch_size: side of a vision patch (14).
        merge_size: patches merged per side into one language token (2).
        temporal_patch_size: frames per patch; a still image is repeated this many times (2).
    """

    min_pixels: int
    max_pixels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2

    @classmethod
    def from_processor(cls, processor: ProcessorMixin) -> "QwenImageLayout":
        """Read the layout from a Qwen2.5-VL processor or its image processor.

        Example:
            >>> layout = QwenImageLayout.from_processor(scorer.processor)
            >>> layout.factor
            28
        """
        image_processor: Any = getattr(processor, "image_processor", processor)
        size = image_processor.size
        return cls(
            min_pixels=int(size["shortest_edge"]),
            max_pixels=int(size["longest_edge"]),
            mean=tuple(float(v) for v in image_processor.image_mean),
            std=tuple(float(v) for v in image_processor.image_std),
            patch_size=int(image_processor.patch_size),
            merge_size=int(image_processor.merge_size),
            temporal_patch_size=int(image_processor.temporal_patch_size),
        )

    @property
    def factor(self) -> int:
        """Sides of a resized image are multiples of this (patch_size * merge_size = 28)."""
        return self.patch_size * self.merge_size


def resize_to_budget(images: torch.Tensor, layout: QwenImageLayout) -> torch.Tensor:
    """Smart-resize `(N, 3, H, W)` pixels in [0, 1]; returns the input itself when its size already conforms.

    Bicubic with antialias is the filter PIL's bicubic resize uses, which is what `score()` resizes with; the result
    is clamped to [0, 1] as PIL's uint8 output is. The two agree closely but not bit for bit.

    Example:
        >>> resize_to_budget(torch.rand(1, 3, 384, 512), layout).shape  # the tiny model's budget: at most 64 tokens
        torch.Size([1, 3, 168, 252])
    """
    height, width = images.shape[-2:]
    new_height, new_width = smart_resize(height, width, layout.min_pixels, layout.max_pixels, layout.factor)
    if (new_height, new_width) == (height, width):
        return images
    resized = F.interpolate(images, size=(new_height, new_width), mode="bicubic", align_corners=False, antialias=True)
    return resized.clamp(0.0, 1.0)


def normalize(images: torch.Tensor, layout: QwenImageLayout) -> torch.Tensor:
    """`(x - mean) / std` per channel, for `(N, 3, H, W)` pixels in [0, 1], as one fused `x * scale + shift`."""
    mean = torch.tensor(layout.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(layout.std, dtype=torch.float64).view(1, -1, 1, 1)
    scale, shift = (1 / std).to(images), (-mean / std).to(images)
    return torch.addcmul(shift, images, scale)


def patchify(images: torch.Tensor, layout: QwenImageLayout) -> torch.Tensor:
    """Cut normalised `(N, C, H, W)` images (H, W multiples of 28) into the processor's flat patch rows.

    Returns `(N * H/14 * W/14, C * temporal_patch_size * 14 * 14)`: image by image, rows walk the 2x2 merge blocks
    in raster order and the four patches inside each block in raster order; a row holds the channels, each with the
    frame repeated `temporal_patch_size` times, each a 14x14 patch.

    Example:
        >>> patchify(torch.zeros(2, 3, 56, 84), layout).shape
        torch.Size([48, 1176])
    """
    batch, channels, height, width = images.shape
    patch, merge = layout.patch_size, layout.merge_size
    if height % layout.factor or width % layout.factor:
        raise ValueError(f"patchify needs sides that are multiples of {layout.factor}, got {height}x{width}.")
    grid_h, grid_w = height // patch, width // patch
    blocks = images.reshape(batch, channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    # -> (batch, block row, block column, row in block, column in block, channel, patch row, patch column)
    blocks = blocks.permute(0, 2, 5, 3, 6, 1, 4, 7)
    frames = blocks.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, layout.temporal_patch_size, -1, -1)
    return frames.reshape(batch * grid_h * grid_w, channels * layout.temporal_patch_size * patch * patch)


def pixel_inputs(
    images: torch.Tensor | Sequence[torch.Tensor], layout: QwenImageLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """`pixel_values` and `image_grid_thw` for images in [0, 1], with the graph kept back to the input pixels.

    Args:
        images: one `(N, 3, H, W)` tensor, or a list of `(3, H, W)` / `(1, 3, H, W)` tensors of different sizes.
        layout: the processor's layout (`QwenImageLayout.from_processor`).

    Returns:
        `pixel_values` `(sum of patches, 3 * 2 * 14 * 14)` in the input's dtype and `image_grid_thw` `(N, 3)` int64,
        laid out as the HF processor lays them out for the same images.

    Example:
        >>> values, grid = pixel_inputs(torch.rand(2, 3, 56, 56, requires_grad=True), layout)
        >>> grid.tolist()
        [[1, 4, 4], [1, 4, 4]]
    """
    groups = (
        [images] if isinstance(images, torch.Tensor) else [image.reshape(1, *image.shape[-3:]) for image in images]
    )
    values, grids = [], []
    for group in groups:
        resized = resize_to_budget(group, layout)
        grid = [1, resized.shape[-2] // layout.patch_size, resized.shape[-1] // layout.patch_size]
        values.append(patchify(normalize(resized, layout), layout))
        grids.extend([grid] * len(resized))
    return torch.cat(values), torch.tensor(grids, dtype=torch.long)
