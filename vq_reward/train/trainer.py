"""`QualityGRPOTrainer`: stock TRL `GRPOTrainer` plus only what TRL has no option for (quality-model training:
rank rewards, per-task Q-Insight rewards, closed-set rollouts).

1. The train sampler (`_get_train_sampler`, the Trainer's hook): dataset-homogeneous device batches of whole
   groups (`DatasetHomogeneousSampler`), and a refusal of batch layouts that would split an image's rollouts.
2. Saving (`_save`): when training used a chat template with the `<answer>` prefix in its generation prompt, the
   checkpoint gets the original template back, so `VisualQualityScorer` (which adds the prefix itself) loads it as is.
3. Closed-set rollouts (`_generate_single_turn`, with a `ClosedSetSampler`): instead of `model.generate`, each
   rollout is drawn from the closed set of answers the scorer's Q-Insight readouts score (see `closed_set`).
   `generation_kwargs` only reach a `GenerationConfig` (no logits processor), a per-token mask would sample a
   different distribution, and TRL's experimental `rollout_func` would have to re-render prompts and images itself;
   this override reuses TRL's tokenized prompts and image inputs. The rows' tasks, which pick each prompt's answer
   set, are noted in `_generate_and_score_completions`.

Plus `TimeLimitCallback`, which stops a run after a wall-clock budget with a final save.
"""

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.data import Sampler
from transformers import ProcessorMixin, TrainerCallback

from vq_reward.data.rows import SCORE_TASK
from vq_reward.train import require_trl
from vq_reward.train.checkpoints import load_checkpoint_weights
from vq_reward.train.closed_set import ClosedSetSampler
from vq_reward.train.sampler import DatasetHomogeneousSampler, images_per_device
from vq_reward.train.vision_cache import cache_frozen_vision


require_trl()
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.models.utils import unwrap_model_for_generation  # noqa: E402


