"""The data subcommands of `vq-reward`: synthetic degradations, training rows, Q-Insight rows, merging.

vq-reward distort examples/images data/synthetic --crops 4                 # graded degradations + labels.txt
vq-reward prepare-data --labels dmos.csv --format kadid10k --images kadid/images --dataset-name KADID-10K \\
    --output-dir data/ --official-kadid-split
vq-reward merge-data data/KADID-10K_train.jsonl data/KonIQ-10k_train.jsonl --output data/mix_train.jsonl
vq-reward prepare-degradation --labels data/synthetic/distortions.jsonl --dataset-name synthetic --output-dir data/
vq-reward prepare-comparison --distortions data/synthetic/distortions.jsonl --dataset-name synthetic --output-dir data/
"""

import argparse
import re
import shlex
import sys
from pathlib import Path

from vq_reward.cli.options import non_negative_int, positive_int, whole_number
from vq_reward.prompts import QINSIGHT_DEGRADATION_CLASSES


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `distort`, `prepare-data`, `prepare-degradation`, `prepare-comparison` and `merge-data`."""
    distort = commands.add_parser("distort", help="write graded synthetic degradations of a folder of clean images")
    distort.add_argument("source_dir", help="folder of clean photos")
    distort.add_argument("output_dir", help="folder to write the degraded images, labels.txt and distortions.jsonl")
    distort.add_argument(
        "--kinds",
        nargs="+",
        default=list(QINSIGHT_DEGRADATION_CLASSES),
        choices=QINSIGHT_DEGRADATION_CLASSES,
        help="distortion kinds (default: all)",
    )
    distort.add_argument("--levels", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="severities 1..5")
    distort.add_argument(
        "--crops", type=non_negative_int, default=0, help="random square crops per photo (0: whole photos)"
    )
    distort.add_argument("--crop-size", type=whole_number(28), default=112, help="side of the square crops (default "
                         "112; training needs at least 28 pixels a side)")  # fmt: skip
    distort.add_argument("--no-clean", action="store_true", help="leave out the clean images (MOS 5)")
    distort.add_argument("--seed", type=int, default=0, help="seed of the crop positions")
    distort.set_defaults(run=_distort)

    prepare = commands.add_parser("prepare-data", help="MOS label file -> normalised, split JSONL training data")
    prepare.add_argument("--labels", required=True, help="the dataset's MOS label file")
    prepare.add_argument("--images", required=True, help="folder the image names in the label file are relative to")
    prepare.add_argument("--dataset-name", required=True, type=_file_name_part, help="kept in every row and in the "
                         "file names; images of different datasets are never compared")  # fmt: skip
    prepare.add_argument("--output-dir", required=True, help="folder for NAME_train/val/test.jsonl")
    add_label_arguments(prepare)
    prepare.add_argument("--ratios", nargs=3, type=float, default=[0.6, 0.2, 0.2], help="train val test")
    prepare.add_argument("--seed", type=int, default=42, help="seed of the reference shuffle")
    prepare.add_argument("--no-split", action="store_true", help="write one NAME_all.jsonl (test-only datasets)")
    prepare.add_argument("--official-kadid-split", action="store_true", help="the official run's KADID-10K split")
    prepare.set_defaults(run=_prepare)

    degradation = commands.add_parser(
        "prepare-degradation", help="Q-Insight degradation rows (image, class, severity) -> split JSONL"
    )
    degradation.add_argument("--labels", required=True, help="JSON list or JSONL of {image, distortion_class, "
                             "severity[, reference]}: `distort`'s distortions.jsonl, or official metas")  # fmt: skip
    degradation.add_argument("--images", default=None, help="folder the image names are relative to (default: the "
                             "labels file's folder)")  # fmt: skip
    degradation.add_argument("--reference-pattern", type=_reference_pattern, default=None, help="regex whose first "
                             "group in the image name is the content, for labels without `reference` (default: the "
                             "image)")  # fmt: skip
    _add_split_arguments(degradation)
    degradation.set_defaults(run=_prepare_degradation)

    comparison = commands.add_parser(
        "prepare-comparison", help="Q-Insight comparison rows (reference, A, B, result) -> split JSONL"
    )
    source = comparison.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", help="official pairs: JSON list or JSONL of {ref_image, ImageA, ImageB, result}")
    source.add_argument("--distortions", help="distortions.jsonl of `distort`: pairs of distorted versions of one "
                        "clean crop, the clean crop as reference, the less degraded one better")  # fmt: skip
    comparison.add_argument("--images", default=None, help="folder the image names are relative to (default: the "
                            "labels file's folder)")  # fmt: skip
    comparison.add_argument("--pairs-per-reference", type=positive_int, default=8, help="with --distortions")
    comparison.add_argument("--similar-fraction", type=float, default=0.2, help="with --distortions: share of "
                            "equal-severity 'Similar' pairs (official data: 0.2)")  # fmt: skip
    _add_split_arguments(comparison)
    comparison.set_defaults(run=_prepare_comparison)

    merge = commands.add_parser("merge-data", help="concatenate JSONL data files, keeping each row's dataset_name")
    merge.add_argument("files", nargs="+", help="JSONL data files to concatenate")
    merge.add_argument("--output", required=True, help="the merged JSONL file (ids renumbered)")
    merge.set_defaults(run=_merge)


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    from vq_reward.data.labels import LAYOUTS

    parser.add_argument("--format", default="plain", choices=sorted(LAYOUTS), help="label file layout (see "
                        "vq_reward/data/labels.py); plain = 'image mos [std]'")  # fmt: skip
    parser.add_argument("--reference-pattern", type=_reference_pattern, default=None, help="regex whose first group, "
                        "searched in the image name, is the reference image, e.g. '^(I\\d+)_' for KADID "
                        "names")  # fmt: skip
    parser.add_argument("--lower-is-better", action="store_true", help="the file holds DMOS: flip so 5 is best")
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip and report bad lines instead of failing")


def _file_name_part(text: str) -> str:
    """An argparse type: text that can name files inside the output folder (no folder separators, not empty)."""
    if not text.strip() or re.search(r"[/\\\x00]", text):
        raise argparse.ArgumentTypeError(f"{text!r} cannot be part of a file name; use a plain name such as KADID-10K")
    return text


def _reference_pattern(text: str) -> str:
    """An argparse type: a regular expression with a group (the reference's part of the image name)."""
    try:
        groups = re.compile(text).groups
    except re.error as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression ({error})") from None
    if not groups:
        raise argparse.ArgumentTypeError(f"{text!r} has no (group) for the reference, e.g. '^(.+)__'")
    return text


def _add_split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-name", required=True, type=_file_name_part, help="kept in every row and in the "
                        "file names")  # fmt: skip
    parser.add_argument("--output-dir", required=True, help="folder for NAME_TASK_train/val/test.jsonl")
    parser.add_argument("--ratios", nargs=3, type=float, default=[0.6, 0.2, 0.2], help="train val test, by content")
    parser.add_argument("--seed", type=int, default=42, help="seed of the content shuffle (and of the pairs)")
    parser.add_argument("--no-split", action="store_true", help="write one NAME_TASK_all.jsonl")


