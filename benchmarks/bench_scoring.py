"""Benchmark `score()` against the reference "generate, then parse" path, on the same images, side by side.

The reference is the official README's batch code: the non-thinking prompt with "Picture 1: " labels, one
`generate(do_sample=True, top_k=50, top_p=1)` per batch, decode, regex-parse. A fine-tuned checkpoint answers
"<answer>3.52</answer>" and stops, about 10 tokens; a random smoke model never stops on its own, so the reference
always generates exactly `answer_tokens` tokens, the length of a real answer, on every model.

Each (path, batch size) cell runs in a fresh process, so peak-memory figures do not inherit an earlier cell's
allocations. Memory is the peak above the loaded model: CUDA allocator peak on GPU, sampled RSS on CPU.
"""

import multiprocessing
import os
import re
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vq_reward import prompts


@dataclass(frozen=True)
class BenchCell:
    path: str
    batch_size: int
    images_per_second: float
    peak_mib: float


def synthetic_images(count: int, width: int = 512, height: int = 384) -> list[Image.Image]:
    """Deterministic photo-like test images: smooth gradients plus seeded noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    images = []
    for i in range(count):
        base = np.stack([np.sin(3 * x + i), np.cos(4 * y - i), np.sin(2 * (x + y) + 0.5 * i)], axis=-1)
        pixels = 127.5 * (1 + base) + rng.normal(0, 8 + i % 16, base.shape)
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return images


def run_bench(
    model: str,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    num_images: int = 64,
    device: str = "cpu",
    dtype: str = "auto",
    answer_tokens: int = 10,
) -> list[BenchCell]:
    """Measure both paths at every batch size, each cell in its own process."""
    cells = []
    for batch_size in batch_sizes:
        for path in ("score", "generate"):
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
                args = (model, path, batch_size, num_images, device, dtype, answer_tokens)
                cells.append(child.submit(_measure, *args).result())
    return cells


def format_table(cells: list[BenchCell]) -> str:
    """A side-by-side table: images/s and peak memory of both paths, and the speed-up of score()."""
    rows = [
        "| batch | score() img/s | generate+parse img/s | speed-up | score() peak MiB | generate+parse peak MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(cell.path, cell.batch_size): cell for cell in cells}
    for batch_size in sorted({cell.batch_size for cell in cells}):
        fast, slow = by_key[("score", batch_size)], by_key[("generate", batch_size)]
        rows.append(
            f"| {batch_size} | {fast.images_per_second:.2f} | {slow.images_per_second:.2f} | "
            f"{fast.images_per_second / slow.images_per_second:.1f}x | {fast.peak_mib:.0f} | {slow.peak_mib:.0f} |"
        )
    return "\n".join(rows)


def _measure(
    model: str, path: str, batch_size: int, num_images: int, device: str, dtype: str, answer_tokens: int
) -> BenchCell:
    from vq_reward.scorer import VisualQualityScorer  # imported in the child, after spawn

    torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
    scorer = VisualQualityScorer.from_pretrained(model, device=device, dtype=torch_dtype)
    images = scorer.prepare(synthetic_images(num_images))

    def run_once(batch: list[Image.Image]) -> None:
        if path == "score":
            scorer.score(batch, batch_size=batch_size)
        else:
            _reference_generate_and_parse(scorer, batch, batch_size, answer_tokens)

    with _PeakMemory(scorer.device) as memory:
        run_once(images[:batch_size])  # warm-up (kernels, lazy initialisation); not timed, but its memory counts
        start = time.perf_counter()
        run_once(images)
        _synchronize(scorer.device)
        elapsed = time.perf_counter() - start
    return BenchCell(path, batch_size, num_images / elapsed, memory.peak_mib)


def _reference_generate_and_parse(scorer, images: list[Image.Image], batch_size: int, answer_tokens: int) -> list:
    """The official README's batch inference, kept literal: no size sorting, no shared parser."""
    message = prompts.image_message(prompts.quality_prompt(thinking=False))
    text = scorer.processor.apply_chat_template(
        message, tokenize=False, add_generation_prompt=True, add_vision_id=True
    )
    scores = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        inputs = scorer.processor(text=[text] * len(batch), images=batch, padding=True, return_tensors="pt")
        inputs = inputs.to(scorer.device)
        with torch.inference_mode():
            generated = scorer.model.generate(
                **inputs, use_cache=True, do_sample=True, top_k=50, top_p=1.0,
                min_new_tokens=answer_tokens, max_new_tokens=answer_tokens,
            )  # fmt: skip
        outputs = scorer.processor.batch_decode(
            generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        for output in outputs:
            answers = re.findall(r"<answer>(.*?)</answer>", output, re.DOTALL)
            number = re.search(r"\d+(\.\d+)?", answers[-1] if answers else output)
            scores.append(float(number.group()) if number else None)
    return scores


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PeakMemory:
    """Peak memory above the level at entry: the CUDA allocator's peak on GPU, sampled resident memory on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = float("nan")

    def __enter__(self) -> "_PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._peak = _resident_bytes()
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _resident_bytes())

    def __exit__(self, *exc_info: object) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._sampler.join()
            peak = max(self._peak, _resident_bytes())
        self.peak_mib = (peak - self._base) / 2**20


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
