"""The GRPO entry point end to end on the tiny checkpoint (CPU, one process): weights move, checkpoints load in the
scorer with the original chat template, resume works, the vision tower can be frozen, bad layouts are refused."""

import hashlib
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from vq_reward import VisualQualityScorer
from vq_reward.cli import main as cli


pytest.importorskip("trl")
from vq_reward.train.checkpoints import checkpoint_to_resume, finished_run  # noqa: E402
from vq_reward.train.grpo import main as train  # noqa: E402


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    """Synthetic data: two 56x56 crops of each sample photo, clean + blur/darken at 2 severities, split by crop."""
    root = tmp_path_factory.mktemp("data")
    assert cli(["distort", "examples/images", str(root / "images"), "--crops", "2", "--crop-size", "56",
                "--kinds", "blur", "darken", "--levels", "2", "5"]) == 0  # fmt: skip
    assert cli(["prepare-data", "--labels", str(root / "images" / "labels.txt"), "--images", str(root / "images"),
                "--reference-pattern", "^(.+)__", "--dataset-name", "synthetic",
                "--output-dir", str(root)]) == 0  # fmt: skip
    return root / "synthetic_train.jsonl"


def _args(tiny_path, train_file, out, *extra: str) -> list[str]:
    """The CPU recipe, shrunk: 2 images x G=4 per step."""
    return ["--config", "train/recipes/tiny_cpu.yaml", "--model_name_or_path", str(tiny_path),
            "--train_files", str(train_file), "--output_dir", str(out), "--num_generations", "4",
            "--per_device_train_batch_size", "8", "--max_steps", "2", "--logging_steps", "1", *extra]  # fmt: skip


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def whole_run(tiny_path, train_file, tmp_path_factory):
    """Four steps of the CPU recipe with an evaluation and checkpoints at steps 2 and 4, shared by several tests."""
    out = tmp_path_factory.mktemp("whole")
    val_file = train_file.parent / "synthetic_val.jsonl"
    extra = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--eval_files", str(val_file),
             "--eval_strategy", "steps", "--eval_steps", "2", "--per_device_eval_batch_size", "8"]  # fmt: skip
    return train(_args(tiny_path, train_file, out, *extra)), out


def test_training_changes_the_weights_and_the_checkpoint_scores(tiny_path, whole_run):
    trainer, out = whole_run
    before = VisualQualityScorer.from_pretrained(tiny_path)
    initial = _weights(before.model)
    assert trainer.state.global_step == 4
    assert any("eval_rewards/fidelity/mean" in h for h in trainer.state.log_history)  # eval ran with the reward
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), initial[n])]
    assert len(moved) > len(initial) // 2, f"only {len(moved)} of {len(initial)} tensors changed"
    history = [h for h in trainer.state.log_history if "fidelity/rollouts_in_scope" in h]
    assert [h["fidelity/rollouts_in_scope"] for h in history] == [8.0] * 4
    assert all(h["fidelity/parse_failure_rate"] == 0.0 for h in history)  # digit-only answers always parse
    # The checkpoint keeps the original template (no "<answer>" in its generation prompt) and scores differently.
    after = VisualQualityScorer.from_pretrained(out)
    assert after.processor.chat_template == before.processor.chat_template
    images = ["examples/images/chelsea.jpg", "examples/images/brick.jpg"]
    assert not torch.allclose(after.score(images), before.score(images))


def test_official_thinking_recipe_runs_with_both_rewards(tiny_path, train_file, tmp_path):
    trainer = train(_args(tiny_path, train_file, tmp_path / "run", "--thinking", "true",
                          "--force_answer_prefix", "false",
                          "--digit_only", "false", "--reward_funcs", "fidelity", "format", "--parse_failure", "random",
                          "--parse_fallback_to_text", "true", "--max_completion_length", "6", "--beta", "0.04",
                          "--scale_rewards", "group", "--max_steps", "1"))  # fmt: skip
    logged = trainer.state.log_history[0]
    assert "rewards/format/mean" in logged and "rewards/fidelity/mean" in logged
    assert logged["rewards/fidelity/mean"] > 0  # random-integer stand-ins make every rollout rankable


class StopAfterTwoSteps(TrainerCallback):
    """What a kill after the step-2 checkpoint leaves: the checkpoint, and nothing after it."""

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step == 2
        return control


def _rewards(trainer) -> list[float]:
    return [h["rewards/fidelity/mean"] for h in trainer.state.log_history if "rewards/fidelity/mean" in h]


