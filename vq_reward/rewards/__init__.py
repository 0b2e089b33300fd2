"""Rewards for other people's training loops, made from a `VisualQualityScorer`.

- `QualityReward` (`scorer.as_reward()`): DDPO / Flow-GRPO / DanceGRPO, `fn(images, prompts, metadata) ->
  (np.float32[N], info)`.
- `DifferentiableQualityReward` (`scorer.as_differentiable_reward()`): DRaFT / AlignProp / ReFL,
  `fn(images) -> Tensor[N]` whose graph reaches the pixels.
- `TrlQualityReward` (`scorer.as_trl_reward()`): `trl.GRPOTrainer`, `fn(prompts, completions, completion_ids,
  **columns) -> list[float | None]`, named "visual_quality".

All three are plain callable classes, never `nn.Module` (TRL would take a module for a text reward model). They
pickle without weights (`ScorerSource`): the copy that a process unpickling them loads on first use scores exactly
like the original. Calls from several threads are safe: the scorer sends one batch at a time to a model in this
process (HF, vLLM), and lets concurrent calls through to a server backend, which takes them. A score is a finite
number in [1, 5]: a NaN or infinite one raises `vq_reward.scorer.NonFiniteScoreError` (naming the images) instead.

Against reward hacking: `mode="win-rate"` on `QualityReward` / `TrlQualityReward` (`win_rates`: each image's
probability of beating the others of its prompt group, from the model's own uncertainty), `views=K` on every
adapter (the mean over K deterministic views), and `HackingMonitor` (reward beside cheap image statistics that
hacking moves).
"""

from vq_reward.rewards.differentiable import DifferentiableQualityReward
from vq_reward.rewards.diffusion import QualityReward
from vq_reward.rewards.monitor import HackingMonitor
from vq_reward.rewards.source import REWARD_NAME, ScorerSource, default_device
from vq_reward.rewards.trl import TrlQualityReward, completion_text
from vq_reward.rewards.win_rate import win_rates


__all__ = [
    "REWARD_NAME",
    "DifferentiableQualityReward",
    "HackingMonitor",
    "QualityReward",
    "ScorerSource",
    "TrlQualityReward",
    "completion_text",
    "default_device",
    "win_rates",
]
