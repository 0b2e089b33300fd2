"""The taught smoke model: well-formed answers that follow image quality, and the number readout is the mean of the
answers it samples (the first digit alone is not)."""

import copy
import re

import numpy as np
import pytest
from scipy.stats import spearmanr
from test_readout import brute_force_number

from vq_reward import VisualQualityScorer
from vq_reward.data.distorted_sets import make_distorted_set


@pytest.fixture(scope="module")
def taught():
    return VisualQualityScorer.from_pretrained("taught")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Graded degradations of 112-pixel crops of the sample photos, which the taught model never saw."""
    root = tmp_path_factory.mktemp("held_out")
    rows = make_distorted_set("examples/images", root, crops_per_image=1, crop_size=112, seed=7)
    return [str(root / row.image) for row in rows], rows


def test_answers_are_well_formed_numbers(taught, held_out):
    paths, _ = held_out
    greedy = taught.generate(paths[:12], do_sample=False, max_new_tokens=12)
    assert all(re.fullmatch(r"<answer>[1-5]\.\d\d</answer>", rating.text) for rating in greedy), greedy[0].text
    details = taught.score_details(paths)
    assert details.digit_mass.min() > 0.9 and details.dot_mass.min() > 0.9
    assert (details.std > 0.2).all()  # a genuine spread of answers per image, not one number


def test_scores_rank_cleaner_above_more_degraded(taught, held_out):
    paths, rows = held_out
    scores = taught.score(paths).numpy()
    labels = np.array([row.mos for row in rows])
    kinds = np.array([row.distortion_class for row in rows])
    assert spearmanr(scores, labels)[0] >= 0.3
    for kind in ("noise", "compression", "blur", "darken"):
        chosen = (kinds == kind) | (kinds == "null")
        assert spearmanr(scores[chosen], labels[chosen])[0] >= 0.3, kind


def test_the_number_readout_is_exact_on_the_taught_model(taught, held_out):
    # Exact: run in float64, the one-forward readout equals the 401 teacher-forced answers up to the rounding of the
    # float32 scores it returns; run in float32, it is off by float32 rounding (1.2e-5 with transformers 5.25, for
    # 0.2's code too).
    image = taught.prepare(held_out[0][5])[0]
    mean, std = brute_force_number(taught, image)
    in_float64 = VisualQualityScorer(copy.deepcopy(taught.model).double(), taught.processor).score_details(image)
    assert in_float64.scores.item() == pytest.approx(mean, abs=1e-7)
    assert in_float64.std.item() == pytest.approx(std, abs=1e-7)
    details = taught.score_details(image)
    assert details.scores.item() == pytest.approx(mean, abs=5e-5)
    assert details.std.item() == pytest.approx(std, abs=5e-5)


@pytest.mark.slow
def test_the_number_is_the_mean_of_the_official_sampled_answers(taught, held_out):
    paths, _ = held_out
    chosen = [paths[i] for i in np.random.default_rng(0).choice(len(paths), 8, replace=False)]
    number = taught.score(chosen).numpy()
    first_digit = taught.score(chosen, readout="first-digit").numpy()
    first_digit_far = 0
    for index, path in enumerate(chosen):
        image = taught.prepare(path)[0]
        ratings = taught.generate([image] * 2000, batch_size=500, max_new_tokens=12)  # top_k 50, top_p 1, T 1
        answers = np.array([rating.score for rating in ratings if rating.score is not None])
        assert len(answers) > 1900
        error = answers.std() / np.sqrt(len(answers))
        assert abs(answers.mean() - number[index]) < 3 * error, (index, answers.mean(), number[index], error)
        first_digit_far += abs(answers.mean() - first_digit[index]) >= 3 * error
    assert first_digit_far >= 6  # the first digit alone sits far below the stated numbers
