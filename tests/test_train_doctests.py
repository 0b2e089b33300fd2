"""The examples in the docstrings of the retraining, metrics and distortion modules run and say what they show."""

import doctest
import importlib

import pytest


MODULES = ["vq_reward.metrics", "vq_reward.distortions", "vq_reward.evaluation", "vq_reward.qinsight"] + [
    f"vq_reward.train.{name}"
    for name in ("data", "labels", "rewards", "sampler", "dataset", "qinsight_rewards", "qinsight_data", "closed_set")
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
