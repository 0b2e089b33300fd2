"""Score every image in a folder and print them best first, with the model's confidence in its readout.

Offline smoke run, with the taught smoke model (a 1.2M-parameter demo taught on synthetic degradations; built on
first use, about 40 s on CPU, then cached; `--model tiny` is the random one, its scores mean nothing):

    python examples/score_folder.py examples/images

With the real model (download it once; a GPU makes it fast, bf16 is picked on CUDA):

    python examples/score_folder.py PHOTOS/ --model TianheWu/VisualQuality-R1-7B --device cuda

`--limit N` scores the first N images only. For large folders, resumable JSONL output and thinking mode, use the
`vq-reward score` command instead.
"""

import argparse
from pathlib import Path

import torch

from vq_reward import VisualQualityScorer
from vq_reward.batch.files import find_images
from vq_reward.hub import resolve_model


SMOKE_NOTES = {
    "tiny": "random weights, its scores mean nothing",
    "taught": "a demo taught on synthetic degradations, not a real quality model",
}


def main(argv: list[str] | None = None) -> list[tuple[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).parent / "images"))
    parser.add_argument("--model", default="taught",
                        help="hub id or folder; smoke models: 'taught' (a demo) or 'tiny' (random)")  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images")
    args = parser.parse_args(argv)

    paths = find_images([args.folder])[: args.limit]
    if not paths:
        raise SystemExit(f"No images found in {args.folder}.")
    if args.model in SMOKE_NOTES:
        print(f"Scoring with the {args.model!r} smoke model: {SMOKE_NOTES[args.model]}.")
    scorer = VisualQualityScorer.from_pretrained(resolve_model(args.model), device=args.device)
    details = scorer.score_details([str(path) for path in paths], batch_size=args.batch_size)

    # digit_mass: how much of the next-token probability sits on "1".."5"; near 1 for the real checkpoint.
    ranked = sorted(
        zip(paths, details.scores.tolist(), details.digit_mass.tolist(), strict=True), key=lambda row: -row[1]
    )
    print(f"{'score':>6}  {'mass':>5}  image")
    for path, score, mass in ranked:
        print(f"{score:6.3f}  {mass:5.3f}  {path}")
    return [(str(path), score) for path, score, _ in ranked]


if __name__ == "__main__":
    main()
