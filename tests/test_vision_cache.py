"""The frozen-vision cache: the same image features as the tower computes, each distinct image computed once, a
bounded memory, and a tower that still trains refused."""

import copy

import pytest
import torch
from conftest import noise_image

from vq_reward import VisualQualityScorer
from vq_reward.train.vision_cache import cache_frozen_vision


@pytest.fixture
def frozen(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(tiny_path)
    scorer.model.model.visual.requires_grad_(False)
    return scorer


def _inputs(scorer, images):
    return scorer.processor.image_processor(images=images, return_tensors="pt")


def test_features_equal_the_towers_and_each_distinct_image_is_computed_once(frozen):
    a, b, c = noise_image(56, 56, 1), noise_image(84, 56, 2), noise_image(56, 56, 3)  # c: a's grid, other pixels
    batch = _inputs(frozen, [a, a, b, c, b, a])
    inner = frozen.model.model
    expected = inner.get_image_features(batch.pixel_values, batch.image_grid_thw).pooler_output
    cache = cache_frozen_vision(frozen.model, capacity=8)
    first = inner.get_image_features(batch.pixel_values, batch.image_grid_thw).pooler_output
    again = inner.get_image_features(batch.pixel_values, batch.image_grid_thw).pooler_output
    for want, got, got_again in zip(expected, first, again, strict=True):
        torch.testing.assert_close(got, want)
        assert torch.equal(got_again, got)
    assert (cache.computed, cache.reused) == (3, 9)


def test_scores_and_generation_read_the_cache(frozen):
    images = [noise_image(56, 56, 1), noise_image(56, 56, 1), noise_image(56, 56, 2)]
    plain = frozen.score(images)
    cache = cache_frozen_vision(frozen.model, capacity=4)
    torch.testing.assert_close(frozen.score(images), plain)
    frozen.generate(images[:1], max_new_tokens=2)
    assert (cache.computed, cache.reused) == (2, 2)


def test_the_oldest_images_are_forgotten_beyond_capacity(frozen):
    cache = cache_frozen_vision(frozen.model, capacity=2)
    inner = frozen.model.model
    for seed in (1, 2, 3, 1):  # 1 was evicted by 3
        batch = _inputs(frozen, [noise_image(56, 56, seed)])
        inner.get_image_features(batch.pixel_values, batch.image_grid_thw)
    assert (cache.computed, cache.reused, cache.size) == (4, 0, 2)


def test_a_copy_of_the_model_uses_its_own_tower_and_cache(frozen):
    cache = cache_frozen_vision(frozen.model, capacity=2)
    twin = copy.deepcopy(frozen.model)
    assert twin.model.get_image_features.__self__ is twin.model
    assert twin.model.vision_feature_cache is not cache


def test_a_tower_that_still_trains_is_refused(tiny_path):
    model = VisualQualityScorer.from_pretrained(tiny_path).model
    model.model.visual.requires_grad_(True)
    with pytest.raises(ValueError, match=r"vision tower still trains .*freeze_vision"):
        cache_frozen_vision(model, capacity=2)
