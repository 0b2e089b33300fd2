"""Read MOS label files as IQA datasets ship them, with errors that name the file and line.

A label file is a table: comma-separated (quoted fields allowed) or whitespace-separated, with or without a
header line. Columns are picked by position (0-based) or, with a header, by name. Presets give the layouts of
the common datasets; `plain` ("image mos [std]", no header) is also what `vq-reward distort` writes and what the
official VisualQuality-R1 test label files use.

    >>> layout = LAYOUTS["kadid10k"]
    >>> layout.image, layout.mos, layout.reference
    ('dist_img', 'dmos', 'ref_img')
"""

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


@dataclass(frozen=True)
class Layout:
    """Where the fields of a label file are.

    Attributes:
        image: column of the image file name (index or header name).
        mos: column of the mean opinion score.
        std: column of its standard deviation, or `None`.
        reference: column naming the pristine reference image, or `None`.
        reference_pattern: a regex whose first group, searched in the image name, is the reference (used when
            `reference` is `None`); with neither, every image is its own reference (authentic-distortion datasets).
        header: the first line is a header (required when any column is given by name).
    """

    image: int | str = 0
    mos: int | str = 1
    std: int | str | None = 2
    reference: int | str | None = None
    reference_pattern: str | None = None
    header: bool = False


LAYOUTS: dict[str, Layout] = {
    # "image mos [std]": the official test_data_label files (BID, LIVEC, KonIQ, SPAQ, AGIQA-3K), `vq-reward distort`.
    "plain": Layout(),
    # "ref dis mos": the official Deblur / SRIQA-Bench / dehaze label files.
    "ref-dis-mos": Layout(image=1, mos=2, std=None, reference=0),
    # KADID-10K dmos.csv: dist_img,ref_img,dmos,var ("dmos" is higher-is-better despite the name).
    "kadid10k": Layout(image="dist_img", mos="dmos", std=None, reference="ref_img", header=True),
    # TID2013 mos_with_names.txt: "mos name", references i01..i25 in the name.
    "tid2013": Layout(image=1, mos=0, std=None, reference_pattern=r"^[iI](\d+)_"),
    # KonIQ-10k koniq10k_scores_and_distributions.csv (MOS on 1..5 with SD).
    "koniq10k": Layout(image="image_name", mos="MOS", std="SD", header=True),
}


@dataclass(frozen=True)
class LabelRow:
    """One labelled image. `line` is the 1-based line number in the label file, for messages."""

    image: str
    mos: float
    std: float | None
    reference: str
    line: int


class LabelFileError(ValueError):
    """A label file that cannot be read as asked. The message names the file, the line and the fix."""


class _Columns(NamedTuple):
    """A layout's columns as indices into a line's fields."""

    image: int
    mos: int
    std: int | None
    reference: int | None


def read_label_file(
    path: str | Path,
    layout: Layout = LAYOUTS["plain"],
    *,
    images_dir: str | Path | None = None,
    skip_bad_rows: bool = False,
) -> tuple[list[LabelRow], list[str]]:
    """Read `path` into rows, checking every line.

    Besides malformed lines, non-numeric or non-finite MOS and missing images, the file as a whole is checked: an
    image listed twice with different MOS is an error (twice with the same MOS, the repeat is dropped and reported
    among the skipped lines),
    and so is a MOS far outside the others (more than 50 robust spreads from the median, see `_spread`: a typo or a
    missing-value code such as -1e308, which would squash every other label to one end after normalisation). The
    file is read as UTF-8; a leading byte-order mark (Excel's "CSV UTF-8") is dropped.

    Args:
        layout: where the fields are (`LAYOUTS[name]` or your own `Layout`).
        images_dir: when given, every image must exist there.
        skip_bad_rows: skip bad lines (malformed, non-numeric, missing image, outlier, conflicting duplicate) and
            report them, instead of raising at the first one.

    Returns:
        The rows, and one message per skipped line ("FILE:LINE: why").

    Example:
        >>> _ = (tmp_path / "labels.txt").write_text("I01_01_01.png 4.57\\n")
        >>> rows, skipped = read_label_file(tmp_path / "labels.txt", Layout(std=None, reference_pattern="^(I\\\\d+)_"))
        >>> rows[0]
        LabelRow(image='I01_01_01.png', mos=4.57, std=None, reference='I01', line=1)
    """
    path = Path(path)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise LabelFileError(f"{images_dir}: no such folder of images; check --images.")
    lines = [(number, text) for number, text in enumerate(_text(path).splitlines(), 1) if text.strip()]
    if not lines:
        raise LabelFileError(f"{path}: the label file is empty.")
    comma = path.suffix.lower() == ".csv" or "," in lines[0][1]
    records = [(number, _split(text, comma)) for number, text in lines]
    header = records.pop(0)[1] if layout.header else None
    image, mos = _column(layout.image, header, path), _column(layout.mos, header, path)
    optional = [None if spec is None else _column(spec, header, path) for spec in (layout.std, layout.reference)]
    columns = _Columns(image, mos, *optional)
    pattern = _reference_pattern(layout.reference_pattern, path)
    rows: list[LabelRow] = []
    skipped: list[str] = []
    for number, fields in records:
        try:
            rows.append(_row(fields, columns, pattern, number, path, images_dir))
        except LabelFileError as error:
            if not skip_bad_rows:
                raise LabelFileError(f"{error} (pass --skip-bad-rows to skip such lines and report them)") from None
            skipped.append(str(error))
    rows, notes, problems = _whole_file_problems(rows, path)
    if problems and not skip_bad_rows:
        raise LabelFileError("\n".join(problems) + "\n(pass --skip-bad-rows to skip such lines and report them)")
    skipped += notes + problems
    if not rows:
        raise LabelFileError(f"{path}: no usable rows ({len(skipped)} skipped); check --format and the columns.")
    return rows, skipped


