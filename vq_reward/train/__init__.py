"""RL2R GRPO retraining of the scorer (VisualQuality-R1, and Q-Insight's multi-task variant) on stock TRL.

Needs the `train` extra: `pip install 'vq-reward[train]'`. Importing this package is light; the modules that need
TRL (`dataset`, `trainer`, `grpo`; the others need torch at most) import it themselves and say which extra to
install when it is missing.

    vq-reward prepare-data --labels dmos.csv --format kadid10k --images images/ --dataset-name KADID-10K \
        --output-dir data/
    accelerate launch --config_file train/accelerate/deepspeed_zero3.yaml -m vq_reward.train.grpo \
        --config train/recipes/kadid_vqr1.yaml

Modules: `vqr1_rewards` (fidelity rank reward, answer format reward), `qinsight_rewards` (Q-Insight's score,
degradation, format and comparison rewards), `reward_registry` (reward names -> reward functions), `closed_set`
(rollouts drawn from the readouts' closed answer sets), `sampler` (dataset-homogeneous batches), `dataset` (JSONL rows
-> TRL dataset and prompts), `checkpoints` (strict weight loading, choosing the checkpoint to resume from), `trainer`
(the thin GRPOTrainer subclass), `vision_cache` (a frozen tower computes each distinct image once per step), `config`
(script arguments), `grpo` (the entry point). The data they read is prepared by `vq_reward.data` (label files, rows,
Q-Insight rows) and the `vq-reward` data subcommands.
"""


def require_trl() -> None:
    """Raise an ImportError that names the extra to install when TRL is missing."""
    import importlib.util

    missing = [name for name in ("trl", "accelerate", "datasets") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"training needs {', '.join(missing)}: pip install 'vq-reward[train]'")
