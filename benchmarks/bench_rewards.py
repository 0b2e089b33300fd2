"""Benchmark the reward adapters: the torch preprocessing against the HF processor, each adapter against a bare
`score()`, and the memory autograd keeps for the differentiable reward's backward at the 3B / 7B widths.

    OMP_NUM_THREADS=1 python benchmarks/bench_rewards.py                     # tables, tiny offline model, CPU
    python benchmarks/bench_rewards.py --model TianheWu/VisualQuality-R1-7B --device cuda
    OMP_NUM_THREADS=1 python benchmarks/bench_rewards.py --activation-memory --sizes 7B
    python benchmarks/bench_rewards.py --quick                               # small sizes and widths (tests)

Tables. Preprocessing runs with the real checkpoints' pixel budget (3136..12845056), where a 512x384 image is
resized to 504x392, so both sides do the full resize, normalise and patchify. The adapter rows use the model's own
budget and put all images in one forward (batch size = number of images), so the differences are the adapters' own
work: input conversion, locking, bookkeeping, and for the differentiable reward the autograd graph. Times are the
median over `--repeats` after one warm-up, with the range over the repeats.

Activation memory (`--activation-memory`). For each size, random bf16 Qwen2.5-VL models are built at the released
widths (3B: hidden 2048, intermediate 11008, 16 heads, 2 key/value heads, 36 layers; 7B: 3584, 18944, 28, 4, 28
layers; vision: 1280 wide, intermediate 3420, 16 heads, 32 blocks of which 7, 15, 23, 31 attend globally and the
rest in 112-pixel windows; head_dim 128, so M-RoPE sections [16, 24, 24]; the released vocabulary sizes) with 1-2
layers: (1 text layer, 1 global vision block), (2, 1), (1, 1 windowed + 1 global), (1, 2 global). No download: the
tiny checkpoint's tokenizer stands in (its ids are a subset of the vocabulary). For one 504x504 image, the distinct
non-weight storages autograd saves for the differentiable reward's backward are counted (saved-tensor hooks); the
differences between the models give MiB per text layer, per windowed and per global vision block, and the rest
(embeddings, merger, readout, preprocessing), which extrapolate to the real depths. This is done for both readouts
("first-digit", "number": its 48 answer branches ride along in the same forward), with and without gradient
checkpointing, and the number readout's extra memory is printed as a percentage of the first-digit readout's.

What autograd saves depends on the graph, the shapes and the dtypes, not on the values, so by default the matrix
products, convolutions and attention kernels (forward and backward) return zeros of the right shape and strides
instead of being computed (`ShapeOnlyProducts`); everything else runs for real. How long it takes on CPU: on 2
shared cores, where a bf16 matrix product of these widths runs below 1 GFLOP/s, a fully computed count took over 35
minutes for the 3B size; this one takes about a minute per size (half of it building and zero-filling the models;
5 GiB of memory for the 7B). `--real-products` computes the products (the slow way); `--check` counts every case
both ways and fails unless they agree to the byte (`--quick --check`: narrow models, seconds; the tests check it).
The kernels are the CPU ones; CUDA's flash / memory-efficient attention likewise keeps only the output and the
log-sum-exp, so the figures should carry over up to allocator rounding.

Measured results: benchmarks/README.md.
"""

import argparse
import contextlib
import gc
import sys
import time
from dataclasses import dataclass

import torch
from common import Timing, as_tensor, markdown_table, synthetic_images, time_repeats
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

from vq_reward.images import resize_for_model
from vq_reward.rewards.pixels import QwenImageLayout, pixel_inputs


# The pixel budget the VisualQuality-R1 / Qwen2.5-VL checkpoints ship with.
CHECKPOINT_MIN_PIXELS = 3136
CHECKPOINT_MAX_PIXELS = 12845056


# -- preprocessing and adapter tables ------------------------------------------------------------------------------


def bench_preprocessing(
    num_images: int = 32, repeats: int = 5, size: tuple[int, int] = (512, 384)
) -> dict[str, Timing]:
    """HF processor vs `vq_reward.rewards.pixels.pixel_inputs` on `num_images` synthetic images, on CPU."""
    pil = synthetic_images(num_images, *size)
    tensor = as_tensor(pil)
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
    return {name: time_repeats(run, repeats, items=num_images) for name, run in runs.items()}