def test_a_resumed_run_equals_the_uninterrupted_one(tiny_path, train_file, whole_run, tmp_path, capsys):
    # What a kill during the step-4 save leaves: the step-2 checkpoint, and checkpoint-4 without its trainer state.
    # `last` resumes from checkpoint-2 (and says so); steps 3-4 must equal the uninterrupted run's.
    whole, out = whole_run
    shutil.copytree(out / "checkpoint-2", tmp_path / "cut" / "checkpoint-2")
    shutil.copytree(out / "checkpoint-4", tmp_path / "cut" / "checkpoint-4", ignore=shutil.ignore_patterns("trainer*"))
    extra = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--eval_files",
             str(train_file.parent / "synthetic_val.jsonl"), "--eval_strategy", "steps", "--eval_steps", "2",
             "--per_device_eval_batch_size", "8", "--resume_from_checkpoint", "last"]  # fmt: skip
    resumed = train(_args(tiny_path, train_file, tmp_path / "cut", *extra))
    said = f"resuming from {tmp_path / 'cut' / 'checkpoint-2'}, the newest complete checkpoint; skipped checkpoint-4"
    assert f"{said} (no trainer_state.json: its save was cut short)\n" in capsys.readouterr().out
    assert resumed.state.global_step == 4
    assert _rewards(resumed) == _rewards(whole) and len(_rewards(whole)) == 4  # steps 3 and 4 included
    assert _max_delta(resumed.model, whole.model) <= 1e-6


def _file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def test_a_finished_run_resumed_is_left_as_it_is(tiny_path, train_file, whole_run, tmp_path, capsys):
    # The 4-step run ended mid-epoch; 0.2 trained a fifth step, saved checkpoint-5 and overwrote the final model.
    run = tmp_path / "run"
    shutil.copytree(whole_run[1], run)
    before = _file_hashes(run)
    extra = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--resume_from_checkpoint", "last"]
    assert train(_args(tiny_path, train_file, run, *extra)) is None
    assert _file_hashes(run) == before
    out = capsys.readouterr().out
    assert f"the run has finished (checkpoint-4 is at step 4, and max_steps is 4): nothing to train, nothing " \
        f"written; {run} keeps its final model. Raise --max_steps" in out  # fmt: skip


def test_a_run_is_finished_by_its_steps_or_its_epochs(tmp_path):
    checkpoint = tmp_path / "checkpoint-10"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text('{"global_step": 10, "epoch": 2.0}')
    assert "is at step 10, and max_steps is 10" in finished_run(checkpoint, tmp_path, 10, 3.0)
    assert "its final weights are in" in finished_run(checkpoint, tmp_path, 10, 3.0)  # the final save is missing
    assert "is at epoch 2, and num_train_epochs is 2" in finished_run(checkpoint, tmp_path, -1, 2.0)
    assert finished_run(checkpoint, tmp_path, 12, 2.0) is None  # a raised max_steps trains on
    assert finished_run(checkpoint, tmp_path, -1, 3.0) is None


