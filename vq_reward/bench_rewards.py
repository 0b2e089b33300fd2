"""Benchmark the reward adapters: our torch preprocessing against the HF processor, and each adapter against a bare
`score()` on the same images.

    vq-reward bench-rewards                      # tiny offline model, CPU
    vq-reward bench-rewards --model TianheWu/VisualQuality-R1-7B --device cuda

Preprocessing runs with the real checkpoints' pixel budget (3136..12845056), where a 512x384 image is resized to
504x392, so both sides do the full resize, normalise and patchify. The adapter rows use the model's own budget and
put all images in one forward (batch size = number of images), so the differences are the adapters' own work:
input conversion, locking, bookkeeping, and for the differentiable reward the autograd graph.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Qwen2VLImageProcessor

from vq_reward.bench import synthetic_images
from vq_reward.differentiable import QwenImageLayout, pixel_inputs
from vq_reward.images import resize_for_model


# The pixel budget the VisualQuality-R1 / Qwen2.5-VL checkpoints ship with.
CHECKPOINT_MIN_PIXELS = 3136
CHECKPOINT_MAX_PIXELS = 12845056


@dataclass(frozen=True)
class Timing:
    name: str
    seconds: float  # best of the repeats, for the whole batch
    images: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def best_time(run: Callable[[], object], repeats: int, synchronize: Callable[[], None] = lambda: None) -> float:
    """Best wall time of `repeats` runs after one untimed warm-up run."""
    run()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_preprocessing(num_images: int = 32, repeats: int = 3) -> list[Timing]:
    """HF processor vs `vq_reward.differentiable.pixel_inputs` on `num_images` images of 512x384, on CPU."""
    pil = synthetic_images(num_images)
    tensor = torch.from_numpy(np.stack([np.asarray(image) for image in pil])).permute(0, 3, 1, 2).float() / 255
    processor = Qwen2VLImageProcessor(min_pixels=CHECKPOINT_MIN_PIXELS, max_pixels=CHECKPOINT_MAX_PIXELS)
    layout = QwenImageLayout.from_processor(processor)

    def ours_backward() -> None:
        leaf = tensor.clone().requires_grad_(True)
        pixel_inputs(leaf, layout)[0].sum().backward()

    runs = {
        "HF processor (PIL in)": lambda: processor(images=pil, return_tensors="pt"),
        "PIL smart resize + HF processor (score()'s path)": lambda: processor(
            images=[resize_for_model(image, layout.min_pixels, layout.max_pixels) for image in pil],
            return_tensors="pt",
        ),
        "ours, torch (tensor in)": lambda: pixel_inputs(tensor, layout),
        "ours, torch, forward + backward": ours_backward,
    }
    return [Timing(name, best_time(run, repeats), num_images) for name, run in runs.items()]


def bench_adapters(
    model: str, device: str = "cpu", num_images: int = 32, repeats: int = 3, dtype: torch.dtype | None = None
) -> list[Timing]:
    """A bare `score()` and each reward adapter on the same `num_images` 512x384 images, one forward each."""
    from vq_reward.scorer import VisualQualityScorer

    scorer = VisualQualityScorer.from_pretrained(model, device=device, dtype=dtype, batch_size=num_images)
    pil = synthetic_images(num_images)
    tensor = torch.from_numpy(np.stack([np.asarray(image) for image in pil])).permute(0, 3, 1, 2).float() / 255
    tensor = tensor.to(scorer.device)
    reward_fn = scorer.as_reward()
    trl_reward = scorer.as_trl_reward(image_key="image")
    differentiable = scorer.as_differentiable_reward()
    completions = [[{"role": "assistant", "content": "..."}]] * num_images

    def differentiable_backward() -> None:
        leaf = tensor.clone().requires_grad_(True)
        differentiable(leaf).sum().backward()

    def synchronize() -> None:
        if scorer.device.type == "cuda":
            torch.cuda.synchronize(scorer.device)

    runs = {
        "score(PIL list)": lambda: scorer.score(pil),
        "score(tensor NCHW [0,1])": lambda: scorer.score(tensor),
        "as_reward()(PIL list)": lambda: reward_fn(pil, None, None),
        "as_reward()(tensor NCHW [0,1])": lambda: reward_fn(tensor, None, None),
        "as_trl_reward()(image column)": lambda: trl_reward([None] * num_images, completions, image=pil),
        "as_differentiable_reward()(tensor), forward": lambda: differentiable(tensor.clone().requires_grad_(True)),
        "as_differentiable_reward()(tensor), forward + backward": differentiable_backward,
    }
    return [Timing(name, best_time(run, repeats, synchronize), num_images) for name, run in runs.items()]


def format_tables(preprocessing: list[Timing], adapters: list[Timing]) -> str:
    """Two markdown tables: preprocessing throughput, and each adapter's time relative to a bare score().

    The adapter table's last two columns compare with `score()` on PIL images (the pure scoring cost) and with
    `score()` on the same kind of input as the row (the adapter's own overhead: a tensor costs `score()` a
    float -> uint8 -> PIL conversion too).
    """
    lines = ["| preprocessing (CPU) | images/s | ms per batch | vs HF processor |", "|---|---:|---:|---:|"]
    reference = preprocessing[0].seconds
    for timing in preprocessing:
        lines.append(
            f"| {timing.name} | {timing.images_per_second:.1f} | {timing.seconds * 1e3:.1f} | "
            f"{reference / timing.seconds:.2f}x |"
        )
    lines += [
        "",
        "| call | images/s | ms per call | vs score(PIL) | vs score(same input) |",
        "|---|---:|---:|---:|---:|",
    ]
    by_input = {"PIL": adapters[0].seconds, "tensor": adapters[1].seconds}
    for timing in adapters:
        same = by_input["PIL" if "(PIL" in timing.name or "image column" in timing.name else "tensor"]
        lines.append(
            f"| {timing.name} | {timing.images_per_second:.1f} | {timing.seconds * 1e3:.1f} | "
            f"{(timing.seconds / adapters[0].seconds - 1) * 100:+.0f}% | {(timing.seconds / same - 1) * 100:+.0f}% |"
        )
    return "\n".join(lines)
