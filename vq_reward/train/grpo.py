"""Retrain a VisualQuality-R1 scorer with RL2R GRPO on stock TRL (or Q-Insight's multi-task GRPO). Reads top to bottom.

What it does: loads JSONL rows from `vq-reward prepare-data`, builds the VisualQuality-R1 prompt for each image,
samples G answers per image with the policy, rewards each answer by how well it ranks its image against the other
images of the same dataset on the device (fidelity reward) plus the answer format, and updates the policy with
GRPO. Each device's batch holds whole groups of images of one dataset. Checkpoints load with
`VisualQualityScorer.from_pretrained`.

Q-Insight (`prompt_style: q-insight`): score, degradation and comparison rows (one JSONL may mix them; see
`vq-reward prepare-degradation` / `prepare-comparison`) get Q-Insight's prompts, and each row is rewarded by its
own task's rewards (`qinsight_rewards`); recipes train/recipes/qinsight_*.yaml.

Launch (one process per GPU; accelerate or torchrun):

    accelerate launch --config_file train/accelerate/deepspeed_zero3.yaml -m vq_reward.train.grpo \\
        --config train/recipes/kadid_vqr1.yaml
    python -m vq_reward.train.grpo --config train/recipes/tiny_cpu.yaml          # CPU smoke run, tiny model
    python -m vq_reward.train.grpo --config train/recipes/qinsight_tiny_cpu.yaml # Q-Insight CPU smoke run

Any field of `VQScriptArguments`, `GRPOConfig` or `ModelConfig` can be set in the YAML or on the command line
(`--learning_rate 1e-6`); the command line wins.
"""

import os
import sys
from typing import Any, cast

import torch

from vq_reward.data.rows import SCORE_TASK
from vq_reward.hub import resolve_model
from vq_reward.loading import load_config, load_model, load_processor
from vq_reward.readout import NumberTokens
from vq_reward.train import require_trl
from vq_reward.train.checkpoints import checkpoint_to_resume, finished_run
from vq_reward.train.closed_set import ClosedSetSampler
from vq_reward.train.config import VQScriptArguments
from vq_reward.train.dataset import build_dataset, load_rows, with_answer_prefix
from vq_reward.train.reward_registry import make_reward_funcs
from vq_reward.train.trainer import QualityGRPOTrainer, TimeLimitCallback


require_trl()
from transformers import TrainerCallback  # noqa: E402
from transformers.hf_argparser import DataClassType  # noqa: E402
from trl import GRPOConfig, ModelConfig, TrlParser, get_peft_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[VQScriptArguments, GRPOConfig, ModelConfig]:
    """Parse `--config recipe.yaml` plus command-line overrides into the three configs."""
    parser = TrlParser([DataClassType(VQScriptArguments), DataClassType(GRPOConfig), DataClassType(ModelConfig)])
    return cast(tuple[VQScriptArguments, GRPOConfig, ModelConfig], parser.parse_args_and_config(args=argv))


