"""`vq-reward score` (files and folders into a resumable JSONL file) and `vq-reward make-tiny`."""

import argparse
import sys
from pathlib import Path

from vq_reward.cli.options import add_model_arguments, load_scorer, positive_int


def add_commands(commands: argparse._SubParsersAction) -> None:
    score = commands.add_parser(
        "score", help="score image files and folders into a resumable JSONL file",
        description="Score images into a JSONL file, one line per image; rerunning the same command resumes.",
    )  # fmt: skip
    score.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    add_model_arguments(score)
    score.add_argument("--output", required=True, help="JSONL results file; rerunning with the same file resumes")
    score.add_argument("--thinking", action="store_true", help="generate the model's reasoning too (sampled, slower)")
    score.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)")
    score.add_argument("--max-new-tokens", type=positive_int, default=None,
                       help="thinking mode: longest reasoning in tokens (default 2048)")  # fmt: skip
    score.add_argument("--retry-errors", action="store_true", help="try again the files that failed last time")
    score.set_defaults(run=run_score)

    tiny = commands.add_parser("make-tiny", help="write the tiny random Qwen2.5-VL smoke checkpoint to a folder")
    tiny.add_argument("path", help="folder to write the checkpoint into")
    tiny.set_defaults(run=run_make_tiny)


def run_score(args: argparse.Namespace) -> int:
    from vq_reward.data.results import already_done, find_images, score_files

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


def run_make_tiny(args: argparse.Namespace) -> int:
    from vq_reward.smoke import build_tiny_checkpoint

    print(build_tiny_checkpoint(args.path))
    return 0
