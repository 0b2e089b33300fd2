"""Learning benchmark: does RL2R GRPO turn a model that only knows the answer format into a quality scorer, on CPU?

The paper's pipeline in miniature. The start is the "base" smoke model (`from_pretrained("base")`): the taught
architecture's hand-set perception and routing, taught only to write `<answer>X.YZ</answer>` with numbers that
follow the image but not its quality, so its answers parse but its held-out SRCC is near 0. It is trained the
official way (train/recipes/base_cpu.yaml): the model writes its whole answer, G=4 two-decimal answers are sampled
per image, the fidelity reward ranks the parsed numbers within each step's 24 images, plus the format reward; the
vision tower is frozen (it is set by hand). `--model tiny` runs the old contrast instead: the tiny random model with
train/recipes/tiny_cpu.yaml (one digit after a forced `<answer>`).

Training images: procedural images (`vq_reward.smoke.procedural`, each under a random distortion kind and severity)
and every kind x severity 1..5 (plus clean) of 112x112 crops of the left halves of six sample photos. Held out:
crops of the right halves of those photos ("right") and of two photos never trained on ("unseen"). Reported: the
held-out SRCC of `score()` against the quality label before, at the best curve point and after, overall and per
distortion kind (each kind ranked together with the clean crops), for each split; the rate at which the model's own
sampled answers (`generate`, the official decoding) parse, before and after; the same SRCCs of the supervised
`taught` model (same architecture, taught by cross-entropy on labelled procedural images: the moonshot); the
machine's load average at start and end (other work on a shared machine slows the steps). Writes DIR/model (the
trained checkpoint, loadable by `from_pretrained`), DIR/summary.json, DIR/curve.png (minutes) and
DIR/curve_steps.png.

    OMP_NUM_THREADS=1 python benchmarks/bench_learning.py --minutes 20 --output runs/bench_learning
    OMP_NUM_THREADS=1 python benchmarks/bench_learning.py --model tiny --constant-lr --minutes 20 --output runs/tiny
    python benchmarks/bench_learning.py --quick --output /tmp/bench_learning   # 2 steps on a few images (tests)

Options the script does not know go to the trainer (`--learning_rate 1e-3`, `--beta 0.02`).
After an interruption, the same command plus `--resume_from_checkpoint last` resumes the training. Measured runs:
benchmarks/README.md (curves and figures in results/learning/).
"""

import argparse
import copy
import json
import os
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
from vq_reward.hub import resolve_model
from vq_reward.smoke.procedural import training_images
from vq_reward.train.grpo import main as train


RECIPES = {"base": "base_cpu.yaml", "tiny": "tiny_cpu.yaml"}
SPLITS = ("right", "unseen")  # held-out crops of training photos; photos never trained on


def score_rows(crops, folder: Path, kinds: tuple[str, ...], split: str) -> list[dict]:
    """Every crop clean and under every kind x severity 1..5, as "score" JSONL rows with the quality label as MOS."""
    rows = []
    for image in distorted_crops(crops, folder, kinds):
        rows.append({"image": str(folder / image.image), "dataset_name": "synthetic", "task": "score",
                     "mos": image.mos, "reference": image.reference, "split": split,
                     "kind": "clean" if image.level == 0 else image.distortion_class})  # fmt: skip
    return rows


def procedural_rows(bases: int, folder: Path, seed: int) -> list[dict]:
    """`bases` procedural images in 2 random kind/severity variants each (as the taught model is taught), saved."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = training_images(bases, 2, seed)
    rows = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / f"procedural{index:05d}.png"
        image.save(path)
        rows.append({"image": str(path), "dataset_name": "synthetic", "task": "score", "mos": float(label),
                     "reference": f"procedural{index // 2}", "split": "train"})  # fmt: skip
    return rows


def held_out_srcc(scorer: VisualQualityScorer, rows: list[dict]) -> dict[str, float]:
    """SRCC of score() against the label: overall, per split, and per split and kind (that kind plus the clean)."""
    scores = scorer.score([row["image"] for row in rows], batch_size=32).numpy()
    labels = np.array([row["mos"] for row in rows])
    kinds = np.array([row["kind"] for row in rows])
    splits = np.array([row["split"] for row in rows])
    result = {"all": srcc(scores, labels)}
    for split in SPLITS:
        inside = splits == split
        result[split] = srcc(scores[inside], labels[inside])
        for kind in sorted(set(kinds) - {"clean"}):
            chosen = inside & ((kinds == kind) | (kinds == "clean"))
            result[f"{split}/{kind}"] = srcc(scores[chosen], labels[chosen])
    return result


def parse_rate(scorer: VisualQualityScorer, rows: list[dict], count: int) -> float:
    """Share of the model's own sampled answers (official decoding, no forced prefix) that parse to a number."""
    chosen = [rows[i]["image"] for i in np.random.default_rng(0).choice(len(rows), min(count, len(rows)), False)]
    ratings = scorer.generate(chosen, max_new_tokens=16, batch_size=32)
    return sum(rating.score is not None for rating in ratings) / len(ratings)


