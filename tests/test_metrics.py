"""The pure IQA metrics against scipy on seeded inputs, ties included, and the logistic fit on a known curve."""

import math

import numpy as np
import pytest
from scipy import stats

from vq_reward.eval.metrics import correlations, fit_logistic, krcc, logistic_4, plcc, plcc_logistic, rankdata, srcc


def _seeded(seed: int, n: int, ties: bool):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.6 * x + rng.normal(size=n)
    if ties:  # rounded values give many ties in both
        x, y = np.round(x, 1), np.round(y)
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_against_scipy(seed, ties):
    x, y = _seeded(seed, 300, ties)
    assert srcc(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert plcc(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert krcc(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert rankdata(x).tolist() == stats.rankdata(x).tolist()


def test_krcc_chunking_does_not_change_the_result():
    x, y = _seeded(3, 257, ties=True)
    assert krcc(x, y, chunk=10) == pytest.approx(krcc(x, y, chunk=1000), abs=1e-12)


def test_logistic_fit_recovers_a_known_curve_and_linearises_plcc():
    x = np.linspace(-2, 2, 200)
    y = logistic_4(x, 4.5, 1.2, 0.3, 0.4)
    assert fit_logistic(x, y) == pytest.approx((4.5, 1.2, 0.3, 0.4), abs=1e-3)
    assert plcc(x, y) < 0.97  # the raw relation is non-linear (0.967) ...
    assert plcc_logistic(x, y) == pytest.approx(1.0, abs=1e-9)  # ... and the fitted one is exact


def test_undefined_values_are_nan_not_made_up():
    assert math.isnan(srcc([1, 1, 1], [1, 2, 3]))
    assert math.isnan(plcc([1.0], [2.0]))
    assert math.isnan(krcc([2, 2], [1, 3]))
    assert math.isnan(plcc_logistic([1, 2, 3, 4, 5], [1, 1, 1, 1, 1]))


def test_correlations_reports_all_figures():
    x, y = _seeded(4, 50, ties=False)
    report = correlations(x, y)
    assert set(report) == {"n", "srcc", "plcc", "plcc_logistic", "krcc"} and report["n"] == 50
    assert report["srcc"] == srcc(x, y)


@pytest.mark.parametrize(("pred", "target", "match"), [([1, 2], [1, 2, 3], "differ in length: 2 vs 3"),
                                                       ([1, float("nan")], [1, 2], "must be finite")])  # fmt: skip
def test_bad_inputs(pred, target, match):
    with pytest.raises(ValueError, match=match):
        srcc(pred, target)
