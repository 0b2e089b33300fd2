"""The script arguments of `python -m vq_reward.train.grpo` (beside TRL's `GRPOConfig` and `ModelConfig`).

Every field has `help` metadata, so `--help` lists it and a YAML recipe (`--config`) can set it.
"""

from dataclasses import dataclass, field

from vq_reward import prompts


@dataclass
class VQScriptArguments:
    """What to train on, how to prompt, which rewards, and how to batch (TRL's configs hold the rest)."""

    train_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "JSONL data files from `vq-reward prepare-data` (several are merged, keeping dataset_name)."
        },
    )
    eval_files: list[str] = field(default_factory=list, metadata={"help": "JSONL files evaluated during training."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows (smoke runs)."}
    )
    thinking: bool = field(
        default=True,
        metadata={"help": "Prompt for <think> reasoning then <answer> (official). False: answer only (fast path)."},
    )
    force_answer_prefix: bool = field(
        default=False,
        metadata={
            "help": "Non-thinking only: end the generation prompt with '<answer>', so the completion is the score "
            "itself. This is exactly what VisualQualityScorer.score() reads, so training shapes the scorer directly."
        },
    )
    digit_only: bool = field(
        default=False,
        metadata={
            "help": "With force_answer_prefix: sample only the digit tokens 1..5 (suppress every other token). Use "
            "with "
            "max_completion_length=1. Exact policy gradient of the digit distribution that score() reads."
        },
    )
    prompt_style: str = field(
        default="visualquality-r1",
        metadata={
            "help": "Which model's prompts: visualquality-r1 (score rows: its question, no system turn) or q-insight "
            "(Q-Insight's system prompt and questions, verbatim, for score, degradation and comparison rows; the "
            "answer prefix becomes '<think>\\n\\n</think>\\n<answer>\\n').",
            "choices": ["visualquality-r1", "q-insight"],
        },
    )
    closed_set_sampling: bool = field(
        default=False,
        metadata={
            "help": "q-insight with force_answer_prefix: sample each answer from the closed set that the scorer's "
            "readouts score (degradation: 21 class/severity answers; comparison: Image A/Image B/Similar; score: "
            "'{\"rating\": d' for d in 1..5), in proportion to the model's likelihood of each. Exact policy "
            "gradient of the readout's distribution with a loss_type that does not divide by each completion's "
            "length (dr_grpo, dapo, bnpo). See vq_reward/train/closed_set.py.",
        },
    )
    question: str = field(
        default=prompts.QUALITY_QUESTION,
        metadata={"help": "The question text of the visualquality-r1 prompt (q-insight uses its own, verbatim)."},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "visualquality-r1: a system turn; None keeps the chat template's default (official). q-insight "
            "always uses Q-Insight's system prompt."
        },
    )
    min_pixels: int | None = field(
        default=None, metadata={"help": "Pixel budget lower bound; None keeps the checkpoint's (3136 for 7B)."}
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "Pixel budget upper bound; None keeps the checkpoint's (12845056 for 7B)."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["fidelity", "format"],
        metadata={
            "help": "Rewards, summed (weights: GRPOConfig.reward_weights). VisualQuality-R1: fidelity, format. "
            "Q-Insight: score_threshold, degradation, qinsight_format (score and degradation rows), comparison, "
            "comparison_format. Each scores only its own task's rows."
        },
    )
    score_threshold: float = field(
        default=0.35,
        metadata={"help": "score_threshold reward: 1 if |rating - MOS| < this, else 0 (official 0.35)."},
    )
    fidelity_scope: str = field(
        default="local",
        metadata={
            "help": "local: rank images within each device's batch (official). global: gather every device's "
            "parsed scores first, so each image has more partners (same dataset only).",
            "choices": ["local", "global"],
        },
    )
    parse_failure: str = field(
        default="exclude",
        metadata={
            "help": "exclude: an unparseable rollout is left out of the statistics and gets fidelity 0. random: "
            "replaced by a random integer 1..5 (official parity only).",
            "choices": ["exclude", "random"],
        },
    )
    parse_fallback_to_text: bool = field(
        default=False,
        metadata={"help": "Without <answer> tags, read the first number of the whole completion (official)."},
    )
    fidelity_eps: float = field(default=1e-6, metadata={"help": "The fidelity reward's epsilon (official 1e-6)."})
    dataset_homogeneous_batches: bool = field(
        default=True,
        metadata={"help": "Fill each device's generation batch from one dataset_name (official sampler)."},
    )
    dataset_choice: str = field(
        default="uniform",
        metadata={
            "help": "How a device batch's dataset is drawn: uniform among datasets with images left (official), "
            "or proportional to the images left.",
            "choices": ["uniform", "proportional"],
        },
    )
    freeze_vision: bool = field(
        default=False, metadata={"help": "Freeze the vision tower (model.model.visual); official trains it."}
    )
    cache_frozen_vision: bool = field(
        default=True,
        metadata={
            "help": "With freeze_vision: compute each distinct image's features once per step, not once per rollout "
            "and forward (vq_reward/train/vision_cache.py); false saves the memory of one step's images."
        },
    )
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "Stop training (with a final save) after this many minutes of wall time."}
    )

    def __post_init__(self) -> None:
        if self.force_answer_prefix and self.thinking:
            raise ValueError("force_answer_prefix needs thinking=False: the '<answer>' prefix skips the reasoning.")
        if self.digit_only and not self.force_answer_prefix:
            raise ValueError(
                "digit_only needs force_answer_prefix=True: only then is the first completion token a digit."
            )
        if self.prompt_style not in ("visualquality-r1", "q-insight"):
            raise ValueError(f"prompt_style must be 'visualquality-r1' or 'q-insight', got {self.prompt_style!r}.")
        if self.digit_only and self.prompt_style == "q-insight":
            raise ValueError(
                "digit_only is for the visualquality-r1 '<answer>' prefix; use closed_set_sampling with q-insight."
            )
        if self.closed_set_sampling and not (self.prompt_style == "q-insight" and self.force_answer_prefix):
            raise ValueError(
                "closed_set_sampling needs prompt_style='q-insight' and force_answer_prefix=True (with "
                "thinking=False): "
                "the closed-set answers follow Q-Insight's forced answer prefix."
            )
        if self.fidelity_scope not in ("local", "global"):
            raise ValueError(f"fidelity_scope must be 'local' or 'global', got {self.fidelity_scope!r}.")
        if self.parse_failure not in ("exclude", "random"):
            raise ValueError(f"parse_failure must be 'exclude' or 'random', got {self.parse_failure!r}.")

    @property
    def answer_prefix(self) -> str:
        """The text forced at the start of the answer with `force_answer_prefix`, else "".

        "<answer>" for visualquality-r1; an empty reasoning block and "<answer>\\n" for q-insight (exactly what the
        scorer's Q-Insight readouts force).
        """
        if not self.force_answer_prefix:
            return ""
        return prompts.QINSIGHT_ANSWER_PREFIX if self.prompt_style == "q-insight" else prompts.ANSWER_PREFIX
