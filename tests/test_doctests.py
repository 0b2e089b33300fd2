"""Every docstring example in the package runs, on the tiny smoke model, and shows what it says."""

import doctest
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vq_reward
from vq_reward.rewards.pixels import QwenImageLayout


MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(vq_reward.__path__, "vq_reward.") if not name.endswith("__main__")
)
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, scorer, tmp_path, monkeypatch):
    if name.startswith("vq_reward.train"):
        pytest.importorskip("trl")
    monkeypatch.chdir(REPO)  # examples may name files of the repository, e.g. examples/images
    names = {
        "scorer": scorer, "processor": scorer.processor, "prompt": scorer.readout_prompt(),
        "layout": QwenImageLayout.from_processor(scorer.processor), "tmp_path": tmp_path,
        "torch": torch, "np": np, "Image": Image,
    }  # fmt: skip
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, extraglobs=names, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"
