"""Evaluate a scorer against MOS labels: SRCC, PLCC (raw and logistic-fitted), KRCC per dataset; JSON and a plot.

Rows are dicts with `image` (path) and `mos`, optionally `dataset_name` (default "all"): the JSONL rows of
`vq-reward prepare-data`, or a raw label file read by `vq-reward eval`. Scores come from `score()` (one forward,
deterministic), so a report is reproducible. With `group_by`, each dataset is also split by a column of the rows
(e.g. `distortion_class`, the distortion kind `vq-reward distort` writes) and the figures are given per group.
Needs scipy for the metrics and matplotlib for the plot (`pip install 'vq-reward[eval]'`). PLCC(logistic) is after
an increasing logistic fit: `nan` (`null` in JSON, `-` in the table) when no increasing curve fits better than a
constant, as for an inverted predictor.

    >>> rows = [{"image": torch.rand(3, 56, 56), "mos": float(m), "dataset_name": "demo"} for m in range(1, 6)]
    >>> report = evaluate(scorer, rows)
    >>> sorted(report["datasets"]["demo"])
    ['krcc', 'n', 'plcc', 'plcc_logistic', 'srcc']
"""

import json
import math
from collections.abc import Sequence
from pathlib import Path

from vq_reward.eval.metrics import correlations


# The group of `vq-reward distort`'s clean images: they join every distortion kind's group (a kind alone has no
# clean end, and the clean images alone all share one label).
CLEAN_GROUP = "null"


def evaluate(
    scorer, rows: Sequence[dict], batch_size: int = 8, model_name: str | None = None, group_by: str | None = None
) -> dict:
    """Score every row's image and compute the correlations per dataset (see `report_from_scores`)."""
    if not rows:
        raise ValueError("nothing to evaluate: the label rows are empty.")
    scores = scorer.score([row["image"] for row in rows], batch_size=batch_size).tolist()
    return report_from_scores(rows, scores, model_name, group_by)


def report_from_scores(
    rows: Sequence[dict],
    scores: Sequence[float | None],
    model_name: str | None = None,
    group_by: str | None = None,
    shared_group: str | None = CLEAN_GROUP,
) -> dict:
    """The correlations per dataset of rows whose scores are known (`None`: an image that could not be scored).

    Args:
        group_by: a column every row has (e.g. "distortion_class"): the figures are also given per dataset and
            group of that column.
        shared_group: rows of this group (the clean images) join every other group instead of forming their own.

    Returns:
        `{"model", "datasets": {name: {"n", "srcc", "plcc", "plcc_logistic", "krcc"}}, "predictions": [...],
        "unscored": N}`, where each prediction is `{"image", "dataset_name", "mos", "score"}` (plus `"group"`);
        with `group_by` also `"group_by"` and `"groups": {dataset: {group: figures}}`. Undefined figures are `None`
        in JSON.
    """
    missing = [index for index, row in enumerate(rows) if group_by is not None and group_by not in row]
    if missing:
        raise ValueError(
            f"group_by={group_by!r}: {len(missing)} rows have no {group_by!r} field (the first is row "
            f"{missing[0] + 1}); name a field every row has, or group by nothing."
        )
    predictions = [
        {"image": row["image"], "dataset_name": row.get("dataset_name", "all"), "mos": row["mos"], "score": score}
        | ({"group": str(row[group_by])} if group_by is not None else {})
        for row, score in zip(rows, scores, strict=True)
        if score is not None
    ]
    if not predictions:
        raise ValueError("no image could be scored, so there is nothing to correlate; see the errors above.")
    datasets: dict[str, dict] = {}
    for name in sorted({p["dataset_name"] for p in predictions}):
        members = [p for p in predictions if p["dataset_name"] == name]
        datasets[name] = correlations([p["score"] for p in members], [p["mos"] for p in members])
    report = {"model": model_name, "datasets": datasets, "predictions": predictions,
              "unscored": len(rows) - len(predictions)}  # fmt: skip
    if group_by is not None:
        report["group_by"] = group_by
        report["groups"] = {name: _group_figures([p for p in predictions if p["dataset_name"] == name], shared_group)
                            for name in datasets}  # fmt: skip
    return report


def _group_figures(predictions: Sequence[dict], shared_group: str | None) -> dict[str, dict]:
    """The correlations of each group's predictions, the shared group's joined to every other group."""
    shared = [p for p in predictions if p["group"] == shared_group]
    names = sorted({p["group"] for p in predictions} - {shared_group}) or [str(shared_group)]
    figures = {}
    for name in names:
        members = [p for p in predictions if p["group"] == name] + (shared if name != shared_group else [])
        figures[name] = correlations([p["score"] for p in members], [p["mos"] for p in members])
    return figures


def format_report(report: dict) -> str:
    """A plain table of the per-dataset figures, then one of the per-group figures when the report has them.

    Example:
        >>> print(format_report({"datasets": {"A": {"n": 3, "srcc": 1.0, "plcc": 0.9, "plcc_logistic": None,
        ...                                          "krcc": 1.0}}}))
        dataset                       n    SRCC    PLCC  PLCC(logistic)    KRCC
        A                             3   1.000   0.900               -   1.000
    """
    table = _table("dataset", report["datasets"])
    if "groups" not in report:
        return table
    groups = {f"{name} / {group}": m for name, members in report["groups"].items() for group, m in members.items()}
    return f"{table}\n\nper {report['group_by']}:\n" + _table(f"dataset / {report['group_by']}", groups)


def _table(heading: str, figures: dict[str, dict]) -> str:
    lines = [f"{heading:<24} {'n':>6} {'SRCC':>7} {'PLCC':>7} {'PLCC(logistic)':>15} {'KRCC':>7}"]
    for name, m in figures.items():
        cells = [_cell(m[key], width) for key, width in (("srcc", 7), ("plcc", 7), ("plcc_logistic", 15), ("krcc", 7))]
        lines.append(f"{name:<24} {m['n']:>6} " + " ".join(cells))
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> Path:
    """Write the report as JSON (NaN becomes null, so any JSON reader can load it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(report), indent=2) + "\n")
    return path


def save_scatter(report: dict, path: str | Path) -> Path:
    """Scatter plot of score against MOS, one panel per dataset, with SRCC/PLCC in each title."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("the scatter plot needs matplotlib: pip install 'vq-reward[eval]'") from error
    names = list(report["datasets"])
    figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4.2), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        members = [p for p in report["predictions"] if p["dataset_name"] == name]
        axis.scatter([p["mos"] for p in members], [p["score"] for p in members], s=8, alpha=0.6)
        m = report["datasets"][name]
        axis.set_title(f"{name} (n={m['n']})\nSRCC {_cell(m['srcc'], 0)}  PLCC {_cell(m['plcc'], 0)}", fontsize=9)
        axis.set_xlabel("MOS")
        axis.set_ylabel("predicted score")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _cell(value: float | None, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}.3f}"


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
