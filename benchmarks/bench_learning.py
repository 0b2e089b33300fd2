"""Learning benchmark: does RL2R GRPO teach the tiny random Qwen2.5-VL to rank image quality, on CPU, in N minutes?

From the tiny random checkpoint, trains with the CPU recipe (train/recipes/tiny_cpu.yaml: non-thinking, `<answer>`
prefix, one digit sampled from 1..5, fidelity reward, constant lr 3e-4; `--max-steps N` switches to a cosine decay
over N steps) on synthetic degradations (noise, JPEG, blur, darkening at 5 severities, plus the clean image) of
112x112 crops of the left half of six sample photos: 1512 training images. Held out (546 images): crops of the right
half of those photos and of two photos never trained on. Prints the held-out SRCC of `score()` against the quality
label before and after (overall, and per distortion kind ranked together with the clean crops), and saves the curve
(curve.png) and the figures (summary.json).

    OMP_NUM_THREADS=1 python benchmarks/bench_learning.py --minutes 20 --output runs/bench_learning
    OMP_NUM_THREADS=1 python benchmarks/bench_learning.py --max-steps 800 --output runs/bench_learning_cosine
    python benchmarks/bench_learning.py --quick --output /tmp/bench_learning   # 2 steps on a few crops (tests)

The images are written by `vq_reward.data.distorted_sets.make_distorted_set` from the crops (saved as clean PNGs
first), so they are exactly what `vq-reward distort` makes. Measured runs and why blur, noise and JPEG stay near 0
on the tiny model: benchmarks/README.md (curves and figures in results/learning/).
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import CROP, HELD_OUT_PHOTOS, REPO, distorted_crops, make_crops, sample_photos
from transformers import TrainerCallback

from vq_reward import VisualQualityScorer
from vq_reward.data.rows import write_jsonl
from vq_reward.distortions import DISTORTIONS
from vq_reward.eval.metrics import srcc
from vq_reward.hub import tiny_checkpoint
from vq_reward.train.grpo import main as train


def score_rows(crops, folder: Path, kinds: tuple[str, ...]) -> list[dict]:
    """Every crop clean and under every kind x severity 1..5, as "score" JSONL rows with the quality label as MOS."""
    rows = []
    for image in distorted_crops(crops, folder, kinds):
        rows.append({"id": len(rows), "image": str(folder / image.image), "dataset_name": "synthetic", "task": "score",
                     "mos": image.mos, "reference": image.reference,
                     "kind": "clean" if image.level == 0 else image.distortion_class})  # fmt: skip
    return rows


def held_out_srcc(scorer: VisualQualityScorer, rows: list[dict]) -> dict[str, float]:
    """SRCC of score() against the label: overall, and per kind over that kind's images plus the clean ones."""
    scores = scorer.score([row["image"] for row in rows], batch_size=32).numpy()
    labels = np.array([row["mos"] for row in rows])
    kinds = np.array([row["kind"] for row in rows])
    result = {"all": srcc(scores, labels)}
    for kind in sorted(set(kinds) - {"clean"}):
        chosen = (kinds == kind) | (kinds == "clean")
        result[kind] = srcc(scores[chosen], labels[chosen])
    return result


