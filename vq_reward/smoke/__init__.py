"""The offline smoke checkpoints the package builds itself: real Qwen2.5-VL checkpoints, a few MB each.

- `tiny` (`build_tiny_checkpoint`): random weights, byte-identical on every build; its scores mean nothing. For
  tests of the plumbing.
- `taught` (`build_taught_checkpoint`): a hand-designed image-quality front end plus a language model taught on CPU
  in about a minute to answer the VisualQuality-R1 prompt with `<answer>X.YZ</answer>` numbers that follow image
  quality. For the README's main command and for tests of what the readouts read. A demo, not a quality model.

`vq_reward.hub` builds them on first use into its cache and resolves the names "tiny" and "taught".
"""

from vq_reward.smoke.taught import Recipe, build_taught_checkpoint
from vq_reward.smoke.tiny import build_tiny_checkpoint


__all__ = ["Recipe", "build_taught_checkpoint", "build_tiny_checkpoint"]