class QualityGRPOTrainer(GRPOTrainer):
    """GRPOTrainer for rank rewards over a device's batch of images.

    Args:
        homogeneous_batches: fill each device's generation batch from one `dataset_name` (the official sampler);
            False keeps TRL's sampler (whole groups are still enforced).
        dataset_choice: "uniform" or "proportional" (see `DatasetHomogeneousSampler`).
        min_images_per_device: 2 for the local-scope fidelity reward, 1 when images are ranked globally, 0 when the
            rewards are per row (Q-Insight's): then a prompt's G rollouts may span devices, as in TRL (its
            advantages are computed after gathering), unless `homogeneous_batches` needs whole groups per device.
        saved_chat_template: the chat template to write into checkpoints, when the processor's was patched.
        closed_set: draw rollouts with this sampler instead of generating them (not with vLLM).
        cache_vision: the vision tower is frozen: the policy and the reference model compute each distinct image's
            features once per step (`vision_cache`), not once per rollout and forward.
        *args, **kwargs: `GRPOTrainer`'s.
    """

    args: GRPOConfig  # Trainer declares TrainingArguments
    num_generations: int  # TRL copies it from the config, whose default fills it in

    def __init__(
        self,
        *args,
        homogeneous_batches: bool = True,
        dataset_choice: str = "uniform",
        min_images_per_device: int = 2,
        saved_chat_template: str | None = None,
        closed_set: ClosedSetSampler | None = None,
        cache_vision: bool = False,
        **kwargs,
    ) -> None:
        config = kwargs.get("args")
        if closed_set is not None and config is not None and config.use_vllm:
            raise ValueError("closed_set_sampling draws rollouts with the training model itself; set use_vllm=False.")
        if config is not None and (min_images_per_device or homogeneous_batches):  # refuse a bad layout early
            images_per_device(
                config.per_device_train_batch_size,
                config.steps_per_generation,
                config.num_generations,
                max(1, min_images_per_device),
            )
            if config.eval_strategy != "no":
                eval_generations = config.num_generations_eval or config.num_generations
                if eval_generations != config.num_generations:
                    raise ValueError(
                        f"num_generations_eval={eval_generations} differs from num_generations="
                        f"{config.num_generations}; the rank reward groups rollouts by num_generations, so leave "
                        "num_generations_eval unset."
                    )
                if config.per_device_eval_batch_size % eval_generations:
                    raise ValueError(
                        f"per_device_eval_batch_size={config.per_device_eval_batch_size} is not a multiple of "
                        f"num_generations_eval={eval_generations}: an image's eval rollouts would be split across "
                        "devices. Make it a multiple."
                    )
        self.homogeneous_batches = homogeneous_batches
        self.dataset_choice = dataset_choice
        self.min_images_per_device = min_images_per_device
        self.saved_chat_template = saved_chat_template
        self.closed_set = closed_set
        self._rollout_tasks: list[str] = []
        with _without_checkpointing_deprecation():  # PEFT reads it when wrapping the model
            super().__init__(*args, **kwargs)
        if cache_vision:  # room for one generation batch's distinct images
            completions = self.args.per_device_train_batch_size * self._steps_per_generation()
            capacity = max(1, completions // self.num_generations)
            cache_frozen_vision(self.accelerator.unwrap_model(self.model), capacity)
            if self.ref_model is not None:  # its own cache: the towers are equal only by construction
                reference = self.accelerator.unwrap_model(self.ref_model).requires_grad_(False)  # it never trains
                cache_frozen_vision(reference, capacity)

    def _steps_per_generation(self) -> int:
        return self.args.steps_per_generation or self.args.gradient_accumulation_steps  # TRL's default

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        self._rollout_tasks = [row.get("task") or SCORE_TASK for row in inputs]  # one per rollout, in order
        with _without_checkpointing_deprecation():  # TRL reads it around every generation
            return super()._generate_and_score_completions(inputs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.closed_set is None:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images=has_tool_images
            )
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as model,
            torch.no_grad(),
        ):
            completion_ids = self.closed_set.sample(model, prompt_ids, images, multimodal_fields, self._rollout_tasks)
        return completion_ids, None  # no sampling log-probs: TRL uses the training forward's (num_iterations=1)

    def _get_train_sampler(self, dataset=None) -> Sampler:
        dataset = self.train_dataset if dataset is None else dataset
        if not self.homogeneous_batches:
            return super()._get_train_sampler(dataset)
        plain = dataset.with_format(None)  # column access without decoding every image
        names = plain["dataset_name"] if "dataset_name" in plain.column_names else ["all"] * len(plain)
        steps_per_generation = self._steps_per_generation()
        sampler = DatasetHomogeneousSampler(
            names,
            images_per_device=images_per_device(
                self.args.per_device_train_batch_size,
                steps_per_generation,
                self.num_generations,
                max(1, self.min_images_per_device),
            ),
            num_processes=self.accelerator.num_processes,
            num_generations=self.num_generations,
            repeat_count=self.num_iterations * steps_per_generation,
            seed=self.args.seed,
            choice=self.dataset_choice,
        )
        if sampler.unused_datasets:
            print(f"Datasets smaller than one device batch, never sampled: {sampler.unused_datasets}")
        return sampler

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # Full weights are loaded strictly through the save-time key mapping (see `checkpoints`); adapters (PEFT),
        # DeepSpeed and FSDP checkpoints keep their own loaders, which use the model's keys.
        model = self.model if model is None else model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or hasattr(model, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_weights(self.accelerator.unwrap_model(model), resume_from_checkpoint)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        processor = self.processing_class
        if self.saved_chat_template is None or not isinstance(processor, ProcessorMixin):
            return super()._save(output_dir, state_dict)
        training_template = processor.chat_template
        processor.chat_template = self.saved_chat_template
        try:
            super()._save(output_dir, state_dict)
        finally:
            processor.chat_template = training_template


@contextmanager
def _without_checkpointing_deprecation() -> Iterator[None]:
    """Silence exactly transformers' FutureWarning for `model.is_gradient_checkpointing`, once per training step
    otherwise. TRL (`unwrap_model_for_generation`, `disable_gradient_checkpointing`) and PEFT read the deprecated
    property, not our code; drop this when they read `is_activation_checkpointing`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


class TimeLimitCallback(TrainerCallback):
    """Stop training, with a save, once `minutes` of wall time have passed since training began."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60.0
        self.start: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is not None and time.monotonic() - self.start >= self.seconds:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
        return control


# The name of 0.1, when the trainer hosted rank rewards only.
RankGRPOTrainer = QualityGRPOTrainer