def bench_adapters(
    model: str,
    device: str = "cpu",
    num_images: int = 32,
    repeats: int = 5,
    dtype: torch.dtype | None = None,
    size: tuple[int, int] = (512, 384),
) -> dict[str, Timing]:
    """A bare `score()` and each reward adapter on the same `num_images` synthetic images, one forward each."""
    from vq_reward.scorer import VisualQualityScorer

    scorer = VisualQualityScorer.from_pretrained(model, device=device, dtype=dtype, batch_size=num_images)
    pil = synthetic_images(num_images, *size)
    tensor = as_tensor(pil).to(scorer.device)
    reward_fn = scorer.as_reward()
    trl_reward = scorer.as_trl_reward(image_key="image")
    differentiable = scorer.as_differentiable_reward()
    completions = [[{"role": "assistant", "content": "..."}]] * num_images

    def differentiable_backward() -> None:
        leaf = tensor.clone().requires_grad_(True)
        differentiable(leaf).sum().backward()

    runs = {
        "score(PIL list)": lambda: scorer.score(pil),
        "score(tensor NCHW [0,1])": lambda: scorer.score(tensor),
        "as_reward()(PIL list)": lambda: reward_fn(pil, None, None),
        "as_reward()(tensor NCHW [0,1])": lambda: reward_fn(tensor, None, None),
        "as_trl_reward()(image column)": lambda: trl_reward([None] * num_images, completions, image=pil),
        "as_differentiable_reward()(tensor), forward": lambda: differentiable(tensor.clone().requires_grad_(True)),
        "as_differentiable_reward()(tensor), forward + backward": differentiable_backward,
    }
    return {name: time_repeats(run, repeats, items=num_images, device=scorer.device) for name, run in runs.items()}


def format_tables(preprocessing: dict[str, Timing], adapters: dict[str, Timing]) -> str:
    """Two markdown tables: preprocessing throughput, and each adapter's time relative to a bare score().

    The adapter table's last two columns compare medians with `score()` on PIL images (the pure scoring cost) and
    with `score()` on the same kind of input as the row (the adapter's own overhead: a tensor costs `score()` a
    float -> uint8 -> PIL conversion too).
    """
    reference = next(iter(preprocessing.values())).median
    table = markdown_table(
        ["preprocessing (CPU)", "images/s", "ms per batch", "vs HF processor"],
        [[name, t.rate_text(1), t.ms_text(1), f"{reference / t.median:.2f}x"] for name, t in preprocessing.items()],
    )
    pil, tensor = adapters["score(PIL list)"].median, adapters["score(tensor NCHW [0,1])"].median
    rows = []
    for name, timing in adapters.items():
        same = pil if "(PIL" in name or "image column" in name else tensor
        rows.append([name, timing.rate_text(1), timing.ms_text(1), f"{(timing.median / pil - 1) * 100:+.0f}%",
                     f"{(timing.median / same - 1) * 100:+.0f}%"])  # fmt: skip
    header = ["call", "images/s", "ms per call", "vs score(PIL)", "vs score(same input)"]
    return table + "\n\n" + markdown_table(header, rows)


# -- activation memory of the differentiable reward ----------------------------------------------------------------


@dataclass(frozen=True)
class TextWidths:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int
    vocab: int
    tied: bool
    mrope_section: tuple[int, int, int] = (16, 24, 24)  # head_dim 128


@dataclass(frozen=True)
class VisionWidths:
    hidden: int = 1280
    intermediate: int = 3420
    heads: int = 16
    blocks: int = 32
    global_blocks: tuple[int, ...] = (7, 15, 23, 31)
    window: int = 112


# The released Qwen2.5-VL checkpoints (VisualQuality-R1-7B is a Qwen2.5-VL-7B).
SIZES = {
    "3B": (TextWidths(2048, 11008, 16, 2, 36, 151936, tied=True), VisionWidths()),
    "7B": (TextWidths(3584, 18944, 28, 4, 28, 152064, tied=False), VisionWidths()),
}
# Narrow stand-ins with the same structure, for --quick: fast enough to compute the products for real.
QUICK_SIZE = (
    TextWidths(64, 128, 2, 1, 4, 1024, tied=False, mrope_section=(4, 6, 6)),
    VisionWidths(64, 128, 2, 4, (1, 3)),
)
QUICK_SIDE = 112
READOUT_NAMES = ("first-digit", "number")
# Depth configurations: (text layers, indexes of the global vision blocks among `vision blocks`).
_DEPTHS = {"base": (1, 1, (0,)), "text": (2, 1, (0,)), "window": (1, 2, (1,)), "global": (1, 2, (0, 1))}

_aten = torch.ops.aten
_PRODUCTS = {
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default, _aten.convolution.default,
    _aten.convolution_backward.default, _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
}  # fmt: skip


