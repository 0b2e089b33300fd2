"""Every recipe parses, and the official ones hold the official runs' effective values."""

from pathlib import Path

import pytest


pytest.importorskip("trl")
from vq_reward.train.grpo import parse_args  # noqa: E402


RECIPES = sorted(Path("train/recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses(recipe):
    script, training, model = parse_args(["--config", str(recipe), "--report_to", "none", "--use_cpu", "true"])
    assert script.train_files and model.model_name_or_path
    if "fidelity" in script.reward_funcs:  # rank rewards need an image's rollouts on one device
        assert training.per_device_train_batch_size % training.num_generations == 0
    assert training.generation_batch_size % training.num_generations == 0


def test_kadid_recipe_is_the_official_run():
    script, t, model = parse_args(
        ["--config", "train/recipes/kadid_vqr1.yaml", "--report_to", "none", "--use_cpu", "true"]
    )
    assert model.model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct" and model.dtype == "bfloat16"
    assert (t.num_generations, t.per_device_train_batch_size, t.gradient_accumulation_steps) == (6, 48, 1)
    assert (t.learning_rate, t.beta, t.loss_type, t.scale_rewards, t.num_iterations) == (
        1e-6,
        0.04,
        "grpo",
        "group",
        1,
    )
    assert (t.temperature, t.top_k, t.top_p, t.max_completion_length, t.num_train_epochs) == (1.0, 50, 1.0, 256, 10)
    assert t.bf16 and t.gradient_checkpointing and t.lr_scheduler_type == "linear" and t.warmup_steps == 0
    assert script.thinking and not script.freeze_vision and not model.use_peft  # full fine-tuning, vision included
    assert script.reward_funcs == ["fidelity", "format"] and script.fidelity_scope == "local"
    assert script.parse_failure == "random" and script.parse_fallback_to_text and script.fidelity_eps == 1e-6


@pytest.mark.parametrize("name", ["kadid_vqr1", "mix4_vqr1", "qinsight_score_degradation", "qinsight_comparison"])
def test_official_recipes_use_the_official_kl(name):
    # TRL 1.16 defaults to a bias-corrected KL (gradient -beta*d per token); the official trainers use the plain k3
    # estimator (gradient beta*(1 - e^d)).
    _, training, _ = parse_args(["--config", f"train/recipes/{name}.yaml", "--report_to", "none", "--use_cpu", "true"])
    assert training.use_bias_correction_kl is False
