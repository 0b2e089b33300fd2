"""Where a reward's scorer comes from: a loaded one, or a recipe loaded lazily in the process that calls it."""

import importlib.util
import os
import threading
from typing import Any

import torch

from vq_reward.hub import canonical_name
from vq_reward.scorer import ScorerRecipe, VisualQualityScorer


REWARD_NAME = "visual_quality"


def default_device() -> torch.device:
    """Where a lazily loaded scorer goes: this process's accelerate device (one copy per process), else CPU.

    Example:
        >>> default_device()
        device(type='cpu')
    """
    if importlib.util.find_spec("accelerate") is None:
        return torch.device("cpu")
    from accelerate import PartialState

    return PartialState().device


class ScorerSource:
    """A scorer, or how to load one. It pickles as a `ScorerRecipe` only, and loads on first use after unpickling.

    A loaded scorer's recipe is taken when the source is pickled, so a copy gets the settings as they are then
    (a `question` or `max_input_pixels` changed after loading included) and scores exactly like the original.

    Args:
        scorer: a loaded scorer, or a model name (hub id, local folder, "tiny") to load lazily.
        device: where a lazily loaded scorer goes; `None` = `default_device()`.
        load_kwargs: `VisualQualityScorer.from_pretrained` arguments for a lazily loaded scorer.
    """

    def __init__(
        self,
        scorer: VisualQualityScorer | str | os.PathLike,
        device: str | torch.device | None = None,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.device = device
        if isinstance(scorer, VisualQualityScorer):
            if load_kwargs:
                raise ValueError(
                    f"load_kwargs={load_kwargs} only apply when the reward loads the scorer from a model name; this "
                    "scorer is loaded already. Pass them to VisualQualityScorer.from_pretrained instead."
                )
            self._scorer: VisualQualityScorer | None = scorer
            self._recipe: ScorerRecipe | None = None
        else:
            self._scorer = None
            load = dict(load_kwargs or {})
            backend = load.pop("backend", "hf")
            self._recipe = ScorerRecipe(model=canonical_name(scorer), load=load, backend=backend)
        self._loading = threading.Lock()

    def get(self) -> VisualQualityScorer:
        """The scorer, loaded on first use."""
        if self._scorer is None:
            with self._loading:
                if self._scorer is None:
                    device = self.device if self.device is not None else default_device()
                    self._scorer = self.recipe().build(device)
        return self._scorer

    @property
    def loaded(self) -> VisualQualityScorer | None:
        """The scorer if it is loaded already, else `None` (nothing is loaded before the first call)."""
        return self._scorer

    def recipe(self) -> ScorerRecipe:
        """What a copy loads: the loaded scorer's current recipe, or the one this source was given."""
        if self._scorer is not None:
            return self._scorer.recipe()
        assert self._recipe is not None  # set whenever no scorer is
        return self._recipe

    def __getstate__(self) -> dict[str, Any]:
        return {"device": self.device, "recipe": self.recipe()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.device, self._recipe = state["device"], state["recipe"]
        self._scorer = None
        self._loading = threading.Lock()
