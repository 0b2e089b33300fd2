"""The RL2R rewards against hand-computed cases: the official formula, ties, zero variance, two images, parse
failures (both policies), datasets kept apart, task routing, grouping checks, the format reward, pickling."""

import math
import pickle

import pytest
import torch

from vq_reward.train.reward_registry import make_reward_funcs
from vq_reward.train.vqr1_rewards import AnswerFormatReward, FidelityRankReward, fidelity_reward


EPS = 1e-6


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def reference_reward(pred: list[list[float]], mos: list[float]) -> list[list[float]]:
    """The official loop, written out scalar by scalar (sample variance, mean over the B-1 other images)."""
    means = [sum(p) / len(p) for p in pred]
    variances = [sum((v - m) ** 2 for v in p) / (len(p) - 1) for p, m in zip(pred, means, strict=True)]
    out = []
    for i, rollouts in enumerate(pred):
        row = []
        for q in rollouts:
            total = 0.0
            for z in range(len(pred)):
                if z == i:
                    continue
                p = phi((q - means[z]) / math.sqrt(variances[i] + variances[z] + EPS))
                g = 1.0 if mos[i] > mos[z] else 0.0 if mos[i] < mos[z] else 0.5
                total += math.sqrt(p * g + EPS) + math.sqrt((1 - p) * (1 - g) + EPS)
            row.append(total / (len(pred) - 1))
        out.append(row)
    return out


def test_two_images_by_hand():
    # Image 1: rollouts 4 and 2 (mean 3, sample variance 2); image 2: 3 and 3 (variance 0); image 1 is better.
    r = fidelity_reward(torch.tensor([[4.0, 2.0], [3.0, 3.0]]), torch.tensor([5.0, 1.0]))
    assert r[0, 0].item() == pytest.approx(math.sqrt(phi(1 / math.sqrt(2 + EPS)) + EPS) + math.sqrt(EPS), abs=1e-12)
    assert r[0, 0].item() == pytest.approx(0.872924, abs=1e-6)
    assert r[0, 1].item() == pytest.approx(0.490644, abs=1e-6)
    assert r[1].tolist() == pytest.approx([math.sqrt(EPS) + math.sqrt(0.5 + EPS)] * 2, abs=1e-12)  # p = 0.5, g = 0


def test_official_zero_variance_cases():
    # Equal constant predictions, different MOS: p = 0.5 everywhere -> 0.708 for every rollout, no advantage.
    r = fidelity_reward(torch.full((2, 6), 3.5), torch.tensor([4.0, 2.0]))
    assert r.flatten().tolist() == pytest.approx([0.708108] * 12, abs=1e-6)
    # 3.5 vs 3.4, right order, zero variance: a step function -> the maximum sqrt(1 + eps) + sqrt(eps) = 1.0010.
    r = fidelity_reward(torch.tensor([[3.5] * 6, [3.4] * 6]), torch.tensor([4.0, 2.0]))
    assert r.flatten().tolist() == pytest.approx([math.sqrt(1 + EPS) + math.sqrt(EPS)] * 12, abs=1e-9)
    # The wrong order is the minimum, about 0.002.
    r = fidelity_reward(torch.tensor([[3.4] * 6, [3.5] * 6]), torch.tensor([4.0, 2.0]))
    assert r.max().item() == pytest.approx(2 * math.sqrt(EPS), abs=1e-6)


def test_ties_give_half_credit():
    r = fidelity_reward(torch.full((2, 3), 2.0), torch.tensor([3.0, 3.0]))
    assert r.flatten().tolist() == pytest.approx([2 * math.sqrt(0.25 + EPS)] * 6, abs=1e-12)  # ~1.000002


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_scalar_loop_on_random_batches(seed):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand(5, 6, generator=generator, dtype=torch.float64) * 4 + 1
    mos = torch.tensor([3.0, 1.5, 3.0, 4.2, 2.2])  # one tie
    expected = [v for row in reference_reward(pred.tolist(), mos.tolist()) for v in row]
    assert fidelity_reward(pred, mos).flatten().tolist() == pytest.approx(expected, abs=1e-12)


def test_excluded_failures_leave_the_statistics_and_get_nothing():
    pred = torch.tensor([[4.0, 0.0, 2.0], [3.0, 3.0, 3.0]])
    valid = torch.tensor([[True, False, True], [True, True, True]])
    r = fidelity_reward(pred, torch.tensor([5.0, 1.0]), valid=valid)
    expected = fidelity_reward(torch.tensor([[4.0, 2.0], [3.0, 3.0]]), torch.tensor([5.0, 1.0]))
    assert r[0].tolist() == pytest.approx([expected[0, 0].item(), 0.0, expected[0, 1].item()], abs=1e-12)
    assert r[1].tolist() == pytest.approx([expected[1, 0].item()] * 3, abs=1e-12)


def test_an_image_without_partners_gets_nan():
    r = fidelity_reward(
        torch.tensor([[4.0, 2.0], [0.0, 0.0]]), torch.tensor([5.0, 1.0]), valid=torch.tensor([[1, 1], [0, 0]])
    )
    assert math.isnan(r[0, 0].item()) and r[1].tolist() == [0.0, 0.0]
    assert math.isnan(fidelity_reward(torch.tensor([[4.0, 2.0]]), torch.tensor([5.0])).sum().item())


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"expected pred \[B, G\] and mos \[B\]"):
        fidelity_reward(torch.zeros(2, 3), torch.zeros(3))


def _answers(*scores) -> list[str]:
    return [f"<think>fine</think><answer>{s}</answer>" for s in scores]