class ShapeOnlyProducts(TorchDispatchMode):
    """Matrix products, convolutions and attention kernels return zeros of the shape, strides and dtype they would
    have (from their meta kernels) instead of computing them; every other op runs for real.

    Autograd sits above this mode, so the graph and the tensors it saves are the ones of the real computation.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _PRODUCTS:
            return func(*args, **kwargs)
        meta = func(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
        return tree_map(lambda t: torch.zeros_like(t, device="cpu") if isinstance(t, torch.Tensor) else t, meta)


def _to_meta(value):
    return value.to("meta") if isinstance(value, torch.Tensor) else value


@dataclass(frozen=True)
class MemoryRow:
    """Saved-for-backward MiB of one (size, readout, checkpointing), per layer kind and extrapolated."""

    size: str
    readout: str
    checkpointing: bool
    text_layer: float
    window_block: float
    global_block: float
    rest: float
    total: float  # MiB at the real depths


def activation_memory(
    size: str = "7B",
    side: int = 504,
    readouts: tuple[str, ...] = READOUT_NAMES,
    real_products: bool = False,
    check: bool = False,
) -> list[MemoryRow]:
    """Saved-for-backward memory of the differentiable reward at `size`'s widths, one row per readout x checkpointing.

    `check=True` counts each case both with computed and with shape-only products and raises `RuntimeError` when
    they differ (fast for the narrow "quick" size; at the released widths as slow as `real_products`).
    """
    from vq_reward.hub import tiny_checkpoint
    from vq_reward.loading import load_processor
    from vq_reward.scorer import VisualQualityScorer

    text, vision = QUICK_SIZE if size == "quick" else SIZES[size]
    processor = load_processor(
        str(tiny_checkpoint()), min_pixels=CHECKPOINT_MIN_PIXELS, max_pixels=CHECKPOINT_MAX_PIXELS
    )
    saved: dict[tuple[str, str, bool], float] = {}
    for depth, (text_layers, vision_blocks, global_blocks) in _DEPTHS.items():
        model = _random_qwen(processor, text, vision, text_layers, vision_blocks, global_blocks, zeros=size != "quick")
        for readout in readouts:
            scorer = VisualQualityScorer(model, processor, readout=readout)
            for checkpointing in (False, True):
                reward = scorer.as_differentiable_reward(gradient_checkpointing=checkpointing)
                mib = _saved_bytes(reward, model, side, shape_only=not real_products) / 2**20
                if check:
                    computed = _saved_bytes(reward, model, side, shape_only=False) / 2**20
                    if computed != mib:
                        raise RuntimeError(f"shape-only products count {mib} MiB, computed ones {computed} MiB "
                                           f"({depth}, {readout}, checkpointing={checkpointing}).")  # fmt: skip
                saved[(depth, readout, checkpointing)] = mib
        del model, scorer, reward
        gc.collect()
    rows = []
    for readout in readouts:
        for checkpointing in (False, True):
            base, deeper, window, both_global = (saved[(d, readout, checkpointing)] for d in _DEPTHS)
            text_layer, window_block, global_block = deeper - base, window - base, both_global - base
            rest = base - text_layer - global_block
            globals_ = len(vision.global_blocks)
            total = (
                text.layers * text_layer + (vision.blocks - globals_) * window_block + globals_ * global_block + rest
            )
            rows.append(MemoryRow(size, readout, checkpointing, text_layer, window_block, global_block, rest, total))
    return rows


def format_memory(rows: list[MemoryRow], side: int = 504) -> str:
    """The memory table, then one line per size and checkpointing: the number readout's extra over first-digit."""
    header = ["size", "readout", "checkpointing", "MiB / text layer", "MiB / windowed vision block",
              "MiB / global vision block", "MiB rest", "GiB total"]  # fmt: skip
    cells = [
        [row.size, row.readout, "yes" if row.checkpointing else "no", f"{row.text_layer:.2f}",
         f"{row.window_block:.2f}", f"{row.global_block:.2f}", f"{row.rest:.1f}", f"{row.total / 1024:.3f}"]
        for row in rows
    ]  # fmt: skip
    table = markdown_table(header, cells, align="lllrrrrr")
    lines = [table, ""]
    by_key = {(row.size, row.readout, row.checkpointing): row for row in rows}
    for row in rows:
        number = by_key.get((row.size, "number", row.checkpointing))
        if row.readout != "first-digit" or number is None:
            continue
        extra = number.total - row.total
        lines.append(
            f"{row.size}, {'with' if row.checkpointing else 'without'} gradient checkpointing: the number readout "
            f"keeps {extra:+.1f} MiB over first-digit's {row.total:.0f} MiB = {extra / row.total * 100:+.1f}% "
            f"(target: at most +10%)"
        )
    lines.append(f"(one {side}x{side} image, bf16; distinct saved-for-backward storages, weights excluded; per layer: "
                 "differences between random 1- and 2-layer models, extrapolated to the real depths)")  # fmt: skip
    return "\n".join(lines)


