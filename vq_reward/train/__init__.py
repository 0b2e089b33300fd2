"""RL2R GRPO retraining of the scorer (VisualQuality-R1, and Q-Insight's multi-task variant) on stock TRL.

Needs the `train` extra: `pip install 'vq-reward[train]'`. Importing this package is light; the modules that need
TRL (`rewards` only needs torch) import it themselves and say which extra to install when it is missing.

    vq-reward prepare-data --labels dmos.csv --format kadid10k --images images/ --dataset-name KADID-10K \
        --output-dir data/
    accelerate launch --config_file train/accelerate/deepspeed_zero3.yaml -m vq_reward.train.grpo \
        --config train/recipes/kadid_vqr1.yaml

Modules: `labels` (read MOS label files), `data` (normalise, split, JSONL, merge), `rewards` (fidelity rank reward,
answer format reward, the reward registry), `qinsight_rewards` (Q-Insight's score, degradation, format and
comparison rewards), `qinsight_data` (degradation and comparison rows), `closed_set` (rollouts drawn from the
readouts' closed answer sets), `sampler` (dataset-homogeneous batches), `dataset` (JSONL rows -> TRL dataset and
prompts), `trainer` (the thin GRPOTrainer subclass), `config` (script arguments), `grpo` (the entry point), `cli`
(the `vq-reward` subcommands).
"""


def require_trl() -> None:
    """Raise an ImportError that names the extra to install when TRL is missing."""
    import importlib.util

    missing = [name for name in ("trl", "accelerate", "datasets") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"training needs {', '.join(missing)}: pip install 'vq-reward[train]'")
