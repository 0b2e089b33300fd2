"""Benchmark `score()` (both readouts) against the reference "generate, then parse" path, on the same images.

    OMP_NUM_THREADS=1 python benchmarks/bench_scoring.py --model tiny
    OMP_NUM_THREADS=1 python benchmarks/bench_scoring.py --model skeleton --paths first-digit number
    python benchmarks/bench_scoring.py --model TianheWu/VisualQuality-R1-7B --device cuda

On "skeleton" (Qwen2.5-VL's real 152,064-row vocabulary at tiny widths, the real image budget) the peak memory
columns show what the vocabulary costs each readout: the number readout reads 49 positions per image, the
first-digit readout one.

Three paths, each at every batch size (`--batch-sizes`, default 1 8 32) on `--num-images` 512x384 synthetic
images:

- first-digit: `score(readout="first-digit")`, one forward, the expectation over the first digit 1..5;
- number: `score(readout="number")`, one forward that also reads the 48 answer branches (tree attention mask);
- generate+parse: the official README's batch code, kept literal: the non-thinking prompt with "Picture 1: " labels
  (`add_vision_id=True`), one `model.generate(do_sample=True, top_k=50, top_p=1)` per batch, decode, regex-parse
  (`<answer>(.*?)</answer>`, last block, then its first number). A fine-tuned checkpoint answers
  "<answer>3.52</answer>" and stops, about 10 tokens; a random smoke model never stops on its own, so the reference
  always generates exactly `--answer-tokens` tokens (default 10), the length of a real answer, on every model.

The images are resized to the model's input size once before timing (as qwen-vl-utils' `process_vision_info` does in
the official code), so every path is timed from model-sized PIL images: processor, forward(s), readout or decoding
and parsing. Each (path, batch size) cell runs in a fresh spawned process: it loads the model, runs one untimed
warm-up batch, then times `--repeats` passes over all the images; images/s is reported as the median with the range
over the repeats. Peak memory is the peak of tensor memory above the loaded model: on GPU the CUDA allocator's, over
warm-up and repeats; on CPU the profiler's allocation events over one more (untimed) batch, the same count (the
resident set would add what the C allocator keeps after a free, which depends on earlier work).

`--quick` (for the tests): 4 images of 112x84, batch sizes 1 and 2, one repeat, 2 answer tokens, cells in this
process. Measured results: benchmarks/README.md.
"""

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from common import PeakMemory, Timing, markdown_table, run_in_fresh_process, synthetic_images, time_repeats
from PIL import Image
from torch.profiler import ProfilerActivity, profile

from vq_reward import prompts


PATHS = ("first-digit", "number", "generate+parse")


@dataclass(frozen=True)
class Cell:
    path: str
    batch_size: int
    timing: Timing
    peak_mib: float


def measure_cell(
    model: str,
    path: str,
    batch_size: int,
    num_images: int = 64,
    size: tuple[int, int] = (512, 384),
    repeats: int = 5,
    device: str = "cpu",
    dtype: str = "auto",
    answer_tokens: int = 10,
    scorer=None,
) -> Cell:
    """One cell: load the model (unless a loaded `scorer` is given), warm up on one batch, time `repeats` passes
    over all the images."""
    torch.manual_seed(0)
    scorer = scorer or load_scorer(model, device, dtype)
    images = scorer.prepare(synthetic_images(num_images, *size))

    def run(batch: list[Image.Image]) -> None:
        if path == "generate+parse":
            reference_generate_and_parse(scorer, batch, batch_size, answer_tokens)
        else:
            scorer.score(batch, batch_size=batch_size, readout=path)

    with PeakMemory(scorer.device) as memory:
        timing = time_repeats(
            lambda: run(images),
            repeats,
            items=num_images,
            warmup=lambda: run(images[:batch_size]),
            device=scorer.device,
        )
    peak = memory.peak_mib if scorer.device.type == "cuda" else allocation_peak_mib(lambda: run(images[:batch_size]))
    return Cell(path, batch_size, timing, peak)


def allocation_peak_mib(run: Callable[[], object]) -> float:
    """The peak of live tensor memory above the level at entry while `run()` runs on CPU, in MiB: the profiler's
    allocation events added up in time order, as `torch.cuda.max_memory_allocated` counts on GPU. (The process's
    resident set would add whatever the C allocator keeps after a free, which depends on earlier work.)"""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        run()
    events = profiler.profiler.kineto_results.events()
    sizes = [event.nbytes() for event in sorted(events, key=lambda e: e.start_ns()) if event.name() == "[memory]"]
    live = peak = 0
    for size in sizes:
        live += size
        peak = max(peak, live)
    return peak / 2**20