class CurveCallback(TrainerCallback):
    """Every `seconds` of training, score the held-out set with a copy of the current policy."""

    def __init__(self, processor, rows: list[dict], seconds: float) -> None:
        self.processor, self.rows, self.seconds = processor, rows, seconds
        self.points: list[dict] = []
        self.start = self.last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last = time.monotonic()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        now = time.monotonic()
        if now - self.last >= self.seconds or control.should_training_stop:
            self.last = now
            scorer = VisualQualityScorer(copy.deepcopy(model).requires_grad_(False), self.processor)  # a frozen copy
            point = {"step": state.global_step, "minutes": (now - self.start) / 60, **held_out_srcc(scorer, self.rows)}
            self.points.append(point)
            print(f"[curve] step {point['step']} {point['minutes']:.1f} min: held-out SRCC {point['all']:.3f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training wall-time budget")
    parser.add_argument("--output", default="runs/bench_learning")
    parser.add_argument("--kinds", nargs="+", default=list(DISTORTIONS))
    parser.add_argument("--train-crops", type=int, default=12, help="crops per training photo")
    parser.add_argument("--curve-every", type=float, default=60.0, help="seconds between held-out evaluations")
    parser.add_argument("--max-steps", type=int, default=0, help="0: constant lr until --minutes (the recipe); N: "
                        "cosine decay to 0 over N steps")  # fmt: skip
    parser.add_argument(
        "--held-out-crops",
        type=int,
        nargs=2,
        default=[4, 3],
        metavar=("UNSEEN", "RIGHT"),
        help="crops per held-out photo, and right-half crops per training photo",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 crop per photo, darken and blur, 2 steps (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_crops, args.held_out_crops, args.kinds = 1, [1, 1], ["darken", "blur"]
        args.max_steps, args.curve_every = 2, 0.0
    out = Path(args.output).resolve()  # rows hold absolute paths (relative ones resolve against the JSONL)
    wall_start = time.monotonic()

    # Data: left halves of six photos for training; right halves and two unseen photos held out.
    rng = np.random.default_rng(args.seed)
    train_crops, held_crops = [], []
    unseen, right = args.held_out_crops
    for stem, photo in sample_photos():
        if stem in HELD_OUT_PHOTOS:
            held_crops += [(f"{stem}{i}", c) for i, c in enumerate(make_crops(photo, "all", unseen, rng))]
        else:
            train_crops += [(f"{stem}{i}", c) for i, c in enumerate(make_crops(photo, "left", args.train_crops, rng))]
            held_crops += [(f"{stem}R{i}", c) for i, c in enumerate(make_crops(photo, "right", right, rng))]
    kinds = tuple(args.kinds)
    train_rows = score_rows(train_crops, out / "data" / "train", kinds)
    held_rows = score_rows(held_crops, out / "data" / "held_out", kinds)
    write_jsonl(train_rows, out / "data" / "train.jsonl")
    print(
        f"{len(train_rows)} training images, {len(held_rows)} held-out images ({', '.join(kinds)}; {CROP}x{CROP} "
        "crops)"
    )

    # Before: the random checkpoint.
    checkpoint = tiny_checkpoint()
    before = held_out_srcc(VisualQualityScorer.from_pretrained(checkpoint), held_rows)
    print("held-out SRCC before:", json.dumps({k: round(v, 3) for k, v in before.items()}))

    # Train for the time budget with the CPU recipe, scoring the held-out set along the way.
    scorer_processor = VisualQualityScorer.from_pretrained(checkpoint).processor
    curve = CurveCallback(scorer_processor, held_rows, args.curve_every)
    train_start = time.monotonic()
    trainer = train(
        ["--config", str(REPO / "train" / "recipes" / "tiny_cpu.yaml"), "--model_name_or_path", str(checkpoint),
         "--train_files", str(out / "data" / "train.jsonl"), "--output_dir", str(out / "model"),
         "--max_steps", str(args.max_steps or 10**6),
         "--lr_scheduler_type", "cosine" if args.max_steps else "constant",
         "--max_train_minutes", str(args.minutes),
         "--logging_steps", "10", "--seed", str(args.seed)],
        callbacks=[curve],
    )  # fmt: skip
    train_minutes = (time.monotonic() - train_start) / 60
    steps = trainer.state.global_step

    # After: the saved checkpoint, loaded as a user would.
    after = held_out_srcc(VisualQualityScorer.from_pretrained(out / "model"), held_rows)
    print("held-out SRCC after: ", json.dumps({k: round(v, 3) for k, v in after.items()}))
    summary = {
        "before": before, "after": after, "steps": steps, "train_minutes": train_minutes,
        "steps_per_second": steps / (train_minutes * 60), "wall_minutes": (time.monotonic() - wall_start) / 60,
        "train_images": len(train_rows), "held_out_images": len(held_rows), "curve": curve.points,
        "batch_srcc": [(h["step"], h["fidelity/batch_srcc"]) for h in trainer.state.log_history
                       if "fidelity/batch_srcc" in h],
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, out / "curve.png")
    print(f"{steps} steps in {train_minutes:.1f} min ({summary['steps_per_second']:.2f} steps/s); "
          f"wall {summary['wall_minutes']:.1f} min; curve in {out / 'curve.png'}")  # fmt: skip
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    points = summary["curve"]
    for key in ["all", *sorted(k for k in summary["before"] if k != "all")]:
        minutes = [0.0] + [p["minutes"] for p in points] + [summary["train_minutes"]]
        values = [summary["before"][key]] + [p[key] for p in points] + [summary["after"][key]]
        axis.plot(minutes, values, label=key, linewidth=2.5 if key == "all" else 1.2)
    axis.axhline(0, color="grey", linewidth=0.6)
    axis.set_xlabel("training minutes (CPU)")
    axis.set_ylabel("held-out SRCC of score()")
    axis.set_title(f"RL2R GRPO, tiny random Qwen2.5-VL: {summary['steps']} steps")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main(sys.argv[1:])