def digit_only_generation(tokenizer: Any, vocab_rows: int, use_vllm: bool) -> dict[str, list[int]]:
    """Generation keywords that sample only "1".."5" (`digit_only`): vLLM's `allowed_token_ids`, or HF's
    `suppress_tokens` for every other row of the model's output layer (the real checkpoints have 152,064 rows,
    more than the tokenizer's 151,665 tokens: the rows past it must be suppressed too).

    Example:
        >>> kwargs = digit_only_generation(scorer.processor.tokenizer, 800, use_vllm=False)
        >>> len(kwargs["suppress_tokens"])
        795
    """
    digits = set(NumberTokens.of(tokenizer).first)
    if use_vllm:
        return {"allowed_token_ids": sorted(digits)}
    return {"suppress_tokens": [i for i in range(max(vocab_rows, len(tokenizer))) if i not in digits]}


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> QualityGRPOTrainer | None:
    """Train; returns the trainer (its `state.log_history` holds the logged metrics), or None when the checkpoint to
    resume from shows that the run has already finished (then nothing is loaded, trained or written)."""
    script_args, training_args, model_args = parse_args(argv)
    model_path = model_args.model_name_or_path
    if model_path is None:
        raise ValueError("set --model_name_or_path: a hub id, a local checkpoint, or 'tiny' (offline random model).")

    # Resuming: the newest complete checkpoint ("last" skips one whose save was cut short); a finished run stays as
    # it is (transformers would train one step past max_steps when the run ended mid-epoch, and save over it).
    log = print if training_args.process_index == 0 else _silent
    output_dir = str(training_args.output_dir)  # never None: transformers fills in its default
    resume = checkpoint_to_resume(output_dir, training_args.resume_from_checkpoint, log)
    max_steps, epochs = training_args.max_steps, training_args.num_train_epochs
    finished = None if resume is None else finished_run(resume, output_dir, max_steps, epochs)
    if finished:
        log(finished)
        return None
    model_path = resolve_model(model_path)  # "tiny": the offline random smoke checkpoint, built on first use

    # Processor: left padding is mandatory (TRL re-tokenizes prompts for the loss forward with the tokenizer's own
    # padding side, trl#5785), and the pixel budget is pinned and checked.
    budget = {k: v for k, v in (("min_pixels", script_args.min_pixels), ("max_pixels", script_args.max_pixels)) if v}
    processor = load_processor(model_path, revision=model_args.model_revision, **budget)
    min_pixels = int(processor.image_processor.size["shortest_edge"])
    max_pixels = int(processor.image_processor.size["longest_edge"])

    # Non-thinking fast path: the prompt ends with "<answer>" (q-insight: an empty <think> block and "<answer>\n"),
    # exactly the prompt the scorer's readouts use; the checkpoint keeps the original template (the trainer's _save).
    original_template: str | None = None
    if script_args.force_answer_prefix:
        template = processor.chat_template
        if not isinstance(template, str):
            raise ValueError(f"{model_path}: force_answer_prefix needs one chat template, the processor has "
                             f"{type(template).__name__}; set force_answer_prefix false.")  # fmt: skip
        original_template = template
        processor.chat_template = with_answer_prefix(template, script_args.answer_prefix)
    if script_args.digit_only:
        rows = load_config(model_path, revision=model_args.model_revision).get_text_config().vocab_size
        extra = digit_only_generation(processor.tokenizer, rows, training_args.use_vllm)
        given = cast(dict, training_args.generation_kwargs or {})  # transformers parsed a JSON string into a dict
        training_args.generation_kwargs = {**given, **extra}
    closed_set = None
    if script_args.closed_set_sampling:
        # Rollouts drawn from the readouts' closed answer sets (vq_reward/train/closed_set.py says why it is exact).
        closed_set = ClosedSetSampler(
            processor.tokenizer, script_args.answer_prefix, temperature=training_args.temperature
        )

    # Model: loaded here (not by TRL) so the vision tower can be frozen before the optimizer is built.
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = load_model(
        model_path, revision=model_args.model_revision, dtype=dtype, attn_implementation=model_args.attn_implementation
    )
    if script_args.freeze_vision:
        visual = getattr(getattr(model, "model", None), "visual", None)
        if visual is None:
            raise ValueError(f"freeze_vision: {type(model).__name__} has no model.visual vision tower to freeze.")
        visual.requires_grad_(False)

    # Data: one row per image; each device batch is drawn from one dataset by QualityGRPOTrainer's sampler.
    train_rows = load_rows(script_args.train_files, script_args.max_train_samples)
    train_dataset = build_dataset(train_rows, script_args, min_pixels, max_pixels)
    eval_dataset = None
    if script_args.eval_files:
        eval_dataset = build_dataset(load_rows(script_args.eval_files), script_args, min_pixels, max_pixels)
    if closed_set is not None:
        _check_closed_set(closed_set, training_args, {row.get("task", SCORE_TASK) for row in train_rows})

    # Rewards: fidelity rank reward (+ format), summed unweighted unless GRPOConfig.reward_weights says otherwise.
    if training_args.num_generations is None:
        raise ValueError("set num_generations: the rewards compare each image's group of rollouts.")
    reward_funcs = make_reward_funcs(
        script_args.reward_funcs,
        training_args.num_generations,
        fidelity_scope=script_args.fidelity_scope,
        parse_failure=script_args.parse_failure,
        parse_fallback_to_text=script_args.parse_fallback_to_text,
        answer_prefix=script_args.answer_prefix,
        fidelity_eps=script_args.fidelity_eps,
        thinking=script_args.thinking,
        seed=training_args.seed,
        score_threshold=script_args.score_threshold,
    )
    # Images a device batch must hold: 2 to rank within the device, 1 to rank globally, 0 for per-row rewards.
    ranks = "fidelity" in script_args.reward_funcs
    min_images = (2 if script_args.fidelity_scope == "local" else 1) if ranks else 0

    callbacks = list(callbacks or [])
    if script_args.max_train_minutes is not None:
        callbacks.append(TimeLimitCallback(script_args.max_train_minutes))
    trainer = QualityGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
        homogeneous_batches=script_args.dataset_homogeneous_batches,
        dataset_choice=script_args.dataset_choice,
        min_images_per_device=min_images,
        saved_chat_template=original_template,
        closed_set=closed_set,
        cache_vision=script_args.freeze_vision and script_args.cache_frozen_vision,
    )

    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    trainer.save_model(output_dir)
    return trainer


def _silent(message: str) -> None:
    """The log of every process but the first, so that a line is printed once per run."""


def _check_closed_set(closed_set: ClosedSetSampler, training_args: GRPOConfig, tasks: set[str]) -> None:
    """Refuse settings under which closed-set rollouts of `tasks` would not be the readout's exact policy gradient."""
    longest = max(max(closed_set.answer_lengths(task)) for task in tasks)
    limit = training_args.max_completion_length  # None: no limit
    if limit is not None and limit < longest:
        raise ValueError(
            f"max_completion_length={training_args.max_completion_length} is shorter than the longest closed-set "
            f"answer ({longest} tokens); set max_completion_length >= {longest}."
        )
    if training_args.loss_type in ("grpo", "sapo"):
        uneven = {task: sorted(closed_set.answer_lengths(task)) for task in sorted(tasks)}
        uneven = {task: lengths for task, lengths in uneven.items() if len(lengths) > 1}
        if uneven:
            raise ValueError(
                f"loss_type={training_args.loss_type!r} divides each completion's loss by its own length, and the "
                f"closed-set answers differ in length ({uneven} tokens), so the gradient would not be the readout's "
                "policy gradient; use loss_type dr_grpo, dapo or bnpo."
            )


def run_command_line(argv: list[str]) -> int:
    """`python -m vq_reward.train.grpo ...`: a failure is one line on stderr and exit code 1 (VQ_REWARD_DEBUG=1 shows
    the traceback)."""
    try:
        main(argv)
    except (ValueError, OSError, RuntimeError, ImportError, KeyError) as error:
        if os.environ.get("VQ_REWARD_DEBUG"):
            raise
        print(f"vq_reward.train.grpo: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(sys.argv[1:]))