def _random_qwen(
    processor,
    text: TextWidths,
    vision: VisionWidths,
    text_layers: int,
    vision_blocks: int,
    global_blocks: tuple[int, ...],
    zeros: bool = True,
) -> Qwen2_5_VLForConditionalGeneration:
    """A bf16 Qwen2.5-VL at the given widths and depths, frozen, on CPU.

    `zeros=True` builds it on the meta device and fills the weights with zeros (a random init of the 7B widths'
    embeddings alone takes minutes on CPU; the values do not change what autograd saves); otherwise a random init.
    """
    ids = processor.tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": text.vocab, "hidden_size": text.hidden, "intermediate_size": text.intermediate,
            "num_hidden_layers": text_layers, "num_attention_heads": text.heads, "num_key_value_heads": text.kv_heads,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(text.mrope_section)},
            "max_window_layers": text_layers, "tie_word_embeddings": text.tied, "pad_token_id": ids("<|endoftext|>"),
            "bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"),
        },
        vision_config={
            "depth": vision_blocks, "hidden_size": vision.hidden, "intermediate_size": vision.intermediate,
            "num_heads": vision.heads, "window_size": vision.window, "fullatt_block_indexes": list(global_blocks),
            "out_hidden_size": text.hidden,
        },
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=text.tied,
    )  # fmt: skip
    if not zeros:
        torch.manual_seed(0)
        return Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16).requires_grad_(False)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.to_empty(device="cpu")
    for parameter in model.parameters():
        parameter.data.zero_()
    for module in model.modules():  # non-persistent buffers: rebuild the rotary tables to_empty left unset
        if hasattr(module, "inv_freq"):
            fresh = type(module)(module.config)
            module.inv_freq, module.original_inv_freq = fresh.inv_freq, fresh.original_inv_freq
    if text.tied:
        model.tie_weights()
    return model.requires_grad_(False)


def _saved_bytes(reward, model: torch.nn.Module, side: int, shape_only: bool = True) -> int:
    """Bytes of the distinct non-weight storages autograd saves for the backward of one `side`x`side` image."""
    weights = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # a weight kept for the backward costs no extra memory
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    torch.manual_seed(0)
    pixels = torch.rand(1, 3, side, side, requires_grad=True)
    with ShapeOnlyProducts() if shape_only else contextlib.nullcontext():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            scores = reward(pixels)
        scores.sum().backward()  # the backward runs too (and recomputes, when checkpointing) under the same mode
    return sum(saved.values())


# -- command line --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help='"tiny", a local folder or a hub id (the tables)')
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--activation-memory", action="store_true", help="the activation-memory count (not the tables)"
    )
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--side", type=int, default=504, help="image side for the activation-memory count")
    parser.add_argument("--real-products", action="store_true", help="compute the matrix products (slow on CPU)")
    parser.add_argument("--check", action="store_true", help="count every case both ways, raise if they differ")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tables on 2 images, 1 repeat, then the count on narrow models (hidden 64) and a 112x112 image (tests)",
    )
    args = parser.parse_args(argv)
    result: dict = {}
    if args.quick:
        args.num_images, args.repeats = 2, 1
    if not args.activation_memory:
        size = (112, 84) if args.quick else (512, 384)
        print(f"{args.num_images} images of {size[0]}x{size[1]}, {args.repeats} repeats; adapters on {args.model} "
              f"({args.device}), torch threads {torch.get_num_threads()}", flush=True)  # fmt: skip
        result["preprocessing"] = bench_preprocessing(args.num_images, args.repeats, size)
        result["adapters"] = bench_adapters(args.model, args.device, args.num_images, args.repeats, size=size)
        print(format_tables(result["preprocessing"], result["adapters"]), flush=True)
        if not args.quick:
            return result
        print()
    sizes, side = (["quick"], QUICK_SIDE) if args.quick else (args.sizes, args.side)
    method = "computed" if args.real_products else "shape-only (zeros of the right shape, see the docstring)"
    if args.check:
        method = "counted both shape-only and computed, checked equal"
    widths = "narrow widths (hidden 64)" if args.quick else "the released widths"
    print(f"Activation memory: {widths}, one {side}x{side} image, products {method}", flush=True)
    rows = []
    for name in sizes:
        start = time.monotonic()
        rows += activation_memory(name, side, real_products=args.real_products, check=args.check)
        print(f"[{name}: {time.monotonic() - start:.0f} s]", flush=True)
    result["activation_memory"] = rows
    print(format_memory(rows, side))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
