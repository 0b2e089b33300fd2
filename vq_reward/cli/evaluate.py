"""`vq-reward eval`: SRCC / PLCC / KRCC of a scorer against MOS labels, per dataset, with a JSON report and a plot."""

import argparse
import sys
from pathlib import Path

from vq_reward.cli.data import add_label_arguments, read_labels
from vq_reward.cli.options import add_model_arguments, positive_int


def add_commands(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("eval", help="SRCC / PLCC / KRCC per dataset, JSON report and scatter plot")
    evaluate.add_argument("--labels", required=True, help="a JSONL data file, or a raw MOS label file (with --images)")
    evaluate.add_argument("--images", default=None, help="image folder of a raw label file")
    evaluate.add_argument("--dataset-name", default=None, help="name for a raw label file (default: its stem)")
    add_label_arguments(evaluate)
    add_model_arguments(evaluate)
    evaluate.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)")
    evaluate.add_argument("--output", default=None, help="JSON report (default: print only)")
    evaluate.add_argument("--plot", default=None, help="scatter plot PNG of predictions against MOS")
    evaluate.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from vq_reward.cli.options import load_scorer
    from vq_reward.eval.report import evaluate, format_report, save_scatter, write_report

    if args.labels.endswith(".jsonl"):
        from vq_reward.data.rows import read_jsonl

        rows = read_jsonl(args.labels, required=("image", "mos"))
    else:
        if args.images is None:
            print("a raw label file needs --images (the folder its image names are in)", file=sys.stderr)
            return 2
        name = args.dataset_name or Path(args.labels).stem
        labels = read_labels(args, args.images)
        rows = [{"image": str(Path(args.images) / r.image), "mos": r.mos, "dataset_name": name} for r in labels]
        if args.lower_is_better:
            rows = [{**row, "mos": -row["mos"]} for row in rows]
    scorer = load_scorer(args, args.batch_size)
    report = evaluate(scorer, rows, batch_size=args.batch_size, model_name=args.model)
    print(format_report(report))
    if args.output:
        write_report(report, args.output)
    if args.plot:
        save_scatter(report, args.plot)
    return 0
