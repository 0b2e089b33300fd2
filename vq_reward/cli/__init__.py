"""The `vq-reward` command. Each subcommand module registers its parsers and imports the library only when it runs,
so `vq-reward --help` starts without torch or transformers.

    vq-reward score examples/images --model taught --output results.jsonl   # offline smoke model
    vq-reward score DIR --model TianheWu/VisualQuality-R1-7B --device cuda --output results.jsonl
    vq-reward make-smoke PATH --model tiny|taught|base|skeleton               # a smoke checkpoint in a folder
    vq-reward distort | prepare-data | prepare-degradation | prepare-comparison | merge-data   # training data
    vq-reward eval --labels data/KADID-10K_test.jsonl --model runs/kadid --output eval/kadid.json
    vq-reward serve TianheWu/VisualQuality-R1-7B --host 0.0.0.0   # vLLM server for score --server / from_server

A failure prints one line (what is wrong and how to fix it) and exits non-zero; `--debug` shows the traceback.
"""

import argparse
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from vq_reward.cli import data, evaluate, score, serve


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: what is wrong, and where the options are listed."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every subcommand with its options and their help."""
    parser = Parser(
        prog="vq-reward",
        description="VisualQuality-R1 image-quality scoring, training data and evaluation.",
        epilog="Run `vq-reward COMMAND --help` for a command's options. Retraining: python -m vq_reward.train.grpo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (score, data, evaluate, serve):
        module.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 1 failure, 2 usage error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # DeepSpeed, when installed, warns "Setting accelerator to CPU" on import; that says nothing to a scoring user.
    logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("vq-reward: interrupted; rerun the same command to resume where it stopped.", file=sys.stderr)
        return 130
    except Exception as error:  # every failure becomes one line; --debug keeps the traceback
        if args.debug:
            raise
        message = str(error) or type(error).__name__
        print(f"vq-reward {args.command}: error: {message}", file=sys.stderr)
        return 1


def _version() -> str:
    try:
        return version("vq-reward")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
