"""Q-Insight learning benchmark: does GRPO with the degradation reward teach a smoke Qwen2.5-VL to name the
distortion and its severity, on CPU, in N steps?

The start (`--model`): "base" (default; the taught architecture's hand-set perception and routing, taught only the
VisualQuality-R1 answer format, nothing about distortions; its vision tower is frozen, as it is set by hand) or
"tiny" (random weights, trained whole: the contrast).

Data: synthetic degradations (noise, compression i.e. JPEG, blur, darken at the five severities "slight" ..
"catastrophic", plus the clean crop as "null"/"null") of 112x112 crops of the left half of six sample photos
(examples/images): 72 crops x 21 versions = 1512 training rows of the "degradation" task. Held out: crops of the
right half of those photos and of two photos never trained on (12 crops x 21 = 252 images).

Training: the Q-Insight CPU recipe (train/recipes/qinsight_tiny_cpu.yaml) with the degradation reward alone
(0.25 for the right class, plus 0.75 for the right severity given the right class), 4 rows x G=8 per step,
lr 3e-4 constant, beta 0.05, no std scaling.

The fast path and why its gradient is honest: the random model cannot write Q-Insight's JSON by free sampling
(its answers would never parse, every reward would be 0 and no group would have any spread). So the generation
prompt ends with Q-Insight's forced answer prefix ("<think>\\n\\n</think>\\n<answer>\\n", the one the scorer's
readout forces), and each rollout is drawn from the closed set of the 21 answers `scorer.degradation` scores, with
probability P(c) = p(c) / sum_c' p(c') -- exactly the readout's distribution (`closed_set_sampling`; the trainer
scores the 21 answers in one forward per row and samples G of them). TRL's loss then gives
sum_j A_j grad log p(c_j), which equals sum_j A_j grad log P(c_j) because the advantages of a row's G rollouts sum
to zero and grad log sum_c' p(c') is common to them; with loss_type dr_grpo every rollout is weighted by its
advantage alone. So this is an exact policy-gradient step on the expected reward of the very distribution the
held-out readout takes its argmax from. What is not exact: the KL term is TRL's per-token k3 estimate on the
sampled answers (a regulariser), and the readout reports an argmax, not the expectation GRPO optimises.
A trie-constrained sampler (mask the tokens that leave the set at each step) was rejected: it samples a locally
renormalised distribution, not P, and its per-prefix normalisers do not cancel from the gradient.

`--tasks degradation score` trains Q-Insight's multi-task mix instead: every training image also as a "score" row
(the quality label as MOS), rewarded by score_threshold (a rating within 0.35 of the label), the tasks mixed at
random in each step as Q-Insight's sampler does.

Prints the held-out class accuracy, severity accuracy (the readout's severity of its chosen class against the
label; "null" for clean images) and both-right accuracy before and after, and the SRCC of the Q-Insight score
readout against the quality label, with the wall time, and saves the curve (curve.png) and the figures
(summary.json) in --output.

    OMP_NUM_THREADS=1 python benchmarks/bench_qinsight.py --steps 600 --seed 0 --output runs/bench_qinsight
    OMP_NUM_THREADS=1 python benchmarks/bench_qinsight.py --tasks degradation score --output runs/qinsight_multi
    python benchmarks/bench_qinsight.py --quick --output /tmp/bench_qinsight   # 2 steps on a few crops (tests)

The images are written by `vq_reward.data.distorted_sets.make_distorted_set` from the crops (saved as clean PNGs
first). Measured runs: benchmarks/README.md (curves and figures in results/qinsight/).
"""

import argparse
import copy
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from common import CROP, HELD_OUT_PHOTOS, REPO, distorted_crops, make_crops, sample_photos
from transformers import TrainerCallback

from vq_reward import VisualQualityScorer
from vq_reward.data.rows import write_jsonl
from vq_reward.distortions import CLEAN_CLASS, DISTORTIONS
from vq_reward.eval.metrics import srcc
from vq_reward.hub import resolve_model
from vq_reward.train.grpo import main as train


def task_rows(crops, folder: Path, tasks: tuple[str, ...] = ("degradation",)) -> list[dict]:
    """Every crop clean and under every distortion x severity 1..5, as JSONL rows of each task: "degradation"
    (class and severity) and "score" (the quality label as MOS), image by image."""
    rows = []
    for image in distorted_crops(crops, folder):
        shared = {"image": str(folder / image.image), "dataset_name": "synthetic", "reference": image.reference}
        if "degradation" in tasks:
            rows.append({"id": len(rows), **shared, "task": "degradation",
                         "distortion_class": image.distortion_class, "severity": image.severity})  # fmt: skip
        if "score" in tasks:
            rows.append({"id": len(rows), **shared, "task": "score", "mos": image.mos})
    return rows


