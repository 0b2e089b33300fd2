"""Retrain a scorer with RL2R GRPO, end to end and offline: data, training, evaluation (83 s measured on 2 CPU cores).

Uses the tiny random checkpoint and synthetic degradations of the sample photos, so it runs anywhere; swap in your
label file, images and `Qwen/Qwen2.5-VL-7B-Instruct` (and a GPU recipe from train/recipes/) for a real run.

    python examples/retrain.py --output runs/retrain_example [--steps 30]

The same steps on the command line:

    vq-reward distort examples/images runs/ex/data/synthetic --crops 2
    vq-reward prepare-data --labels runs/ex/data/synthetic/labels.txt --images runs/ex/data/synthetic \\
        --reference-pattern '^(.+)__' --dataset-name synthetic --output-dir runs/ex/data
    python -m vq_reward.train.grpo --config train/recipes/tiny_cpu.yaml \\
        --train_files runs/ex/data/synthetic_train.jsonl --output_dir runs/ex/model --max_steps 30
    vq-reward eval --labels runs/ex/data/synthetic_test.jsonl --model runs/ex/model --output runs/ex/eval.json
"""

import argparse
from pathlib import Path

from vq_reward import VisualQualityScorer
from vq_reward.cli import main as vq_reward
from vq_reward.data.rows import read_jsonl
from vq_reward.eval.report import evaluate, format_report
from vq_reward.hub import tiny_checkpoint
from vq_reward.train.grpo import main as train


REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/retrain_example")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    out = Path(args.output)

    # 1. Data: graded degradations of the sample photos (quality label 5.0 clean .. 1.0 catastrophic), split 60/20/20
    #    by source crop so no content is both trained on and tested. The images go into data/synthetic/, the rows
    #    beside them into data/ (where `distort`'s printed next step puts them).
    images = out / "data" / "synthetic"
    vq_reward(["distort", str(REPO / "examples" / "images"), str(images), "--crops", "2"])
    vq_reward(["prepare-data", "--labels", str(images / "labels.txt"), "--images", str(images),
               "--reference-pattern", "^(.+)__", "--dataset-name", "synthetic",
               "--output-dir", str(out / "data")])  # fmt: skip

    # 2. Train: the CPU recipe (non-thinking, one digit answer after "<answer>", fidelity rank reward).
    train(["--config", str(REPO / "train" / "recipes" / "tiny_cpu.yaml"),
           "--model_name_or_path", str(tiny_checkpoint()),
           "--train_files", str(out / "data" / "synthetic_train.jsonl"), "--output_dir", str(out / "model"),
           "--max_steps", str(args.steps), "--logging_steps", "10"])  # fmt: skip

    # 3. Evaluate before and after on the held-out test split (the tiny model learns little in a minute; see
    #    benchmarks/bench_learning.py for a 20-minute run).
    test_rows = read_jsonl(out / "data" / "synthetic_test.jsonl")
    for name, model in (("before", tiny_checkpoint()), ("after", out / "model")):
        report = evaluate(VisualQualityScorer.from_pretrained(model), test_rows, batch_size=32)
        print(f"{name}:\n{format_report(report)}")


if __name__ == "__main__":
    main()