def _write_splits(args: argparse.Namespace, rows: list[dict], task: str) -> None:
    from vq_reward.data import rows as data

    if not args.no_split:
        split = data.split_references([row["reference"] for row in rows], tuple(args.ratios), args.seed)
        for row in rows:
            row["split"] = split[row["reference"]]
    write_splits(rows, args.output_dir, f"{args.dataset_name}_{task}", ("all",) if args.no_split else data.SPLITS)


def write_splits(rows: list[dict], output_dir: str, stem: str, splits: tuple[str, ...]) -> None:
    """Write `{stem}_{split}.jsonl` for every split, all or none, refusing a split that would be empty."""
    from vq_reward.data.jsonl import write_jsonl_files

    chosen = {name: [row for row in rows if row["split"] == name] for name in splits}
    empty = [name for name, members in chosen.items() if not members]
    if empty:
        references = len({row.get("reference") for row in rows})
        raise ValueError(
            f"the {', '.join(empty)} split would be empty ({len(rows)} rows, {references} references); nothing was "
            "written. Use more data, other --ratios, or --no-split for a test-only dataset."
        )
    paths = write_jsonl_files({Path(output_dir) / f"{stem}_{name}.jsonl": members for name, members in chosen.items()})
    for path, members in zip(paths, chosen.values(), strict=True):
        print(f"{path}: {len(members)} rows")


