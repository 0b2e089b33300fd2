"""vq_reward: VisualQuality-R1 as a deterministic image-quality reward model.

    from vq_reward import VisualQualityScorer
    scorer = VisualQualityScorer.from_pretrained("TianheWu/VisualQuality-R1-7B", device="cuda")
    scores = scorer.score(["a.png", "b.jpg"])  # tensor of shape (2,) in [1, 5], higher is better

Training lives in `vq_reward.train` (the `train` extra) and is never imported from here.
"""

from vq_reward.images import ImageInputError
from vq_reward.parsing import ParsedAnswer, parse_answer
from vq_reward.scorer import Rating, ScoreDetails, VisualQualityScorer


__version__ = "0.1.0"

__all__ = [
    "ImageInputError",
    "ParsedAnswer",
    "Rating",
    "ScoreDetails",
    "VisualQualityScorer",
    "__version__",
    "parse_answer",
]