def _whole_file_problems(rows: list[LabelRow], path: Path) -> tuple[list[LabelRow], list[str], list[str]]:
    """Drop exact repeats (notes), and flag conflicting duplicates and outliers (problems); returns what is kept."""
    notes: list[str] = []
    problems: list[str] = []
    first: dict[str, LabelRow] = {}
    conflicting: set[str] = set()
    for row in rows:
        seen = first.setdefault(row.image, row)
        if seen is row:
            continue
        if seen.mos == row.mos:
            notes.append(f"{path}:{row.line}: {row.image!r} repeats line {seen.line} with the same MOS; dropped")
        else:
            conflicting.add(row.image)
            problems.append(f"{path}:{row.line}: {row.image!r} has MOS {row.mos:g} here but {seen.mos:g} on line "
                            f"{seen.line}; keep one of them")  # fmt: skip
    kept = [row for row in first.values() if row.image not in conflicting]
    values = sorted(row.mos for row in kept)
    if len(values) >= 5:
        median = values[len(values) // 2]
        spread = _spread(values, median)
        outliers = [row for row in kept if abs(row.mos - median) > 50 * spread]
        problems += [f"{path}:{row.line}: MOS {row.mos:g} is far outside the others (median {median:g}, spread "
                     f"{spread:g}); a typo or a missing-value code?" for row in outliers]  # fmt: skip
        kept = [row for row in kept if row not in outliers]
    return kept, notes, problems


def _spread(values: list[float], median: float) -> float:
    """A robust spread of the sorted `values`, never 0: the median absolute deviation; when over half the values tie
    (it is 0), half the interquartile range; when that is 0 too, the median's own size, at least 10 (50 times that
    spans every common MOS scale, 0..100 included), so that a missing-value code such as 999 or 1e308 among tied
    labels is still far outside."""
    deviation = sorted(abs(value - median) for value in values)[len(values) // 2]
    quartile_range = values[(3 * len(values)) // 4] - values[len(values) // 4]
    return deviation or quartile_range / 2 or max(abs(median), 10.0)


def _text(path: Path) -> str:
    """The file's text: UTF-8, without a leading byte-order mark (it would end up in the first column name)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelFileError(f"{path}: no such label file; check --labels.") from None
    except IsADirectoryError:
        raise LabelFileError(f"{path} is a folder; --labels takes the label file itself.") from None
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise LabelFileError(f"{path}:{line}: not UTF-8 text (byte 0x{error.object[error.start]:02x}); re-save the "
                             "file as UTF-8, e.g. iconv -f latin1 -t utf-8 OLD > NEW.") from None  # fmt: skip


def _row(
    fields: list[str],
    columns: _Columns,
    pattern: re.Pattern | None,
    number: int,
    path: Path,
    images_dir: str | Path | None,
) -> LabelRow:
    where = f"{path}:{number}"
    needed = max(index for index in (columns.image, columns.mos, columns.reference) if index is not None)  # not std
    if len(fields) <= columns.image or len(fields) <= columns.mos:
        raise LabelFileError(f"{where}: expected at least {needed + 1} fields, found {len(fields)}: {fields!r}")
    image = fields[columns.image]
    mos = _number(fields[columns.mos], "MOS", where)
    std_index = columns.std
    std = _number(fields[std_index], "std", where) if std_index is not None and std_index < len(fields) else None
    if columns.reference is not None:
        if len(fields) <= columns.reference:
            raise LabelFileError(f"{where}: no reference column (index {columns.reference}) in {fields!r}")
        reference = Path(fields[columns.reference]).stem
    elif pattern is not None:
        match = pattern.search(image)
        if match is None:
            raise LabelFileError(f"{where}: reference pattern {pattern.pattern!r} does not match {image!r}")
        reference = match.group(1)
    else:
        reference = Path(image).stem
    if images_dir is not None and not (Path(images_dir) / image).is_file():
        raise LabelFileError(f"{where}: image {image!r} not found in {images_dir}")
    return LabelRow(image=image, mos=mos, std=std, reference=reference, line=number)


def _reference_pattern(text: str | None, path: Path) -> re.Pattern | None:
    if text is None:
        return None
    try:
        pattern = re.compile(text)
    except re.error as error:
        raise LabelFileError(f"{path}: reference pattern {text!r} is not a regular expression ({error}).") from None
    if not pattern.groups:
        raise LabelFileError(f"{path}: reference pattern {text!r} needs a (group) around the reference's part.")
    return pattern


def _split(text: str, comma: bool) -> list[str]:
    if comma:
        return [field.strip() for field in next(csv.reader([text]))]
    return text.split()


def _column(spec: int | str, header: list[str] | None, path: Path) -> int:
    if isinstance(spec, int):
        return spec
    if header is None:
        raise LabelFileError(f"{path}: column {spec!r} is given by name, so the layout needs header=True.")
    if spec not in header:
        raise LabelFileError(f"{path}: no column named {spec!r} in the header {header}; check --format.")
    return header.index(spec)


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LabelFileError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise LabelFileError(f"{where}: {what} {text!r} is not finite")
    return value