def load_scorer(model: str, device: str = "cpu", dtype: str = "auto"):
    from vq_reward.scorer import VisualQualityScorer

    torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
    return VisualQualityScorer.from_pretrained(model, device=device, dtype=torch_dtype)


def reference_generate_and_parse(scorer, images: list[Image.Image], batch_size: int, answer_tokens: int) -> list:
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


def run_bench(
    model: str,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    fresh_process: bool = True,
    paths: tuple[str, ...] = PATHS,
    **cell_kwargs,
) -> list[Cell]:
    """Every (path, batch size) cell, each in its own spawned process unless `fresh_process=False` (then one loaded
    model serves every cell)."""
    cells = []
    scorer = (
        None
        if fresh_process
        else load_scorer(model, cell_kwargs.get("device", "cpu"), cell_kwargs.get("dtype", "auto"))
    )
    for batch_size in batch_sizes:
        for path in paths:
            if fresh_process:
                cell = run_in_fresh_process(measure_cell, model, path, batch_size, **cell_kwargs)
            else:
                cell = measure_cell(model, path, batch_size, **cell_kwargs, scorer=scorer)
            print(f"[cell] {path} batch {batch_size}: {cell.timing.rate_text(2)} img/s, peak {cell.peak_mib:.0f} MiB",
                  flush=True)  # fmt: skip
            cells.append(cell)
    return cells


def format_table(cells: list[Cell]) -> str:
    """images/s (median, range over repeats), the speed ratios, and peak MiB of each path, one row per batch size
    ("-" for a path that was not run)."""
    by_key = {(cell.path, cell.batch_size): cell for cell in cells}
    header = [
        "batch", "first-digit img/s", "number img/s", "generate+parse img/s", "number / first-digit",
        "first-digit / generate", "number / generate", "peak MiB first-digit", "peak MiB number",
        "peak MiB generate+parse",
    ]  # fmt: skip
    rows = []
    for batch_size in sorted({cell.batch_size for cell in cells}):
        first, number, generate = (by_key.get((path, batch_size)) for path in PATHS)
        rows.append([
            batch_size, _rate(first), _rate(number), _rate(generate), _ratio(number, first, ".2f"),
            _ratio(first, generate, ".1f"), _ratio(number, generate, ".1f"), _peak(first), _peak(number),
            _peak(generate),
        ])  # fmt: skip
    return markdown_table(header, rows)


def _rate(cell: Cell | None) -> str:
    return cell.timing.rate_text(2) if cell else "-"


def _ratio(cell: Cell | None, other: Cell | None, spec: str) -> str:
    return f"{cell.timing.rate / other.timing.rate:{spec}}x" if cell and other else "-"


def _peak(cell: Cell | None) -> str:
    return f"{cell.peak_mib:.0f}" if cell else "-"


NOTES = """\
images/s: median over the repeats, (slowest-fastest) in brackets; the ratios compare medians. The spread shows how
noisy the machine was during the run. Peak MiB: tensor memory above the loaded model (GPU: over the warm-up and the
repeats; CPU: over one more batch).
On the 0.7M-parameter tiny smoke model these figures describe this code, not the 7B model: the vision tower and the
processor dominate its forward and a decode step is nearly free, so the ratios against generate+parse say little
about a 7B on a GPU, where every one of the ~10 decode steps is a full memory-bound pass over the weights."""


def main(argv: list[str] | None = None) -> list[Cell]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help='"tiny", "taught", "skeleton", a local folder or a hub id')
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="which paths to run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 elsewhere), bfloat16, float32, ...")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 384], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--answer-tokens", type=int, default=10, help="tokens the reference path generates")
    parser.add_argument("--in-process", action="store_true", help="run the cells in this process (no spawn)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat, cells in this process (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.num_images, args.size, args.repeats = [1, 2], 4, [112, 84], 1
        args.answer_tokens, args.in_process = 2, True
    threads = f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    print(f"model {args.model} on {args.device} (dtype {args.dtype}), {args.num_images} images of "
          f"{args.size[0]}x{args.size[1]}, {args.repeats} repeats, {args.answer_tokens} generated tokens, {threads}",
          flush=True)  # fmt: skip
    cells = run_bench(
        args.model, tuple(args.batch_sizes), fresh_process=not args.in_process, num_images=args.num_images,
        size=tuple(args.size), repeats=args.repeats, device=args.device, dtype=args.dtype,
        answer_tokens=args.answer_tokens, paths=tuple(args.paths),
    )  # fmt: skip
    print()
    print(format_table(cells))
    print()
    print(NOTES)
    return cells


if __name__ == "__main__":
    main(sys.argv[1:])