def held_out_score_srcc(loaded: VisualQualityScorer, rows: list[dict]) -> float:
    """SRCC of the Q-Insight score readout (the rating after '{"rating": ') against the held-out quality labels."""
    scorer = VisualQualityScorer(loaded.model, loaded.processor, prompt_style="q-insight")  # the same weights
    scores = scorer.score([row["image"] for row in rows], batch_size=32).numpy()
    return float(srcc(scores, np.array([row["mos"] for row in rows])))


def held_out_accuracy(scorer: VisualQualityScorer, rows: list[dict]) -> dict[str, float]:
    """Class, severity and both-right accuracy of the closed-set readout, its mean Q-Insight degradation reward, the
    mean probability of the true class, and the class the readout names most often (a collapse shows here)."""
    results = scorer.degradation([row["image"] for row in rows])
    right_class = np.array(
        [r.distortion_class == row["distortion_class"] for r, row in zip(results, rows, strict=True)]
    )
    right_severity = np.array([r.severity == row["severity"] for r, row in zip(results, rows, strict=True)])
    named = Counter(r.distortion_class for r in results)
    return {
        "class": float(right_class.mean()),
        "severity": float(right_severity.mean()),
        "both": float((right_class & right_severity).mean()),
        "reward": float((0.25 * right_class + 0.75 * (right_class & right_severity)).mean()),
        "p_true_class": float(
            np.mean([r.class_probs[row["distortion_class"]] for r, row in zip(results, rows, strict=True)])
        ),  # fmt: skip
        "most_named_class": named.most_common(1)[0][0],
        "most_named_share": named.most_common(1)[0][1] / len(results),
        **{
            f"class_{kind}": float(right_class[[row["distortion_class"] == kind for row in rows]].mean())
            for kind in (*DISTORTIONS, CLEAN_CLASS)
        },  # fmt: skip
    }


def chance_levels(rows: list[dict]) -> dict[str, float]:
    """Accuracy of always naming the most frequent class / severity of the held-out set."""
    classes = Counter(row["distortion_class"] for row in rows)
    severities = Counter(row["severity"] for row in rows)
    return {"class": classes.most_common(1)[0][1] / len(rows), "severity": severities.most_common(1)[0][1] / len(rows)}


