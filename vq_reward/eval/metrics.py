"""IQA agreement metrics as pure functions: SRCC, PLCC (raw and after the 4-parameter logistic fit), KRCC.

SRCC, PLCC and KRCC are thin wrappers over `scipy.stats` (`spearmanr`, `pearsonr`, `kendalltau` tau-b); the
logistic fit uses `scipy.optimize`. scipy is an optional dependency: `pip install 'vq-reward[eval]'`. Each
function takes predictions and ground truth of equal length and returns a float; an undefined value (fewer than
two items, or a constant input) is `nan`, never a made-up number, and no scipy warning reaches the caller.

    >>> srcc([1.0, 2.0, 3.0], [10.0, 30.0, 20.0])
    0.5
"""

import importlib
import math
import warnings
from collections.abc import Sequence

import numpy as np


ArrayLike = Sequence[float] | np.ndarray

# Bounds of the logistic fit, in units of the predictions' standard deviation (see `fit_logistic`).
LOGISTIC_MIN_SCALE = 0.25  # b4 >= 0.25 std: no near-step curves, which fit noise
LOGISTIC_MAX_SCALE = 100.0  # b4 <= 100 std: the curve is a straight line over the data (PLCC within ~1e-9)
LOGISTIC_CENTRE_MARGIN = 5.0  # b3 within 5 std beyond the range of the predictions (further out: an exponential tail)

_EXTRA = "pip install 'vq-reward[eval]'"


def plcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Pearson linear correlation of the raw values (`scipy.stats.pearsonr`).

    Example:
        >>> round(plcc([1, 2, 3], [2, 4, 7]), 4)
        0.9934
    """
    x, y = _pair(pred, target)
    return _statistic("pearsonr", x, y)


def srcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Spearman rank correlation (`scipy.stats.spearmanr`: Pearson of the average ranks, so ties are averaged).

    Example:
        >>> srcc([3, 1, 2], [30, 10, 20])
        1.0
    """
    x, y = _pair(pred, target)
    return _statistic("spearmanr", x, y)


def krcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Kendall rank correlation, tau-b (`scipy.stats.kendalltau`, which corrects for ties in either input).

    Example:
        >>> round(krcc([1, 2, 3, 4], [1, 3, 2, 4]), 4)
        0.6667
    """
    x, y = _pair(pred, target)
    return _statistic("kendalltau", x, y)


def logistic_4(x: ArrayLike, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The standard 4-parameter logistic of IQA papers (VQEG): `(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`.

    `b2` is the value far below `b3`, `b1` the value far above it; evaluated without overflow for any `x`.

    Example:
        >>> logistic_4(np.array([-1e9, 0.5, 1e9]), 5.0, 1.0, 0.5, 0.1).tolist()
        [1.0, 3.0, 5.0]
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.nan_to_num((x - b3) / abs(b4), nan=0.0)  # b4 == 0: a step, with 1/2 at x == b3
    return (b1 - b2) * _sigmoid(t) + b2


def fit_logistic(pred: ArrayLike, target: ArrayLike) -> tuple[float, float, float, float] | None:
    """Least-squares fit of an increasing `logistic_4` mapping predictions onto the ground truth: `(b1, b2, b3, b4)`.

    Increasing, the IQA convention for a higher-is-better score: `b1 >= b2` and `b4 > 0`, so no fit turns an
    inverted predictor into a good one. Scale-free: the fit runs on standardised predictions and targets (mean 0,
    std 1) and maps the parameters back, so scaling or shifting either input only scales or shifts them. Bounded,
    in units of the predictions' std: `LOGISTIC_MIN_SCALE <= b4 <= LOGISTIC_MAX_SCALE` (no near-step curves, which
    fit noise: a random predictor would gain ~0.05 of PLCC at N=200; at the top the curve is a straight line over
    the data) and `b3` within `LOGISTIC_CENTRE_MARGIN` of the predictions' range. Global within those bounds: for
    given (b3, b4) the best b1 >= b2 is linear least squares, so (b3, log b4) is searched on a grid and the best
    few grid maxima are polished with L-BFGS-B.

    Flat, `b1 == b2 == mean(target)`, when no increasing curve does better than that constant (a decreasing
    relation); `b3`, `b4` are then the predictions' mean and std, and carry no information. `None` when there is
    nothing to fit: fewer than 5 items, or constant predictions or targets.

    Example:
        >>> x = np.linspace(0, 1, 50)
        >>> b = fit_logistic(x, logistic_4(x, 5.0, 1.0, 0.5, 0.1))
        >>> [round(v, 3) for v in b]
        [5.0, 1.0, 0.5, 0.1]
        >>> b1, b2, _, _ = fit_logistic(x, 1.0 - x)  # decreasing: flat
        >>> b1 == b2
        True
    """
    x, y = _pair(pred, target)
    fit = _fit(x, y)
    return None if fit is None else fit[0]


def plcc_logistic(pred: ArrayLike, target: ArrayLike) -> float:
    """PLCC after mapping the predictions through the fitted increasing logistic (`fit_logistic`).

    `nan` when the fit is undefined (fewer than 5 items, constant predictions or targets) and when it is flat: no
    increasing curve explains any of the targets (an inverted predictor, say), and the PLCC of a constant is
    undefined. Otherwise positive, and never below the raw PLCC by more than ~1e-9 (a line is the curve's limit).

    Example:
        >>> x = np.linspace(0, 1, 20)
        >>> round(plcc_logistic(x, 1 / (1 + np.exp(-(x - 0.5) * 10))), 6)
        1.0
        >>> plcc_logistic(x, -x)
        nan
    """
    x, y = _pair(pred, target)
    fit = _fit(x, y)
    if fit is None or fit[1] is None:
        return math.nan
    return _statistic("pearsonr", fit[1], y)


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


def _scipy(module: str):
    try:
        return importlib.import_module(f"scipy.{module}")
    except ImportError as error:
        raise ImportError(f"the IQA metrics need scipy: {_EXTRA}") from error


def _statistic(name: str, x: np.ndarray, y: np.ndarray) -> float:
    """The correlation of `scipy.stats.<name>`, `nan` when undefined, scipy's warnings on degenerate data silenced."""
    stats = _scipy("stats")
    if len(x) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # constant input: scipy returns nan
        kwargs = {"variant": "b"} if name == "kendalltau" else {}
        value = float(getattr(stats, name)(x, y, **kwargs).statistic)
    return value if math.isfinite(value) else math.nan


def _sigmoid(t: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(t))  # never overflows
    return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _standardise(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """`(values - mean) / std`, mean, std, computed without overflow at any scale; std 0 for a constant."""
    mean = float(values.mean())
    deviation = values - mean
    peak = float(np.abs(deviation).max())
    if peak == 0 or not math.isfinite(peak):
        return deviation, mean, 0.0
    std = peak * float((deviation / peak).std())
    return deviation / std, mean, std


def _fit(x: np.ndarray, y: np.ndarray):
    """`((b1, b2, b3, b4), fitted values or None when flat)`, or `None` when there is nothing to fit.

    Variable projection in standardised units (u, v: mean 0, std 1): for a centre c and scale s the best offset
    and amplitude a >= 0 of `offset + a * sigmoid((u - c) / s)` are linear least squares, and the residual sum of
    squares is N * (1 - r^2), r = corr(sigmoid((u - c) / s), v), when r > 0 (else a = 0: flat). So the fit is
    the maximum of r over the (c, log s) box: a grid, then L-BFGS-B with the analytic gradient from its best peaks.
    """
    optimize, expit = _scipy("optimize"), _scipy("special").expit
    if len(x) < 5:
        return None
    u, x_mean, x_std = _standardise(x)
    v, y_mean, y_std = _standardise(y)
    if x_std == 0 or y_std == 0:
        return None
    lower, upper = float(u.min()) - LOGISTIC_CENTRE_MARGIN, float(u.max()) + LOGISTIC_CENTRE_MARGIN
    log_scales = (math.log(LOGISTIC_MIN_SCALE), math.log(LOGISTIC_MAX_SCALE))
    v_norm = math.sqrt(float(v @ v))

    # Grid over (log s, c), the centres spaced s / 2 (r varies in c on the scale of s; at most 201 of them, plus
    # the quantiles of u when far outliers stretch the range): it only has to put a start in the basin of the
    # global maximum, so the best few local maxima along c are each polished.
    candidates = []
    rows = max(1, 2**22 // len(u))  # bounds the memory of one block of sigmoids to 32 MiB
    for log_scale in np.linspace(*log_scales, 9):
        scale = math.exp(log_scale)
        count = int(math.ceil(2.0 * (upper - lower) / scale)) + 1
        centres = np.linspace(lower, upper, min(count, 201))
        if count > 201:
            centres = np.unique(np.r_[centres, np.quantile(u, np.linspace(0.0, 1.0, 51))])
        r = np.empty(len(centres))
        for i in range(0, len(centres), rows):
            g = expit((u[None, :] - centres[i : i + rows, None]) / scale)
            g -= g.mean(axis=1, keepdims=True)
            norm = np.sqrt(np.einsum("ij,ij->i", g, g))
            r[i : i + rows] = np.where(norm > 0, g @ v, -np.inf) / np.where(norm > 0, norm, 1.0) / v_norm
        padded = np.r_[-np.inf, r, -np.inf]
        for j in np.flatnonzero((r >= padded[:-2]) & (r >= padded[2:]) & (r > 0)):
            candidates.append((float(r[j]), float(centres[j]), float(log_scale)))
    if not candidates:  # no increasing curve beats the constant mean: flat
        return (y_mean, y_mean, x_mean, x_std), None

    def negative_r(p):  # -r and its gradient in (c, log s)
        scale = math.exp(p[1])
        g = expit((u - p[0]) / scale)
        dg_dc = -g * (1.0 - g) / scale
        g = g - g.mean()
        g_norm2 = float(g @ g)
        if g_norm2 <= 0:
            return 0.0, np.zeros(2)
        g_norm, gv = math.sqrt(g_norm2), float(g @ v)
        gradient = []
        for dg in (dg_dc, dg_dc * (u - p[0])):
            gradient.append(-(float(dg @ v) - gv * float(g @ dg) / g_norm2) / (g_norm * v_norm))
        return -gv / (g_norm * v_norm), np.array(gradient)

    best_r, best = -math.inf, (math.nan, math.nan)  # the first candidate's grid point beats -inf
    for grid_r, centre, log_scale in sorted(candidates, reverse=True)[:3]:
        result = optimize.minimize(
            negative_r, (centre, log_scale), jac=True, method="L-BFGS-B", bounds=[(lower, upper), log_scales],
            options={"ftol": 1e-13, "gtol": 1e-10, "maxiter": 200},
        )  # fmt: skip
        for value, point in ((-float(result.fun), result.x), (grid_r, (centre, log_scale))):
            if value > best_r:
                best_r, best = value, point
    centre, log_scale = float(best[0]), float(best[1])
    scale = math.exp(log_scale)
    g = expit((u - centre) / scale)
    g_mean = float(g.mean())
    amplitude = float((g - g_mean) @ v) / float((g - g_mean) @ (g - g_mean))
    offset = -amplitude * g_mean
    fitted = y_mean + y_std * (offset + amplitude * g)
    b2, b1 = y_mean + y_std * offset, y_mean + y_std * (offset + amplitude)
    return (b1, b2, x_mean + x_std * centre, x_std * scale), fitted
