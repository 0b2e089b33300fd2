"""Every reward example runs for one or two steps on the tiny scorer, in-process through its `main([...])`."""

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_finite(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(value) for value in values)


def test_score_folder_ranks_the_sample_photos(tiny_path):
    ranked = load_example("score_folder").main([str(EXAMPLES / "images"), "--model", str(tiny_path), "--limit", "3"])
    assert len(ranked) == 3
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True) and all(1 <= score <= 5 for score in scores)


@pytest.mark.slow
def test_ddpo_policy_gradient_updates_the_unet(tiny_path):
    history = load_example("ddpo_policy_gradient").main(
        ["--model", str(tiny_path), "--steps", "2", "--batch-size", "2"]
    )
    assert len(history["reward"]) == 2 and all_finite(history["reward"] + history["loss"])
    assert len(history["final_reward"]) == 2 and all(1 <= value <= 5 for value in history["final_reward"])
    assert history["weight_change"][0] > 0  # the only loss is the policy gradient of the reward


def test_ddpo_log_probability_uses_the_scheduler_s_own_transition():
    # Our mean and standard deviation of a DDIM step, recombined with a noise sample, give the scheduler's step.
    example = load_example("ddpo_policy_gradient")
    unet = example.tiny_unet(56)
    scheduler = example.DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(4)
    sample, noise = torch.randn(2, 1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    timestep = int(scheduler.timesteps[1])
    with torch.no_grad():
        mean = example.step_mean(unet, scheduler, sample, timestep)
        std = example.transition_std(scheduler, timestep, eta=1.0)
        stepped = scheduler.step(unet(sample, timestep).sample, timestep, sample, eta=1.0, variance_noise=noise)
    assert std > 0
    assert torch.allclose(mean + std * noise, stepped.prev_sample, atol=1e-5)
    assert example.transition_std(scheduler, int(scheduler.timesteps[-1]), eta=1.0) == 0  # last step: deterministic


def test_draft_backpropagates_the_reward_into_the_unet(tiny_path):
    history = load_example("draft_differentiable").main(["--model", str(tiny_path), "--steps", "2"])
    assert len(history["reward"]) == 2 and all_finite(history["reward"])
    assert history["weight_change"][0] > 0  # the only loss is -reward: its gradient reached the UNet


def test_super_resolution_trains_with_the_differentiable_reward(tiny_path):
    history = load_example("super_resolution").main(["--model", str(tiny_path), "--steps", "2", "--batch-size", "2"])
    assert len(history["l1"]) == 2 and all_finite(history["l1"] + history["reward"])
    assert all(1 <= value <= 5 for value in history["reward"]) and history["weight_change"][0] > 0


def test_trl_grpo_trains_a_policy_on_the_quality_reward(tiny_path, tmp_path):
    pytest.importorskip("trl")
    result = load_example("trl_grpo").main(
        ["--model", str(tiny_path), "--steps", "2", "--output-dir", str(tmp_path / "grpo")]
    )
    assert len(result["rewards"]) == 2 and all(1 <= value <= 5 for value in result["rewards"])
    assert math.isfinite(result["train_loss"])