class CurveCallback(TrainerCallback):
    """Every `steps` training steps, read the held-out set with a frozen copy of the current policy."""

    def __init__(self, processor, rows: list[dict], steps: int) -> None:
        self.processor, self.rows, self.steps = processor, rows, steps
        self.points: list[dict] = []
        self.start = 0.0
        self.eval_seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.steps or state.global_step == state.max_steps:  # the last is read as "after"
            return
        began = time.monotonic()
        scorer = VisualQualityScorer(copy.deepcopy(model).requires_grad_(False), self.processor)  # a frozen copy
        point = {"step": state.global_step, "train_minutes": (began - self.start - self.eval_seconds) / 60,
                 **held_out_accuracy(scorer, self.rows)}  # fmt: skip
        self.eval_seconds += time.monotonic() - began
        self.points.append(point)
        named = f"{point['most_named_class']} {point['most_named_share']:.2f}"
        print(f"[curve] step {point['step']}: class {point['class']:.3f} severity {point['severity']:.3f} both "
              f"{point['both']:.3f} (most named: {named})")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("base", "tiny"), default="base", help="start: base (default) or tiny")
    parser.add_argument("--steps", type=int, default=600, help="GRPO steps (4 rows x G=8 each)")
    parser.add_argument("--minutes", type=float, default=None, help="also stop after this many minutes of training")
    parser.add_argument("--output", default="runs/bench_qinsight")
    parser.add_argument("--train-crops", type=int, default=12, help="crops per training photo")
    parser.add_argument("--curve-every", type=int, default=100, help="steps between held-out evaluations")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--temperature", type=float, default=1.0, help="rollout temperature; above 1 explores a "
                        "start sure of one answer (the base model names 'blur' for 91%% of the images)")  # fmt: skip
    parser.add_argument(
        "--held-out-crops",
        type=int,
        nargs=2,
        default=[3, 1],
        metavar=("UNSEEN", "RIGHT"),
        help="crops per held-out photo, and right-half crops per training photo",
    )
    parser.add_argument("--tasks", nargs="+", choices=("degradation", "score"), default=["degradation"],
                        help="training tasks: degradation (default), or 'degradation score' for Q-Insight's "
                        "multi-task mix (score rows of the same images, rewarded within 0.35 of the label)",
                        )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 crop per photo, 2 steps (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_crops, args.held_out_crops, args.steps, args.curve_every = 1, [1, 1], 2, 1
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
            left = make_crops(photo, "left", args.train_crops, rng)
            train_crops += [(f"{stem}{i}", c) for i, c in enumerate(left)]
            held_crops += [(f"{stem}R{i}", c) for i, c in enumerate(make_crops(photo, "right", right, rng))]
    tasks = tuple(args.tasks)
    train_rows = task_rows(train_crops, out / "data" / "train", tasks)
    held_all = task_rows(held_crops, out / "data" / "held_out", ("degradation", "score"))
    held_rows = [row for row in held_all if row["task"] == "degradation"]
    held_scores = [row for row in held_all if row["task"] == "score"]
    write_jsonl(train_rows, out / "data" / "train.jsonl")
    print(f"{len(train_rows)} training rows, {len(held_rows)} held-out images ({CROP}x{CROP} crops)")

    # Before: the start checkpoint, read as a user would.
    checkpoint = resolve_model(args.model)
    scorer = VisualQualityScorer.from_pretrained(checkpoint)
    before = {**held_out_accuracy(scorer, held_rows), "score_srcc": held_out_score_srcc(scorer, held_scores)}
    print("held-out before:", json.dumps({k: v if isinstance(v, str) else round(v, 3) for k, v in before.items()}))

    curve = CurveCallback(scorer.processor, held_rows, args.curve_every)
    train_start = time.monotonic()
    trainer = train(
        ["--config", str(REPO / "train" / "recipes" / "qinsight_tiny_cpu.yaml"), "--model_name_or_path",
         str(checkpoint), "--train_files", str(out / "data" / "train.jsonl"), "--output_dir", str(out / "model"),
         "--reward_funcs", *(["score_threshold"] if "score" in tasks else []), "degradation",
         "--max_steps", str(args.steps), "--learning_rate", str(args.learning_rate),
         "--beta", str(args.beta), "--temperature", str(args.temperature), "--logging_steps", "10",
         "--seed", str(args.seed),
         "--freeze_vision", str(args.model == "base").lower(),  # the base model's vision tower is set by hand
         *(["--max_train_minutes", str(args.minutes)] if args.minutes else [])],
        callbacks=[curve],
    )  # fmt: skip
    train_minutes = (time.monotonic() - train_start - curve.eval_seconds) / 60
    steps = trainer.state.global_step

    # After: the saved checkpoint, loaded as a user would.
    trained = VisualQualityScorer.from_pretrained(out / "model")
    after = {**held_out_accuracy(trained, held_rows), "score_srcc": held_out_score_srcc(trained, held_scores)}
    print("held-out after: ", json.dumps({k: v if isinstance(v, str) else round(v, 3) for k, v in after.items()}))
    summary = {
        "model": args.model, "tasks": list(tasks), "before": before, "after": after,
        "chance": chance_levels(held_rows), "steps": steps,
        "train_minutes": train_minutes, "seconds_per_step": train_minutes * 60 / max(steps, 1),
        "wall_minutes": (time.monotonic() - wall_start) / 60, "train_rows": len(train_rows),
        "held_out_images": len(held_rows), "learning_rate": args.learning_rate, "beta": args.beta,
        "temperature": args.temperature,
        "curve": curve.points,
        "train_reward": [(h["step"], h["rewards/degradation/mean"]) for h in trainer.state.log_history
                         if "rewards/degradation/mean" in h],
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, out / "curve.png")
    print(f"{steps} steps, {train_minutes:.1f} min training ({summary['seconds_per_step']:.2f} s/step); wall "
          f"{summary['wall_minutes']:.1f} min; chance: {summary['chance']}; curve in {out / 'curve.png'}")  # fmt: skip
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    points = [{"step": 0, **summary["before"]}, *summary["curve"]]
    if not summary["curve"] or summary["curve"][-1]["step"] != summary["steps"]:
        points.append({"step": summary["steps"], **summary["after"]})
    for key, style in (("class", "-"), ("severity", "-"), ("both", "-"), ("reward", "--")):
        axis.plot([p["step"] for p in points], [p[key] for p in points], style, label=f"held-out {key}")
    steps, rewards = zip(*summary["train_reward"], strict=True) if summary["train_reward"] else ((), ())
    axis.plot(steps, rewards, ":", color="grey", label="training reward (sampled)")
    axis.axhline(summary["chance"]["class"], color="grey", linewidth=0.6, label="class chance (most frequent)")
    axis.set_xlabel("GRPO step (4 rows x G=8)")
    axis.set_ylabel("accuracy / reward")
    axis.set_title(f"Q-Insight degradation GRPO from the {summary.get('model', 'tiny')} smoke model, CPU: "
                   f"{summary['steps']} steps")  # fmt: skip
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main(sys.argv[1:])
