"""Win-rate rewards: the formula against a direct computation, its properties on seeded inputs, and the
`mode="win-rate"` adapters (DDPO / Flow-GRPO and TRL) grouping by prompt, metadata group or column."""

import math

import numpy as np
import pytest
import torch

from vq_reward.rewards import QualityReward, TrlQualityReward
from vq_reward.rewards.win_rate import WIN_RATE_FLOOR, group_ids, win_rates


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def direct(scores, stds, groups, floor=WIN_RATE_FLOOR) -> list[float]:
    """The definition, one pair at a time."""
    rates = []
    for i in range(len(scores)):
        others = [j for j in range(len(scores)) if j != i and groups[j] == groups[i]]
        if not others:
            rates.append(0.5)
            continue
        pairs = [phi((scores[i] - scores[j]) / math.sqrt(stds[i] ** 2 + stds[j] ** 2 + floor**2)) for j in others]
        rates.append(sum(pairs) / len(pairs))
    return rates


@pytest.fixture
def seeded():
    rng = np.random.default_rng(0)
    scores, stds = rng.uniform(1, 5, 40), rng.uniform(0.0, 0.8, 40)
    groups = rng.integers(0, 6, 40).tolist()
    return scores, stds, groups


def test_matches_the_definition(seeded):
    scores, stds, groups = seeded
    np.testing.assert_allclose(win_rates(scores, stds, groups), direct(scores, stds, groups), rtol=0, atol=1e-12)


def test_bounded_and_half_on_average_per_group(seeded):
    scores, stds, groups = seeded
    rates = win_rates(scores, stds, groups)
    assert ((rates >= 0) & (rates <= 1)).all()
    for group in set(groups):
        members = [i for i, g in enumerate(groups) if g == group]
        assert rates[members].mean() == pytest.approx(0.5, abs=1e-12)


def test_rank_consistent_with_equal_stds_and_in_pairs(seeded):
    scores, _, groups = seeded
    rates = win_rates(scores, np.full(len(scores), 0.3), groups)
    for group in set(groups):
        members = [i for i, g in enumerate(groups) if g == group]
        assert np.argsort(rates[members]).tolist() == np.argsort(scores[members]).tolist()
    pair = win_rates([3.1, 3.0], [0.9, 0.01], ["a", "a"])  # any stds: in a pair the better score wins
    assert pair[0] > 0.5 > pair[1]


def test_an_uncertain_image_is_pulled_towards_one_half():
    certain, uncertain = win_rates([4.0, 3.0, 4.0, 3.0], [0.1, 0.1, 1.0, 1.0], ["a", "a", "b", "b"])[[0, 2]]
    assert certain > uncertain > 0.5


def test_tiny_gaps_stay_near_one_half_where_standardised_scores_are_plus_minus_one():
    """Without the group-std division (scale_rewards="none"), advantages = win rate - 0.5 stay this small."""
    scores = np.array([3.50, 3.51, 3.49, 3.50])
    rates = win_rates(scores, np.full(4, 0.4), ["p"] * 4)
    assert np.abs(rates - 0.5).max() < 0.02
    standardised = (scores - scores.mean()) / scores.std()
    assert np.abs(standardised).max() > 1.0  # what group normalisation of the raw scores makes of a 0.01 gap


def test_a_lone_image_gets_one_half_and_the_floor_keeps_certain_ties_smooth():
    assert win_rates([4.2], [0.3], ["x"]).tolist() == [0.5]
    near = win_rates([3.00, 3.01], [0.0, 0.0], ["a", "a"])
    assert 0.5 < near[1] < 0.6  # without the floor: exactly 1.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one score, std and group"):
        win_rates([1.0, 2.0], [0.1], ["a", "a"])
    with pytest.raises(ValueError, match="non-negative"):
        win_rates([1.0, 2.0], [0.1, -0.1], ["a", "a"])