class CurveCallback(TrainerCallback):
    """Every `seconds` of training, score the held-out set with a frozen copy of the current policy; stop training
    after `minutes` of training time. Training time leaves out these evaluations, so the curve's minutes are what a
    run without them takes."""

    def __init__(self, processor, rows: list[dict], seconds: float, minutes: float) -> None:
        self.processor, self.rows, self.seconds, self.budget = processor, rows, seconds, minutes * 60
        self.points: list[dict] = []
        self.last = self.trained = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        now = time.monotonic()
        self.trained += now - self.last
        self.last = now
        if self.trained >= self.budget:
            control.should_training_stop = True
        if self.trained - (self.points[-1]["minutes"] * 60 if self.points else 0) >= self.seconds or (
            control.should_training_stop
        ):
            scorer = VisualQualityScorer(copy.deepcopy(model).requires_grad_(False), self.processor)
            point = {"step": state.global_step, "minutes": self.trained / 60, **held_out_srcc(scorer, self.rows)}
            self.points.append(point)
            self.last = time.monotonic()  # the evaluation's own time is not training time
            print(f"[curve] step {point['step']} {point['minutes']:.1f} min: held-out SRCC {point['all']:.3f} "
                  f"(right {point['right']:.3f}, unseen {point['unseen']:.3f})", flush=True)  # fmt: skip


def make_data(args: argparse.Namespace, out: Path) -> tuple[list[dict], list[dict]]:
    """Training rows (procedural images and left-half crops) and held-out rows (right halves, unseen photos)."""
    rng = np.random.default_rng(args.seed)
    train_crops, right_crops, unseen_crops = [], [], []
    unseen, right = args.held_out_crops
    for stem, photo in sample_photos():
        if stem in HELD_OUT_PHOTOS:
            unseen_crops += [(f"{stem}{i}", c) for i, c in enumerate(make_crops(photo, "all", unseen, rng))]
        else:
            train_crops += [(f"{stem}{i}", c) for i, c in enumerate(make_crops(photo, "left", args.train_crops, rng))]
            right_crops += [(f"{stem}R{i}", c) for i, c in enumerate(make_crops(photo, "right", right, rng))]
    kinds = tuple(args.kinds)
    train_rows = score_rows(train_crops, out / "data" / "train", kinds, "train")
    train_rows += procedural_rows(args.procedural, out / "data" / "procedural", args.seed + 100)
    held_rows = score_rows(right_crops, out / "data" / "right", kinds, "right")
    held_rows += score_rows(unseen_crops, out / "data" / "unseen", kinds, "unseen")
    return train_rows, held_rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(RECIPES), default="base", help="start: base (default) or tiny")
    parser.add_argument("--minutes", type=float, default=20.0, help="training time budget (held-out evaluations "
                        "along the way are not counted)")  # fmt: skip
    parser.add_argument("--output", default="runs/bench_learning")
    parser.add_argument("--kinds", nargs="+", default=list(DISTORTIONS))
    parser.add_argument("--train-crops", type=int, default=12, help="crops per training photo")
    parser.add_argument("--procedural", type=int, default=600, help="procedural training images (x2 variants)")
    parser.add_argument("--curve-every", type=float, default=90.0, help="seconds between held-out evaluations")
    parser.add_argument("--max-steps", type=int, default=0, help="N: the lr decays to 0 by a cosine over N steps; "
                        "0: the recipe's schedule (base: cosine over 800 steps, about 20 minutes here)")  # fmt: skip
    parser.add_argument("--constant-lr", action="store_true", help="the recipe's lr, constant until --minutes")
    parser.add_argument("--parse-images", type=int, default=128, help="held-out images whose answers are sampled")
    parser.add_argument("--held-out-crops", type=int, nargs=2, default=[4, 3], metavar=("UNSEEN", "RIGHT"),
                        help="crops per unseen photo, and right-half crops per training photo")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="draws the crops and procedural images (both splits)")
    parser.add_argument("--train-seed", type=int, default=None, help="the trainer's seed (batch order, sampled "
                        "answers; default: --seed): repeat a run on the same images")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a few images, darken and blur, 2 steps (tests)")
    args, trainer_args = parser.parse_known_args(argv)  # the rest go to the trainer, e.g. --learning_rate 1e-3
    if args.quick:
        args.train_crops, args.held_out_crops, args.kinds, args.procedural = 1, [1, 1], ["darken", "blur"], 8
        args.max_steps, args.curve_every, args.parse_images = 2, 0.0, 8
    out = Path(args.output).resolve()  # rows hold absolute paths (relative ones resolve against the JSONL)
    wall_start, load_start = time.monotonic(), os.getloadavg()

    train_rows, held_rows = make_data(args, out)
    write_jsonl(train_rows, out / "data" / "train.jsonl")
    counts = {split: sum(row["split"] == split for row in held_rows) for split in SPLITS}
    print(f"{len(train_rows)} training images ({args.procedural * 2} procedural), held out: {counts} "
          f"({', '.join(args.kinds)}; {CROP}x{CROP} crops)")  # fmt: skip

    checkpoint = resolve_model(args.model)
    start = VisualQualityScorer.from_pretrained(checkpoint)
    before = held_out_srcc(start, held_rows)
    parse_before = parse_rate(start, held_rows, args.parse_images)
    print("held-out SRCC before:", json.dumps({k: round(v, 3) for k, v in before.items()}))

    curve = CurveCallback(start.processor, held_rows, args.curve_every, args.minutes)
    schedule = (["--lr_scheduler_type", "constant", "--max_steps", str(10**6)] if args.constant_lr
                else ["--lr_scheduler_type", "cosine", "--max_steps", str(args.max_steps)] if args.max_steps
                else [])  # fmt: skip
    trainer = train(
        ["--config", str(REPO / "train" / "recipes" / RECIPES[args.model]), "--model_name_or_path", checkpoint,
         "--train_files", str(out / "data" / "train.jsonl"), "--output_dir", str(out / "model"),
         *schedule,
         "--seed", str(args.seed if args.train_seed is None else args.train_seed), *trainer_args],
        callbacks=[curve],
    )  # fmt: skip
    train_minutes = curve.trained / 60
    steps = trainer.state.global_step if trainer is not None else 0

    trained = VisualQualityScorer.from_pretrained(out / "model")  # the saved checkpoint, loaded as a user would
    after = held_out_srcc(trained, held_rows)
    parse_after = parse_rate(trained, held_rows, args.parse_images)
    best = max(curve.points, key=lambda point: point["all"], default={"step": steps, **after})
    print("held-out SRCC after: ", json.dumps({k: round(v, 3) for k, v in after.items()}))
    # The supervised model of the same architecture on the same images: what RL2R is measured against.
    supervised = held_out_srcc(VisualQualityScorer.from_pretrained("taught"), held_rows) if not args.quick else {}
    rounded = {k: round(v, 3) for k, v in supervised.items()}
    print("held-out SRCC of the supervised taught model:", json.dumps(rounded))
    summary = {
        "model": args.model, "bench_args": vars(args), "trainer_args": trainer_args,
        "before": before, "best": best, "after": after,
        "supervised_taught": supervised,
        "parse_rate": {"before": parse_before, "after": parse_after, "images": min(args.parse_images, len(held_rows))},
        "steps": steps, "train_minutes": train_minutes, "steps_per_second": steps / max(train_minutes * 60, 1e-9),
        "wall_minutes": (time.monotonic() - wall_start) / 60, "train_images": len(train_rows),
        "held_out_images": counts, "load_average": {"start": load_start, "end": os.getloadavg()},
        "curve": curve.points,
        "batch_srcc": [(h["step"], h["fidelity/batch_srcc"]) for h in (trainer.state.log_history if trainer else [])
                       if "fidelity/batch_srcc" in h],
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, out / "curve.png", "minutes")
    plot(summary, out / "curve_steps.png", "step")
    print(f"{steps} steps in {train_minutes:.1f} min ({summary['steps_per_second']:.2f} steps/s); parse rate "
          f"{parse_before:.2f} -> {parse_after:.2f}; best {best['all']:.3f} at step {best['step']}; "
          f"wall {summary['wall_minutes']:.1f} min; curve in {out / 'curve.png'}")  # fmt: skip
    return summary


