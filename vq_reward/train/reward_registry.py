"""The rewards the entry point's `reward_funcs` can name, for every model family: VisualQuality-R1's (`fidelity`,
`format`, in `vqr1_rewards`) and Q-Insight's (`score_threshold`, `degradation`, `qinsight_format`, `comparison`,
`comparison_format`, in `qinsight_rewards`). A new family adds its rewards in its own module and names them here.
"""

from collections.abc import Callable, Sequence

from vq_reward.train import qinsight_rewards
from vq_reward.train.vqr1_rewards import AnswerFormatReward, FidelityRankReward


# Name -> factory(num_generations, **options).
REWARDS: dict[str, Callable[..., Callable]] = {
    "fidelity": lambda num_generations, **options: FidelityRankReward(
        num_generations,
        scope=options["fidelity_scope"],
        parse_failure=options["parse_failure"],
        fallback_to_text=options["parse_fallback_to_text"],
        answer_prefix=options["answer_prefix"],
        eps=options["fidelity_eps"],
        seed=options["seed"],
    ),
    "format": lambda num_generations, **options: AnswerFormatReward(
        thinking=options["thinking"], answer_prefix=options["answer_prefix"]
    ),
    "score_threshold": lambda num_generations, **options: qinsight_rewards.ScoreThresholdReward(
        threshold=options["score_threshold"], answer_prefix=options["answer_prefix"]
    ),
    "degradation": lambda num_generations, **options: qinsight_rewards.DegradationReward(options["answer_prefix"]),
    "qinsight_format": lambda num_generations, **options: qinsight_rewards.QInsightFormatReward(
        options["answer_prefix"]
    ),
    "comparison": lambda num_generations, **options: qinsight_rewards.ComparisonReward(options["answer_prefix"]),
    "comparison_format": lambda num_generations, **options: qinsight_rewards.ComparisonFormatReward(
        options["answer_prefix"]
    ),
}


def make_reward_funcs(names: Sequence[str], num_generations: int, **options) -> list[Callable]:
    """Build the reward functions named in `names` (keys of `REWARDS`), in order.

    Example:
        >>> funcs = make_reward_funcs(["format"], 6, thinking=True, answer_prefix="")
        >>> [f.__name__ for f in funcs]
        ['format']
    """
    unknown = [name for name in names if name not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; available: {sorted(REWARDS)}.")
    return [REWARDS[name](num_generations, **options) for name in names]