def test_groups_come_from_metadata_then_prompts_then_the_batch():
    assert group_ids(2, ["x", "y"], [{"group": 1}, {"group": 1}]) == [1, 1]
    assert group_ids(2, ["x", "x"], [{}, {}]) == ["x", "x"]
    chat = [{"role": "user", "content": "a fox"}]
    assert group_ids(2, [chat, chat]) == [repr(chat), repr(chat)]
    assert group_ids(3) == [0, 0, 0]
    with pytest.raises(ValueError, match="3 prompts for 2 images"):
        group_ids(2, ["a", "b", "c"])


def images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def test_as_reward_win_rate_groups_by_prompt(scorer):
    batch = images(6)
    prompts = ["fox"] * 3 + ["cat"] * 3
    rewards, info = scorer.as_reward(mode="win-rate")(batch, prompts, [{}] * 6)
    details = scorer.score_details(batch, readout="number")
    expected = win_rates(details.scores, details.std, prompts)
    np.testing.assert_allclose(rewards, expected, atol=1e-6)
    assert rewards.dtype == np.float32
    np.testing.assert_allclose(info["scores"], details.scores.numpy(), atol=1e-6)
    assert rewards[:3].mean() == pytest.approx(0.5, abs=1e-6) and rewards[3:].mean() == pytest.approx(0.5, abs=1e-6)


def test_as_reward_win_rate_groups_by_metadata(scorer):
    batch = images(4, seed=1)
    metadata = [{"group": 0}, {"group": 0}, {"group": 1}, {"group": 1}]
    rewards, _ = QualityReward(scorer, mode="win-rate")(batch, ["same prompt"] * 4, metadata)
    details = scorer.score_details(batch, readout="number")
    np.testing.assert_allclose(rewards, win_rates(details.scores, details.std, [0, 0, 1, 1]), atol=1e-6)


def test_the_default_mode_is_still_the_score(scorer):
    batch = images(3, seed=2)
    rewards, _ = scorer.as_reward()(batch, ["a"] * 3, [{}] * 3)
    np.testing.assert_allclose(rewards, scorer.score(batch).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="mode must be one of"):
        scorer.as_reward(mode="winrate")


def test_trl_win_rate_groups_by_prompt_and_by_column(scorer):
    batch = list(images(4, seed=3))
    prompts = ["p1", "p1", "p2", "p2"]
    completions = [[{"role": "assistant", "content": "x"}]] * 4
    details = scorer.score_details(batch, readout="number")
    by_prompt = TrlQualityReward(scorer, mode="win-rate")(prompts=prompts, completions=completions, image=batch)
    np.testing.assert_allclose(by_prompt, win_rates(details.scores, details.std, prompts), atol=1e-6)
    groups = [0, 1, 0, 1]
    by_column = TrlQualityReward(scorer, mode="win-rate", group_key="group_id")(
        prompts=prompts, completions=completions, image=batch, group_id=groups
    )
    np.testing.assert_allclose(by_column, win_rates(details.scores, details.std, groups), atol=1e-6)


def test_trl_win_rate_leaves_rows_without_an_image_out(scorer):
    batch = list(images(3, seed=4))
    rows = [batch[0], None, batch[1], batch[2]]
    completions = [[{"role": "assistant", "content": "x"}]] * 4
    rewards = TrlQualityReward(scorer, mode="win-rate")(prompts=["p"] * 4, completions=completions, image=rows)
    assert rewards[1] is None
    assert sum(rewards[i] for i in (0, 2, 3)) == pytest.approx(1.5, abs=1e-6)


def test_a_pickled_reward_keeps_its_mode_and_views(scorer):
    import pickle

    reward = scorer.as_reward(mode="win-rate", views=2)
    copy = pickle.loads(pickle.dumps(reward))
    assert copy.mode == "win-rate" and copy.views.count == 2
    batch = images(4, seed=5)
    np.testing.assert_allclose(copy(batch, ["a", "a", "b", "b"])[0], reward(batch, ["a", "a", "b", "b"])[0], atol=1e-6)
