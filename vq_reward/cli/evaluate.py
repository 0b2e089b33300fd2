"""`vq-reward eval`: SRCC / PLCC / KRCC of a scorer against MOS labels, per dataset, with a JSON report and a plot."""

import argparse
import os
import sys
from pathlib import Path

from vq_reward.cli.data import add_label_arguments, read_labels
from vq_reward.cli.options import add_model_arguments, positive_int


DISTORTION_COLUMN = "distortion_class"  # the distortion kind in `vq-reward distort`'s distortions.jsonl


def add_commands(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("eval", help="SRCC / PLCC / KRCC per dataset, JSON report and scatter plot")
    evaluate.add_argument("--labels", required=True, help="a JSONL data file, or a raw MOS label file (with --images)")
    evaluate.add_argument("--images", default=None, help="image folder of a raw label file")
    evaluate.add_argument("--dataset-name", default=None, help="name for a raw label file (default: its stem)")
    add_label_arguments(evaluate)
    add_model_arguments(evaluate)
    evaluate.add_argument("--group-by", default=None, metavar="COLUMN",
                          help="also report the figures per value of this JSONL field (e.g. kind); default: the "
                          "distortion kind (distortion_class) when the labels carry it, as `vq-reward distort`'s "
                          "distortions.jsonl does (a raw labels.txt gets it from distortions.jsonl beside the "
                          "images)")  # fmt: skip
    evaluate.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)")
    evaluate.add_argument("--output", default=None, help="JSON report (default: print only)")
    evaluate.add_argument("--plot", default=None, help="scatter plot PNG of predictions against MOS")
    evaluate.add_argument("--scores", default=None,
                          help="resumable results file of the scores (default: next to --output, else "
                          "LABELS.scores.jsonl); a rerun reuses every score already in it")  # fmt: skip
    evaluate.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import importlib.util

    missing = [
        name for name in ("scipy",) + (("matplotlib",) if args.plot else ()) if importlib.util.find_spec(name) is None
    ]
    if missing:  # checked before any image is scored
        raise ImportError(f"vq-reward eval needs {' and '.join(missing)}: pip install 'vq-reward[eval]'")
    rows = _label_rows(args)
    group_by = _group_column(args, rows)
    scores_path = Path(args.scores) if args.scores else _default_scores_path(args)
    _check_outputs(args, scores_path)

    from vq_reward.batch.job import score_files
    from vq_reward.cli.options import load_scorer
    from vq_reward.eval.report import format_report, report_from_scores, save_scatter, write_report
    from vq_reward.hub import canonical_name

    scorer = load_scorer(args, args.batch_size)
    scores_path.parent.mkdir(parents=True, exist_ok=True)
    summary = score_files(scorer, [row["image"] for row in rows], scores_path, model_name=canonical_name(args.model))
    print(f"scores in {scores_path}: {summary.scored} new, {summary.skipped} reused, {summary.errors} failed",
          file=sys.stderr)  # fmt: skip
    for reason in summary.first_errors:
        print(f"  error: {reason}", file=sys.stderr)
    scores = [summary.scores.get(os.path.realpath(row["image"])) for row in rows]
    report = report_from_scores(rows, scores, model_name=args.model, group_by=group_by)
    print(format_report(report))
    if args.output:
        write_report(report, args.output)
    if args.plot:
        save_scatter(report, args.plot)
    return 0


def _check_outputs(args: argparse.Namespace, scores_path: Path) -> None:
    """Every file this run writes, checked before the model loads; missing folders are created when written."""
    from vq_reward.batch.files import check_output
    from vq_reward.batch.results_file import ResultsFile

    for path in (args.output, args.plot):
        if path:
            check_output(path, make_folders=True)
    ResultsFile.check(scores_path, make_folders=True)


def _label_rows(args: argparse.Namespace) -> list[dict]:
    if args.labels.endswith(".jsonl"):
        from vq_reward.data.rows import read_jsonl

        return read_jsonl(args.labels, required=("image", "mos"))
    if args.images is None:
        raise ValueError("a raw label file needs --images (the folder its image names are in)")
    name = args.dataset_name or Path(args.labels).stem
    labels = read_labels(args, args.images)
    sign = -1.0 if args.lower_is_better else 1.0
    kinds = _distortion_kinds(Path(args.images))
    return [{"image": str(Path(args.images) / r.image), "mos": sign * r.mos, "dataset_name": name}
            | ({DISTORTION_COLUMN: kinds[r.image]} if r.image in kinds else {}) for r in labels]  # fmt: skip


def _distortion_kinds(images: Path) -> dict[str, str]:
    """Image name -> distortion kind, from the distortions.jsonl `vq-reward distort` writes beside its images."""
    path = images / "distortions.jsonl"
    if not path.is_file():
        return {}
    from vq_reward.data.rows import read_jsonl

    return {Path(row["image"]).name: row[DISTORTION_COLUMN] for row in read_jsonl(path, required=("image",))
            if DISTORTION_COLUMN in row}  # fmt: skip


def _group_column(args: argparse.Namespace, rows: list[dict]) -> str | None:
    """--group-by (checked against the rows before anything is scored), else the distortion kind when every row
    carries one, else no grouping."""
    if args.group_by:
        missing = [index for index, row in enumerate(rows) if args.group_by not in row]
        if missing:
            raise ValueError(
                f"--group-by {args.group_by}: {len(missing)} label rows have no {args.group_by!r} field (the first "
                f"is row {missing[0] + 1} of {args.labels}); name a field every row has, or leave --group-by out."
            )
        return args.group_by
    return DISTORTION_COLUMN if all(DISTORTION_COLUMN in row for row in rows) else None


def _default_scores_path(args: argparse.Namespace) -> Path:
    base = Path(args.output) if args.output else Path(args.labels)
    return base.with_name(base.stem + ".scores.jsonl")