def test_reward_class_parses_and_matches_the_pure_function():
    reward = FidelityRankReward(num_generations=2)
    out = reward(completions=_answers(4, 2, 3, 3), mos=[5.0, 5.0, 1.0, 1.0])
    assert out == pytest.approx(
        fidelity_reward(torch.tensor([[4.0, 2.0], [3.0, 3.0]]), torch.tensor([5.0, 1.0])).flatten().tolist()
    )
    assert reward.last_call["parse_failures"] == 0 and reward.last_call["local_rollouts"] == 4


def test_parse_failure_policies():
    completions = _answers(4) + ["<answer>none</answer>"] + _answers(3, 3)
    excluded = FidelityRankReward(num_generations=2)(completions=completions, mos=[5.0, 5.0, 1.0, 1.0])
    assert excluded[1] == 0.0 and excluded[0] > 0.9  # 4 vs image 2's 3 with zero variance: right order
    random_policy = FidelityRankReward(num_generations=2, parse_failure="random", seed=3)
    first = random_policy(completions=completions, mos=[5.0, 5.0, 1.0, 1.0])
    replay = FidelityRankReward(num_generations=2, parse_failure="random", seed=3)(
        completions=completions, mos=[5.0, 5.0, 1.0, 1.0]
    )
    assert first == replay and first[1] > 0.0  # seeded, and the substitute score takes part like a real one
    # The official fallback reads the first number of an untagged completion ("1" of "between 1 and 5").
    untagged = FidelityRankReward(num_generations=2, fallback_to_text=True)
    assert untagged._parse("a score between 1 and 5") == 1.0
    assert FidelityRankReward(num_generations=2)._parse("a score between 1 and 5") is None


def test_datasets_are_never_compared_and_lonely_images_get_none():
    reward = FidelityRankReward(num_generations=2)
    # A: two images; B: one image -> B has no partner.
    out = reward(
        completions=_answers(4, 2, 3, 3, 5, 5),
        mos=[5.0, 5.0, 1.0, 1.0, 1.0, 1.0],
        dataset_name=["A", "A", "A", "A", "B", "B"],
    )
    assert reward.last_call["local_datasets"] == ["A", "B"]
    alone = reward(completions=_answers(4, 2, 3, 3), mos=[5.0, 5.0, 1.0, 1.0])
    assert out[:4] == pytest.approx(alone) and out[4:] == [None, None]


def test_other_tasks_are_left_to_their_own_rewards():
    reward = FidelityRankReward(num_generations=2)
    out = reward(completions=_answers(4, 2, 3, 3) + ["<answer>blur</answer>"] * 2, mos=[5.0, 5.0, 1.0, 1.0, 0.0, 0.0],
                 task=["score"] * 4 + ["degradation"] * 2)  # fmt: skip
    assert out[4:] == [None, None] and out[:4] == pytest.approx(
        reward(completions=_answers(4, 2, 3, 3), mos=[5.0, 5.0, 1.0, 1.0])
    )


def test_broken_grouping_is_refused():
    reward = FidelityRankReward(num_generations=2)
    with pytest.raises(ValueError, match="not whole groups of num_generations=2"):
        reward(completions=_answers(1, 2, 3), mos=[1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="should be the 2 rollouts of one image"):
        reward(completions=_answers(1, 2, 3, 4), mos=[1.0, 2.0, 2.0, 2.0])


def test_answer_prefix_completions():
    reward = FidelityRankReward(num_generations=2, answer_prefix="<answer>")
    assert reward(completions=["4", "2", "3", "3"], mos=[5.0, 5.0, 1.0, 1.0]) == pytest.approx(
        FidelityRankReward(num_generations=2)(completions=_answers(4, 2, 3, 3), mos=[5.0, 5.0, 1.0, 1.0])
    )


def test_batch_srcc_is_logged_through_log_metric():
    logged = {}
    reward = FidelityRankReward(num_generations=2)
    reward(completions=_answers(4, 5, 3, 3, 1, 2), mos=[5.0, 5.0, 3.0, 3.0, 1.0, 1.0], log_metric=logged.__setitem__)
    assert logged["fidelity/batch_srcc"] == pytest.approx(1.0)
    assert logged["fidelity/rollouts_in_scope"] == 6.0 and logged["fidelity/parse_failure_rate"] == 0.0


def test_format_reward_is_the_official_full_match():
    reward = AnswerFormatReward()
    cases = {
        "<think>a</think><answer>3</answer>": 1.0,
        "<think>a\nb</think>\n <answer>3.5</answer>": 1.0,
        "x<think>a</think><answer>3</answer>": 0.0,  # nothing may precede <think>
        "<think>a</think><answer>3</answer> ok": 0.0,  # nor follow </answer>
        "<answer>3</answer>": 0.0,
    }
    assert reward(completions=[[{"role": "assistant", "content": c}] for c in cases]) == list(cases.values())
    assert AnswerFormatReward(thinking=False, answer_prefix="<answer>")(completions=["3</answer>", "3"]) == [1.0, 0.0]


def test_rewards_pickle_and_have_names():
    options = {"fidelity_scope": "global", "parse_failure": "random", "parse_fallback_to_text": True}
    options |= {"answer_prefix": "", "fidelity_eps": EPS, "thinking": True, "seed": 0}
    funcs = make_reward_funcs(["fidelity", "format"], 6, **options)
    copies = [pickle.loads(pickle.dumps(f)) for f in funcs]
    assert [f.__name__ for f in copies] == ["fidelity", "format"] and copies[0].scope == "global"
    with pytest.raises(ValueError, match="unknown reward"):
        make_reward_funcs(["accuracy"], 6)