def _prepare_degradation(args: argparse.Namespace) -> int:
    from vq_reward.data.qinsight_rows import degradation_rows, read_label_objects

    labels = read_label_objects(args.labels)
    images = args.images or str(Path(args.labels).parent)
    rows = degradation_rows(labels, images, args.dataset_name, reference_pattern=args.reference_pattern)
    _write_splits(args, rows, "degradation")
    return 0


def _prepare_comparison(args: argparse.Namespace) -> int:
    from vq_reward.data.qinsight_rows import comparison_rows, read_label_objects, synthetic_comparisons

    source = args.pairs or args.distortions
    labels = read_label_objects(source)
    images = args.images or str(Path(source).parent)
    if args.pairs:
        rows = comparison_rows(labels, images, args.dataset_name)
    else:
        rows = synthetic_comparisons(labels, images, args.dataset_name, pairs_per_reference=args.pairs_per_reference,
                                     similar_fraction=args.similar_fraction, seed=args.seed)  # fmt: skip
    _write_splits(args, rows, "comparison")
    return 0


def _distort(args: argparse.Namespace) -> int:
    from vq_reward.data.distorted_sets import make_distorted_set

    rows = make_distorted_set(
        args.source_dir,
        args.output_dir,
        kinds=tuple(args.kinds),
        levels=tuple(args.levels),
        include_clean=not args.no_clean,
        crops_per_image=args.crops,
        crop_size=args.crop_size,
        seed=args.seed,
    )
    # The hint writes the training rows beside the images' folder: `distort photos data/synthetic` -> data/.
    images = Path(args.output_dir)
    command = ["vq-reward", "prepare-data", "--labels", str(images / "labels.txt"), "--images", str(images),
               "--reference-pattern", "^(.+)__", "--dataset-name", "synthetic",
               "--output-dir", str(images.parent)]  # fmt: skip
    print(f"{len(rows)} images, labels in {images / 'labels.txt'}. Next:\n  {shlex.join(command)}")
    return 0


def read_labels(args: argparse.Namespace, images: str):
    from dataclasses import replace

    from vq_reward.data.labels import LAYOUTS, read_label_file

    layout = LAYOUTS[args.format]
    if args.reference_pattern:
        layout = replace(layout, reference=None, reference_pattern=args.reference_pattern)
    rows, skipped = read_label_file(args.labels, layout, images_dir=images, skip_bad_rows=args.skip_bad_rows)
    for message in skipped:
        print(f"skipped {message}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} lines skipped, {len(rows)} kept", file=sys.stderr)
    return rows


def _prepare(args: argparse.Namespace) -> int:
    from vq_reward.data import rows as data

    labels = read_labels(args, args.images)
    references = [row.reference for row in labels]
    if args.no_split:
        split = None
    elif args.official_kadid_split:
        split = data.fixed_split(references, **data.KADID10K_OFFICIAL_SPLIT)
    else:
        split = data.split_references(references, tuple(args.ratios), args.seed)
    rows = data.build_rows(labels, args.images, args.dataset_name, lower_is_better=args.lower_is_better, split=split)
    write_splits(rows, args.output_dir, args.dataset_name, ("all",) if split is None else data.SPLITS)
    return 0


def _merge(args: argparse.Namespace) -> int:
    from vq_reward.data.rows import DataSummary, merge_rows, read_jsonl, write_jsonl

    rows = merge_rows([read_jsonl(path) for path in args.files])
    write_jsonl(rows, args.output)
    print(f"{args.output}: {len(rows)} rows\n{DataSummary.of(rows)}")
    return 0