def plot(summary: dict, path: Path, x: str) -> None:
    """Held-out SRCC against training minutes or steps: overall and per split (left), per kind and split (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (overall, per_kind) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    points = summary["curve"]
    end = summary["train_minutes"] if x == "minutes" else summary["steps"]
    xs = [0.0] + [p[x] for p in points] + [end]

    def values(key: str) -> list[float]:
        return [summary["before"][key]] + [p[key] for p in points] + [summary["after"][key]]

    for key, width in (("all", 2.6), ("right", 1.6), ("unseen", 1.6)):
        overall.plot(xs, values(key), label=key, linewidth=width)
    kinds = sorted({key.split("/")[1] for key in summary["before"] if "/" in key})
    for colour, kind in zip(plt.get_cmap("tab10").colors, kinds, strict=False):
        per_kind.plot(xs, values(f"unseen/{kind}"), color=colour, label=f"{kind} (unseen)")
        per_kind.plot(xs, values(f"right/{kind}"), "--", color=colour, linewidth=0.9, label=f"{kind} (right)")
    label = "training minutes (CPU)" if x == "minutes" else "GRPO steps"
    for axis, title in ((overall, "overall; right halves; unseen photos"), (per_kind, "per kind (with the clean)")):
        axis.axhline(0, color="grey", linewidth=0.6)
        axis.set_xlabel(label)
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=7)
    overall.set_ylabel("held-out SRCC of score()")
    figure.suptitle(f"RL2R GRPO from the {summary['model']} smoke model: {summary['steps']} steps in "
                    f"{summary['train_minutes']:.1f} min", fontsize=11)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main(sys.argv[1:])
