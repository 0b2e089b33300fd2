"""Q-Insight GRPO on the tiny checkpoint: closed-set rollouts follow the scorer readouts' distribution exactly; a
mixed score + degradation + comparison JSONL trains end to end (closed-set and free generation); the official
recipes hold the official values."""

import math

import pytest
import torch
from conftest import noise_image

from vq_reward import VisualQualityScorer, prompts, qinsight
from vq_reward.cli import main as cli


pytest.importorskip("trl")
from trl.data_utils import prepare_multimodal_messages  # noqa: E402

from vq_reward.train.closed_set import ClosedSetSampler, closed_set_answers  # noqa: E402
from vq_reward.train.dataset import with_answer_prefix  # noqa: E402
from vq_reward.train.grpo import main as train  # noqa: E402
from vq_reward.train.grpo import parse_args  # noqa: E402
from vq_reward.train.reward_registry import REWARDS  # noqa: E402


PREFIX = prompts.QINSIGHT_ANSWER_PREFIX


def trl_inputs(scorer, messages: list[dict], images: list) -> tuple[list[int], dict]:
    """The prompt ids and image inputs exactly as TRL builds them (filled image blocks, patched template)."""
    processor = scorer.processor
    filled = prepare_multimodal_messages(messages, images=scorer.prepare(images))
    tokenized = processor.apply_chat_template(
        conversation=[filled],
        chat_template=with_answer_prefix(processor.chat_template, PREFIX),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    fields = {k: v for k, v in tokenized.items() if k not in ("input_ids", "attention_mask")}
    return tokenized["input_ids"][0], fields


def test_closed_set_distribution_is_the_readouts(scorer):
    sampler = ClosedSetSampler(scorer.processor.tokenizer, PREFIX)
    image = noise_image(64, 64, seed=7)
    ids, fields = trl_inputs(scorer, prompts.degradation_messages(), [image])
    one = {"pixel_values": fields["pixel_values"], "image_grid_thw": fields["image_grid_thw"],
           "mm_token_type_ids": fields["mm_token_type_ids"][0]}  # fmt: skip
    probs = sampler.answer_logprobs(scorer.model, ids, one, "degradation").softmax(-1)
    (readout,) = scorer.degradation(image)
    by_class = {}
    for (kind, _), p in zip(qinsight.degradation_answers(), probs.tolist(), strict=True):
        by_class[kind] = by_class.get(kind, 0.0) + p
    assert by_class == pytest.approx(readout.class_probs, abs=1e-5)
    chosen = [p for (kind, _), p in zip(qinsight.degradation_answers(), probs.tolist(), strict=True)
              if kind == readout.distortion_class]  # fmt: skip
    assert [p / sum(chosen) for p in chosen] == pytest.approx(list(readout.severity_probs.values()), abs=1e-5)

    triple = [noise_image(64, 64, seed=s) for s in (1, 2, 3)]
    ids, fields = trl_inputs(scorer, prompts.comparison_messages(), triple)
    one = {"pixel_values": fields["pixel_values"], "image_grid_thw": fields["image_grid_thw"],
           "mm_token_type_ids": fields["mm_token_type_ids"][0]}  # fmt: skip
    probs = sampler.answer_logprobs(scorer.model, ids, one, "comparison").softmax(-1)
    (verdict,) = scorer.compare(*triple)
    assert dict(zip(closed_set_answers("comparison"), probs.tolist(), strict=True)) == pytest.approx(
        verdict.probs, abs=1e-5
    )


def test_closed_set_draws_follow_the_probabilities_and_split_the_batch_per_prompt(scorer):
    sampler = ClosedSetSampler(scorer.processor.tokenizer, PREFIX)
    first, triple = [noise_image(64, 64, seed=1)], [noise_image(56, 84, seed=2)] * 3
    ids, fields = trl_inputs(scorer, prompts.degradation_messages(), first)
    ids2, fields2 = trl_inputs(scorer, prompts.comparison_messages(), triple)
    n = 800  # rollouts of the first prompt; consecutive identical prompts share one forward
    batch = {  # TRL's batched layout: every rollout's image rows, in order
        "pixel_values": torch.cat([fields["pixel_values"]] * n + [fields2["pixel_values"]] * 2),
        "image_grid_thw": torch.cat([fields["image_grid_thw"]] * n + [fields2["image_grid_thw"]] * 2),
        "mm_token_type_ids": fields["mm_token_type_ids"] * n + fields2["mm_token_type_ids"] * 2,
    }
    tasks = ["degradation"] * n + ["comparison"] * 2
    generator = torch.Generator().manual_seed(0)
    drawn = sampler.sample(scorer.model, [ids] * n + [ids2] * 2, [first] * n + [triple] * 2, batch, tasks, generator)
    texts = scorer.processor.batch_decode(drawn, skip_special_tokens=True)
    assert set(texts[n:]) <= set(closed_set_answers("comparison"))
    answers = closed_set_answers("degradation")
    frequencies = torch.tensor([texts[:n].count(a) / n for a in answers])
    one = {"pixel_values": fields["pixel_values"], "image_grid_thw": fields["image_grid_thw"],
           "mm_token_type_ids": fields["mm_token_type_ids"][0]}  # fmt: skip
    probs = sampler.answer_logprobs(scorer.model, ids, one, "degradation").softmax(-1)
    assert (frequencies - probs).abs().max() < 4 * math.sqrt(probs.max() / n)  # 4 binomial standard deviations
    with pytest.raises(ValueError, match="does not end with the answer prefix"):
        sampler.sample(scorer.model, [ids[:-1]], [first], fields, ["degradation"])
    with pytest.raises(ValueError, match="cannot split the image inputs per prompt: 1 images and 16 patch rows for 2"):
        sampler.sample(scorer.model, [ids, ids], [first, first], fields, ["degradation"] * 2)


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    synth = root / "synth"
    assert cli(["distort", "examples/images", str(synth), "--crops", "1", "--crop-size", "56",
                "--kinds", "blur", "darken", "--levels", "2", "5"]) == 0  # fmt: skip
    assert cli(["prepare-data", "--labels", str(synth / "labels.txt"), "--images", str(synth), "--reference-pattern",
                "^(.+)__", "--dataset-name", "synthetic", "--output-dir", str(root), "--no-split"]) == 0  # fmt: skip
    labels = str(synth / "distortions.jsonl")
    common = ["--dataset-name", "synthetic", "--output-dir", str(root), "--no-split"]
    assert cli(["prepare-degradation", "--labels", labels, *common]) == 0
    assert cli(["prepare-comparison", "--distortions", labels, "--pairs-per-reference", "5", *common]) == 0
    parts = [str(root / f"synthetic_{task}all.jsonl") for task in ("", "degradation_", "comparison_")]
    assert cli(["merge-data", *parts, "--output", str(root / "mixed.jsonl")]) == 0
    return root / "mixed.jsonl"


def _args(tiny_path, data, out, *extra: str) -> list[str]:
    """The Q-Insight CPU recipe, shrunk: 3 rows x G=4 per step."""
    return ["--config", "train/recipes/qinsight_tiny_cpu.yaml", "--model_name_or_path", str(tiny_path),
            "--train_files", str(data), "--output_dir", str(out), "--num_generations", "4",
            "--per_device_train_batch_size", "12", "--max_steps", "2", "--logging_steps", "1", *extra]  # fmt: skip


POSSIBLE = {"score_threshold": {0.0, 1.0}, "degradation": {0.0, 0.25, 1.0}, "comparison": {0.0, 1.0}}


def test_mixed_tasks_train_with_closed_set_rollouts(tiny_path, mixed_file, tmp_path):
    before = VisualQualityScorer.from_pretrained(tiny_path)
    image = noise_image(64, 64)
    trainer = train(_args(tiny_path, mixed_file, tmp_path / "run", "--max_steps", "3"))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(h["completions/max_length"] <= 14 for h in logs)  # closed-set answers only
    seen = set()
    for entry in logs:  # each task's reward averages only its own rows: means of its possible values
        for name in POSSIBLE:
            mean = entry.get(f"rewards/{name}/mean")
            if mean is not None and not math.isnan(mean):
                seen.add(name)
                assert 0.0 <= mean <= max(POSSIBLE[name])
    assert seen  # 9 rows drawn from three tasks
    after = VisualQualityScorer.from_pretrained(tmp_path / "run")
    assert after.processor.chat_template == before.processor.chat_template  # the forced prefix is not saved
    assert after.degradation(image)[0].class_probs != before.degradation(image)[0].class_probs


@pytest.mark.slow
def test_official_free_generation_path_runs_on_mixed_rows(tiny_path, mixed_file, tmp_path):
    names = ["score_threshold", "degradation", "qinsight_format", "comparison", "comparison_format"]
    trainer = train(_args(tiny_path, mixed_file, tmp_path / "run", "--thinking", "true",
                          "--force_answer_prefix", "false",
                          "--closed_set_sampling", "false", "--reward_funcs", *names, "--loss_type", "grpo",
                          "--scale_rewards", "group", "--beta", "0.001", "--max_completion_length", "6"))  # fmt: skip
    assert trainer.state.global_step == 2 and any(
        "rewards/qinsight_format/mean" in h for h in trainer.state.log_history
    )


def test_uneven_closed_set_answers_refuse_the_per_length_loss(tiny_path, mixed_file, tmp_path):
    # The tiny tokenizer writes "Image A" in 2 tokens and "Similar" in 1: loss_type grpo would weight them unequally.
    with pytest.raises(ValueError, match=r"differ in length \(\{'comparison': \[1, 2\]\} tokens\).*dr_grpo"):
        train(_args(tiny_path, mixed_file, tmp_path / "run", "--loss_type", "grpo"))


def test_q_insight_recipes_hold_the_official_values():
    flags = ["--report_to", "none", "--use_cpu", "true"]
    script, t, model = parse_args(["--config", "train/recipes/qinsight_score_degradation.yaml", *flags])
    assert model.model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct" and model.dtype == "bfloat16"
    assert script.prompt_style == "q-insight" and script.thinking and not script.closed_set_sampling
    assert script.reward_funcs == ["score_threshold", "degradation", "qinsight_format"]
    assert script.score_threshold == 0.35 and not script.dataset_homogeneous_batches and not script.freeze_vision
    assert (t.num_generations, t.per_device_train_batch_size, t.gradient_accumulation_steps) == (8, 8, 2)
    assert (t.learning_rate, t.beta, t.num_train_epochs, t.loss_type, t.scale_rewards) == (1e-6, 0.001, 10, "grpo",
                                                                                            "group")  # fmt: skip
    assert (t.temperature, t.top_k, t.top_p, t.max_completion_length) == (1.0, 50, 1.0, 256)
    assert t.bf16 and not t.gradient_checkpointing and t.lr_scheduler_type == "linear" and t.save_steps == 500

    script, c, model = parse_args(["--config", "train/recipes/qinsight_comparison.yaml", *flags])
    assert model.model_name_or_path == "runs/qinsight_score_degradation"  # starts from the score+degradation model
    assert script.reward_funcs == ["comparison", "comparison_format"] and script.prompt_style == "q-insight"
    assert (c.num_generations, c.per_device_train_batch_size, c.gradient_accumulation_steps) == (8, 2, 2)
    assert (c.learning_rate, c.beta, c.num_train_epochs) == (1e-6, 0.001, 10)
    assert c.generation_batch_size == 2 * 2 * 8  # official layout on 8 GPUs: steps_per_generation = grad-acc
    for recipe in ("qinsight_score_degradation", "qinsight_comparison", "qinsight_tiny_cpu"):
        script, *_ = parse_args(["--config", f"train/recipes/{recipe}.yaml", *flags])
        assert set(script.reward_funcs) <= set(REWARDS)
