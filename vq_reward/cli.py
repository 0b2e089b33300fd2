"""The `vq-reward` command: score images, build the tiny smoke checkpoint, benchmark.

vq-reward score PATHS_OR_DIRS --model tiny --output results.jsonl      # offline smoke model
vq-reward score PATHS_OR_DIRS --model TianheWu/VisualQuality-R1-7B --device cuda --output results.jsonl
vq-reward make-tiny PATH
vq-reward bench --model tiny
vq-reward bench-rewards --model tiny
"""

import argparse
import sys
from pathlib import Path

import torch

from vq_reward.testing import resolve_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vq-reward", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="score image files and folders into a resumable JSONL file")
    score.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    add_model_arguments(score)
    score.add_argument("--output", required=True, help="JSONL file; rerunning with the same file resumes")
    score.add_argument("--thinking", action="store_true", help="generate reasoning too (sampled, slower)")
    score.add_argument("--batch-size", type=int, default=8)
    score.add_argument("--max-new-tokens", type=int, default=None, help="thinking mode only (default 2048)")
    score.add_argument("--retry-errors", action="store_true", help="try again the files that failed last time")
    score.set_defaults(run=_score)

    tiny = commands.add_parser("make-tiny", help="write the tiny random Qwen2.5-VL smoke checkpoint")
    tiny.add_argument("path")
    tiny.set_defaults(run=_make_tiny)

    bench = commands.add_parser("bench", help="score() vs the reference generate+parse path: images/s and memory")
    add_model_arguments(bench)
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    bench.add_argument("--num-images", type=int, default=64)
    bench.add_argument("--answer-tokens", type=int, default=10, help="tokens the reference path generates")
    bench.set_defaults(run=_bench)

    rewards = commands.add_parser("bench-rewards", help="reward adapters: preprocessing vs HF, overhead vs score()")
    add_model_arguments(rewards)
    rewards.add_argument("--num-images", type=int, default=32)
    rewards.add_argument("--repeats", type=int, default=3, help="timed runs per row; the best one is reported")
    rewards.add_argument("--activation-memory", action="store_true", help="only: backward memory at 3B/7B widths")
    rewards.set_defaults(run=_bench_rewards)

    from vq_reward.train.cli import add_commands as add_training_commands  # distort, prepare-data, merge-data, eval

    add_training_commands(commands)

    args = parser.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # our own bar is the one that matters
    return args.run(args) or 0


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="hub id or folder; 'tiny' = offline random smoke model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--min-pixels", type=int, default=None)
    parser.add_argument("--max-pixels", type=int, default=None)


def load_scorer(args: argparse.Namespace, batch_size: int = 8):
    """The scorer the `--model/--device/--dtype/--min-pixels/--max-pixels` arguments ask for."""
    from vq_reward.scorer import VisualQualityScorer

    if args.model == "tiny":
        print("Using the tiny RANDOM smoke model: its scores mean nothing. Pass --model to score for real.")
    return VisualQualityScorer.from_pretrained(
        resolve_model(args.model),
        device=args.device,
        dtype=None if args.dtype == "auto" else getattr(torch, args.dtype),
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        batch_size=batch_size,
    )


def _score(args: argparse.Namespace) -> int:
    from vq_reward.score_files import already_done, find_images, score_files

    paths = find_images(args.paths)
    if not paths:
        print(f"No image files found in {args.paths}.", file=sys.stderr)
        return 2
    already_done(Path(args.output), args.model, args.retry_errors)  # refuse a mismatched file before loading
    scorer = load_scorer(args, args.batch_size)
    summary = score_files(
        scorer,
        paths,
        args.output,
        model_name=args.model,
        thinking=args.thinking,
        retry_errors=args.retry_errors,
        generate_kwargs={"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None,
    )
    print(f"{summary.scored} scored, {summary.errors} errors, {summary.skipped} skipped (already in {args.output})")
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from vq_reward.testing import build_tiny_checkpoint

    print(build_tiny_checkpoint(args.path))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from vq_reward.bench import format_table, run_bench

    cells = run_bench(
        resolve_model(args.model),
        batch_sizes=tuple(args.batch_sizes),
        num_images=args.num_images,
        device=args.device,
        dtype=args.dtype,
        answer_tokens=args.answer_tokens,
    )
    print(
        f"model={args.model} device={args.device} images={args.num_images} (512x384) "
        f"answer_tokens={args.answer_tokens}"
    )
    print(format_table(cells))
    return 0


def _bench_rewards(args: argparse.Namespace) -> int:
    from vq_reward.bench_rewards import activation_memory, bench_adapters, bench_preprocessing, format_tables

    if args.activation_memory:
        for size in ("3B", "7B"):
            figures = ", ".join(f"{key} {value:.2f}" for key, value in activation_memory(size).items())
            print(f"{size}, one 504x504 image: {figures}")
        return 0
    preprocessing = bench_preprocessing(args.num_images, args.repeats)
    adapters = bench_adapters(
        resolve_model(args.model),
        device=args.device,
        num_images=args.num_images,
        repeats=args.repeats,
        dtype=None if args.dtype == "auto" else getattr(torch, args.dtype),
    )
    print(
        f"model={args.model} device={args.device} images={args.num_images} (512x384) "
        f"torch_threads={torch.get_num_threads()} best of {args.repeats}"
    )
    print(format_tables(preprocessing, adapters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
