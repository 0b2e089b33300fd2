"""Benchmark the reward adapters: our torch preprocessing against the HF processor, and each adapter against a bare
`score()` on the same images.

    vq-reward bench-rewards                      # tiny offline model, CPU
    vq-reward bench-rewards --model TianheWu/VisualQuality-R1-7B --device cuda
    vq-reward bench-rewards --activation-memory  # backward memory of the differentiable reward at 3B/7B widths

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
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

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


# Widths of the released Qwen2.5-VL checkpoints: (hidden, intermediate, heads, key/value heads, text layers).
QWEN_WIDTHS = {"3B": (2048, 11008, 16, 2, 36), "7B": (3584, 18944, 28, 4, 28)}
VISION_BLOCKS = 32


def activation_memory(size: str = "7B", side: int = 504, processor_path: str | None = None) -> dict[str, float]:
    """MiB autograd keeps for the differentiable reward's backward, per text layer and per vision block, bf16.

    Builds random models at the real widths with 1-2 layers (no download; the tiny tokenizer stands in, which only
    changes the embedding), counts the distinct non-weight storages saved for backward on one `side`x`side` image,
    and extrapolates to the real depths. About 2 minutes on CPU per size.
    """
    from transformers import AutoProcessor

    from vq_reward.scorer import VisualQualityScorer
    from vq_reward.hub import tiny_checkpoint

    path = processor_path or tiny_checkpoint()
    processor = AutoProcessor.from_pretrained(path, min_pixels=CHECKPOINT_MIN_PIXELS, max_pixels=CHECKPOINT_MAX_PIXELS)
    hidden, intermediate, heads, kv_heads, layers = QWEN_WIDTHS[size]
    result = {}
    for checkpointing in (False, True):
        saved = {}
        for text_layers, vision_blocks in ((1, 1), (2, 1), (1, 2)):
            model = _random_qwen(processor, hidden, intermediate, heads, kv_heads, text_layers, vision_blocks)
            reward = VisualQualityScorer(model, processor).as_differentiable_reward(
                gradient_checkpointing=checkpointing
            )
            saved[(text_layers, vision_blocks)] = _saved_bytes(reward, model, side) / 2**20
        per_layer, per_block = saved[(2, 1)] - saved[(1, 1)], saved[(1, 2)] - saved[(1, 1)]
        rest = saved[(1, 1)] - per_layer - per_block
        key = "checkpointed" if checkpointing else "plain"
        result[f"{key} MiB per text layer"], result[f"{key} MiB per vision block"] = per_layer, per_block
        result[f"{key} GiB total"] = (layers * per_layer + VISION_BLOCKS * per_block + rest) / 1024
    return result


def _random_qwen(
    processor, hidden: int, intermediate: int, heads: int, kv_heads: int, text_layers: int, vision_blocks: int
) -> Qwen2_5_VLForConditionalGeneration:
    """Random Qwen2.5-VL at the given widths; head_dim is 128 for both sizes, so the released M-RoPE sections fit."""
    ids = processor.tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(processor.tokenizer), "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": text_layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            "max_window_layers": text_layers, "tie_word_embeddings": False, "pad_token_id": ids("<|endoftext|>"),
            "bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"),
        },
        vision_config={
            "depth": vision_blocks, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
            "window_size": 112, "fullatt_block_indexes": [vision_blocks - 1], "out_hidden_size": hidden,
        },
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )  # fmt: skip
    return Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)


def _saved_bytes(reward: Callable, model: torch.nn.Module, side: int) -> int:
    weights = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # a weight kept for the backward costs no extra memory
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    pixels = torch.rand(1, 3, side, side, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        scores = reward(pixels)
    scores.sum().backward()
    return sum(saved.values())
