"""IQA agreement metrics as pure functions: SRCC, PLCC (raw and after the 4-parameter logistic fit), KRCC.

numpy only, except the logistic fit, which needs scipy (`pip install 'vq-reward[eval]'`). Each function takes
predictions and ground truth of equal length and returns a float; an undefined value (fewer than two items, or
a constant input) is `nan`, never a made-up number, as scipy does.

    >>> srcc([1.0, 2.0, 3.0], [10.0, 30.0, 20.0])
    0.5
"""

import math
import warnings
from collections.abc import Sequence

import numpy as np


ArrayLike = Sequence[float] | np.ndarray


def rankdata(values: ArrayLike) -> np.ndarray:
    """Ranks 1..N with ties given their average rank (scipy's "average" method).

    Example:
        >>> rankdata([10, 20, 20, 5]).tolist()
        [2.0, 3.5, 3.5, 1.0]
    """
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start of each run of equal values; every member of a run gets the run's mean rank.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def plcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Pearson linear correlation of the raw values.

    Example:
        >>> round(plcc([1, 2, 3], [2, 4, 7]), 4)
        0.9934
    """
    x, y = _pair(pred, target)
    if len(x) < 2:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denominator if denominator > 0 else math.nan


def srcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Spearman rank correlation (Pearson of average ranks, so ties count as scipy counts them).

    Example:
        >>> srcc([3, 1, 2], [30, 10, 20])
        1.0
    """
    x, y = _pair(pred, target)
    return plcc(rankdata(x), rankdata(y))


def krcc(pred: ArrayLike, target: ArrayLike, chunk: int = 1024) -> float:
    """Kendall rank correlation, tau-b (ties handled as scipy's default). O(N^2) pairs, computed in row chunks.

    Example:
        >>> krcc([1, 2, 3, 4], [1, 3, 2, 4])
        0.6666666666666666
    """
    x, y = _pair(pred, target)
    n = len(x)
    if n < 2:
        return math.nan
    score = ties_x = ties_y = 0.0
    for start in range(0, n, chunk):
        dx = np.sign(x[start : start + chunk, None] - x[None, :])
        dy = np.sign(y[start : start + chunk, None] - y[None, :])
        score += float((dx * dy).sum())
        ties_x += float((dx == 0).sum())
        ties_y += float((dy == 0).sum())
    # Every unordered pair was counted twice and every item once against itself (a tie in both).
    pairs = n * (n - 1) / 2.0
    tied_x, tied_y = (ties_x - n) / 2.0, (ties_y - n) / 2.0
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return (score / 2.0) / denominator if denominator > 0 else math.nan


def logistic_4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The standard 4-parameter logistic of IQA papers (VQEG): `(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`."""
    z = np.clip(-(x - b3) / max(abs(b4), 1e-12), -60.0, 60.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def fit_logistic(pred: ArrayLike, target: ArrayLike) -> tuple[float, float, float, float] | None:
    """Fit `logistic_4` mapping predictions onto the ground truth; `None` when the fit does not converge.

    Example:
        >>> x = np.linspace(0, 1, 50)
        >>> b = fit_logistic(x, logistic_4(x, 5.0, 1.0, 0.5, 0.1))
        >>> [round(v, 3) for v in b]
        [5.0, 1.0, 0.5, 0.1]
    """
    try:
        from scipy.optimize import curve_fit
    except ImportError as error:
        raise ImportError("the logistic fit of PLCC needs scipy: pip install 'vq-reward[eval]'") from error
    x, y = _pair(pred, target)
    start = [float(y.max()), float(y.min()), float(np.median(x)), float(x.std()) / 4.0 or 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # covariance warnings are irrelevant: only the fitted curve is used
        try:
            params, _ = curve_fit(logistic_4, x, y, p0=start, maxfev=20000)
        except RuntimeError:  # scipy's "optimal parameters not found"
            return None
    return tuple(float(p) for p in params)


def plcc_logistic(pred: ArrayLike, target: ArrayLike) -> float:
    """PLCC after mapping the predictions through the fitted 4-parameter logistic; `nan` if the fit fails.

    Example:
        >>> x = np.linspace(0, 1, 20)
        >>> round(plcc_logistic(x, 1 / (1 + np.exp(-(x - 0.5) * 10))), 6)
        1.0
    """
    x, y = _pair(pred, target)
    if len(x) < 5 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    params = fit_logistic(x, y)
    return math.nan if params is None else plcc(logistic_4(x, *params), y)


def correlations(pred: ArrayLike, target: ArrayLike) -> dict[str, float | int]:
    """All four figures at once: `{"n", "srcc", "plcc", "plcc_logistic", "krcc"}`.

    Example:
        >>> correlations([1, 2, 3], [1, 2, 3])["srcc"]
        1.0
    """
    x, y = _pair(pred, target)
    return {
        "n": len(x),
        "srcc": srcc(x, y),
        "plcc": plcc(x, y),
        "plcc_logistic": plcc_logistic(x, y),
        "krcc": krcc(x, y),
    }


def _pair(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"predictions and targets differ in length: {len(x)} vs {len(y)}.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("predictions and targets must be finite; drop the items that have no score first.")
    return x, y