def _tear(folder: Path, kind: str) -> None:
    """What a save cut short (kill, full disk) leaves in `folder`, a copy of a complete checkpoint."""
    if kind == "no-trainer-state":
        (folder / "trainer_state.json").unlink()
    elif kind == "config-only":
        for path in folder.iterdir():
            if path.name != "config.json":
                path.unlink()
    else:  # half of a file: the weights, or the optimizer state (torch's zip format)
        path = folder / ("model.safetensors" if kind == "half-weights" else "optimizer.pt")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("kind", "why"),
    [("no-trainer-state", "no trainer_state.json: its save was cut short"),
     ("config-only", "no trainer_state.json: its save was cut short"),
     ("half-weights", "model.safetensors is cut short (not a whole safetensors file)"),
     ("half-optimizer", "optimizer.pt is cut short")],
    ids=["no-trainer-state", "config-only", "half-weights", "half-optimizer"],
)  # fmt: skip
def test_last_skips_a_torn_newest_checkpoint_and_says_so(whole_run, tmp_path, kind, why):
    run = tmp_path / "run"
    for step in (2, 4):
        shutil.copytree(whole_run[1] / f"checkpoint-{step}", run / f"checkpoint-{step}")
    _tear(run / "checkpoint-4", kind)
    said: list[str] = []
    assert checkpoint_to_resume(run, "last", said.append) == run / "checkpoint-2"
    assert said == [f"resuming from {run / 'checkpoint-2'}, the newest complete checkpoint; skipped checkpoint-4 "
                    f"({why})"]  # fmt: skip
    named = run / "checkpoint-4"  # named explicitly, a torn checkpoint is refused
    with pytest.raises(ValueError, match=re.escape(f"cannot resume from {named}: {why}. Pass an earlier checkpoint")):
        checkpoint_to_resume(run, str(named), said.append)
    _tear(run / "checkpoint-2", kind)
    with pytest.raises(ValueError, match=re.escape(f"no complete checkpoint to resume from in {run}: checkpoint-4 (")):
        checkpoint_to_resume(run, "last", said.append)


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    [
        ["--freeze_vision", "true"],
        ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"],
    ],
    ids=["frozen-vision", "lora"],
)
def test_a_killed_and_resumed_run_equals_the_uninterrupted_one(tiny_path, train_file, tmp_path, variant):
    def run(out, *extra, callbacks=None):
        args = _args(tiny_path, train_file, out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")
        return train(args + variant + list(extra), callbacks=callbacks)

    whole = run(tmp_path / "whole")
    run(tmp_path / "cut", callbacks=[StopAfterTwoSteps()])
    resumed = run(tmp_path / "cut", "--resume_from_checkpoint", str(tmp_path / "cut" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    assert _rewards(resumed) == _rewards(whole) and len(_rewards(whole)) == 4  # steps 3 and 4 included
    assert _max_delta(resumed.model, whole.model) <= 1e-6


def _max_delta(model, reference) -> float:
    """max |delta| over every tensor of two models of the same layout."""
    expected = dict(reference.named_parameters())
    return max((p.detach() - expected[n].detach()).abs().max().item() for n, p in model.named_parameters())


def test_a_checkpoint_that_does_not_cover_the_model_is_refused(tiny_path, train_file, whole_run, tmp_path):
    checkpoint = tmp_path / "run" / "checkpoint-2"
    shutil.copytree(whole_run[1] / "checkpoint-2", checkpoint)
    weights = load_file(checkpoint / "model.safetensors")
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, checkpoint / "model.safetensors")
    with pytest.raises(RuntimeError, match=r"does not match the model: 1 missing tensors"):
        train(_args(tiny_path, train_file, tmp_path / "run", "--max_steps", "3",
                    "--resume_from_checkpoint", str(checkpoint)))  # fmt: skip
    with pytest.raises(RuntimeError, match=r"did not load completely \(missing_keys: 1"):
        VisualQualityScorer.from_pretrained(checkpoint)


def test_a_training_checkpoint_loads_in_the_scorer_with_every_weight(whole_run):
    trainer, out = whole_run
    loaded = VisualQualityScorer.from_pretrained(out).model
    assert dict(loaded.named_parameters()).keys() == dict(trainer.model.named_parameters()).keys()
    assert _max_delta(loaded, trainer.model) == 0


def test_frozen_vision_tower_does_not_move(tiny_path, train_file, tmp_path):
    initial = _weights(VisualQualityScorer.from_pretrained(tiny_path).model)
    trainer = train(_args(tiny_path, train_file, tmp_path / "run", "--freeze_vision", "true"))
    for name, p in trainer.model.named_parameters():
        if ".visual." in f".{name}":
            assert torch.equal(p.detach(), initial[name]) and not p.requires_grad, name
    assert not torch.equal(trainer.model.lm_head.weight.detach(), initial["lm_head.weight"])


def test_the_frozen_vision_cache_trains_as_the_tower_does(tiny_path, train_file, tmp_path):
    runs = {
        cached: train(_args(tiny_path, train_file, tmp_path / str(cached), "--freeze_vision", "true",
                            "--cache_frozen_vision", str(cached).lower()))  # fmt: skip
        for cached in (True, False)
    }
    assert _rewards(runs[True]) == _rewards(runs[False])
    assert _max_delta(runs[True].model, runs[False].model) < 1e-5  # float error (an Adam step is 3e-4)
    # 2 steps of 2 images x G=4: each image's tower runs once in the policy (generation and training forward)
    # and once in the reference model, instead of 8 times in each of the three.
    for model in (runs[True].model, runs[True].ref_model):
        cache = model.model.vision_feature_cache
        assert (cache.computed, cache.computed + cache.reused) == (4, 16 if model is runs[True].ref_model else 32)
    assert not hasattr(runs[False].model.model, "vision_feature_cache")


def test_lora_trains_only_adapters(tiny_path, train_file, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = train(_args(tiny_path, train_file, tmp_path / "run", "--use_peft", "true", "--lora_r", "4",
                              "--lora_target_modules", "q_proj", "v_proj", "--max_steps", "1"))  # fmt: skip
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # TRL and PEFT read transformers' deprecated is_gradient_checkpointing: once per step, filtered by the trainer.
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_one_image_per_device_is_refused_for_local_ranking(tiny_path, train_file, tmp_path):
    # TRL accepts 4 completions with G=4, but one image per device has no partner to be ranked against.
    with pytest.raises(ValueError, match="needs at least 2. .*fidelity_scope='global'"):
        train(_args(tiny_path, train_file, tmp_path / "run", "--per_device_train_batch_size", "4"))
