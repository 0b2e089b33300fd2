"""vq_reward: VisualQuality-R1 as a deterministic image-quality reward model.

    from vq_reward import VisualQualityScorer
    scorer = VisualQualityScorer.from_pretrained("TianheWu/VisualQuality-R1-7B", device="cuda")
    scores = scorer.score(["a.png", "b.jpg"])  # tensor of shape (2,) in [1, 5], higher is better

The names below load on first use, so `import vq_reward` is instant and pulls in torch and transformers only
when a scorer is built. Training lives in `vq_reward.train` (the `train` extra) and is never imported from here.
"""

import importlib
from typing import TYPE_CHECKING, Any


__version__ = "0.3.0"

# public name -> the module that defines it; __all__ and the TYPE_CHECKING block list the same (tests/test_layers.py)
_EXPORTS = {
    "ImageInputError": "vq_reward.images",
    "NonFiniteScoreError": "vq_reward.scores",
    "ParsedAnswer": "vq_reward.parsing",
    "parse_answer": "vq_reward.parsing",
    "Rating": "vq_reward.scores",
    "ScoreDetails": "vq_reward.readout",
    "ScorerRecipe": "vq_reward.scorer",
    "VisualQualityScorer": "vq_reward.scorer",
}

__all__ = [
    "ImageInputError",
    "NonFiniteScoreError",
    "ParsedAnswer",
    "Rating",
    "ScoreDetails",
    "ScorerRecipe",
    "VisualQualityScorer",
    "__version__",
    "parse_answer",
]

if TYPE_CHECKING:
    from vq_reward.images import ImageInputError
    from vq_reward.parsing import ParsedAnswer, parse_answer
    from vq_reward.readout import ScoreDetails
    from vq_reward.scorer import ScorerRecipe, VisualQualityScorer
    from vq_reward.scores import NonFiniteScoreError, Rating


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vq_reward' has no attribute {name!r}")
