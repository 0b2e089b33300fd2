"""Data preparation: MOS normalisation, the split by reference, label-file errors, JSONL round trip, merge, CLI."""

import json
import os
import re
import shlex
from collections import Counter
from pathlib import Path

import pytest

from vq_reward.cli import main as cli
from vq_reward.data.labels import LAYOUTS, LabelFileError, read_label_file
from vq_reward.data.rows import (
    KADID10K_OFFICIAL_SPLIT,
    DataFileError,
    build_rows,
    fixed_split,
    merge_rows,
    normalize_mos,
    read_jsonl,
    split_references,
    write_jsonl,
)


def _kadid_folder(tmp_path: Path, references: int = 81, per_reference: int = 2) -> tuple[Path, Path]:
    """A KADID-shaped dmos.csv (with header) and empty image files, MOS 1.00..4.93 as in the real file."""
    images = tmp_path / "images"
    images.mkdir()
    lines = ["dist_img,ref_img,dmos,var"]
    n = references * per_reference
    for i in range(n):
        ref = f"I{i // per_reference + 1:02d}"
        name = f"{ref}_01_{i % per_reference + 1:02d}.png"
        (images / name).touch()
        mos = 1.0 + 3.93 * i / (n - 1)
        lines.append(f"{name},{ref}.png,{mos:.4f},0.1")
    labels = tmp_path / "dmos.csv"
    labels.write_text("\n".join(lines) + "\n")
    return labels, images


def test_normalisation_is_the_official_min_max():
    assert normalize_mos([1.0, 4.57, 4.93])[1] == pytest.approx(4.6336, abs=1e-4)  # KADID's worked example
    assert normalize_mos([10, 20, 30], lower_is_better=True) == [5.0, 3.0, 1.0]
    with pytest.raises(ValueError, match="every MOS is 3"):
        normalize_mos([3, 3])


def test_split_by_reference_is_official_sized_deterministic_and_leak_free():
    references = [f"I{i:02d}" for i in range(1, 82)]
    split = split_references(references * 3)  # repeated names: one assignment per reference
    assert Counter(split.values()) == {"train": 49, "val": 16, "test": 16}
    assert split == split_references(list(reversed(references)))  # input order does not matter
    assert split != split_references(references, seed=7)
    with pytest.raises(ValueError, match="adding up to 1"):
        split_references(references, (0.5, 0.2, 0.2))


@pytest.mark.slow
def test_official_kadid_split_gives_the_official_counts(tmp_path):
    labels, images = _kadid_folder(tmp_path, per_reference=125)
    rows, _ = read_label_file(labels, LAYOUTS["kadid10k"], images_dir=images)
    split = fixed_split([r.reference for r in rows], **KADID10K_OFFICIAL_SPLIT)
    built = build_rows(rows, images, "KADID-10K", split=split)
    assert Counter(r["split"] for r in built) == {"train": 6125, "val": 2000, "test": 2000}
    assert {r["reference"] for r in built if r["split"] == "test"} == set(KADID10K_OFFICIAL_SPLIT["test"])


def test_prepare_data_cli_round_trip(tmp_path, capsys):
    labels, images = _kadid_folder(tmp_path)
    out = tmp_path / "data"
    assert cli(["prepare-data", "--labels", str(labels), "--format", "kadid10k", "--images", str(images),
                "--dataset-name", "KADID-10K", "--output-dir", str(out)]) == 0  # fmt: skip
    parts = {s: read_jsonl(out / f"KADID-10K_{s}.jsonl") for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [98, 32, 32]
    refs = {s: {r["reference"] for r in p} for s, p in parts.items()}
    assert not (refs["train"] & refs["val"] or refs["train"] & refs["test"] or refs["val"] & refs["test"])
    every = [r for p in parts.values() for r in p]
    assert min(r["mos"] for r in every) == 1.0 and max(r["mos"] for r in every) == 5.0
    first = parts["train"][0]
    assert Path(first["image"]).is_file() and first["dataset_name"] == "KADID-10K" and first["task"] == "score"
    assert first["mos"] == pytest.approx((first["mos_raw"] - 1.0) / 3.93 * 4 + 1, abs=1e-5)


@pytest.mark.parametrize(
    ("line", "message"),
    [("a.png", "expected at least 2 fields"), ("a.png high", "MOS 'high' is not a number"),
     ("missing.png 3.0", "image 'missing.png' not found"), ("a.png nan", "is not finite")],
)  # fmt: skip
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "a.png").touch()
    labels = tmp_path / "labels.txt"
    labels.write_text(f"a.png 2.0\n{line}\n")
    with pytest.raises(LabelFileError, match=f"labels.txt:2: .*{message}.*--skip-bad-rows"):
        read_label_file(labels, images_dir=tmp_path)
    rows, skipped = read_label_file(labels, images_dir=tmp_path, skip_bad_rows=True)
    assert [r.line for r in rows] == [1] and len(skipped) == 1 and skipped[0].startswith(f"{labels}:2:")


def test_layouts_read_their_formats(tmp_path):
    tid = tmp_path / "mos_with_names.txt"
    tid.write_text("5.51 i01_01_1.bmp\n4.2 I02_03_4.bmp\n")
    rows, _ = read_label_file(tid, LAYOUTS["tid2013"])
    assert [(r.image, r.mos, r.reference) for r in rows] == [("i01_01_1.bmp", 5.51, "01"), ("I02_03_4.bmp", 4.2, "02")]
    koniq = tmp_path / "koniq.csv"
    koniq.write_text('"image_name","c1","MOS","SD"\n"1.jpg",3,"3.9","0.5"\n')
    rows, _ = read_label_file(koniq, LAYOUTS["koniq10k"])
    assert (rows[0].image, rows[0].mos, rows[0].std, rows[0].reference) == ("1.jpg", 3.9, 0.5, "1")
    with pytest.raises(LabelFileError, match="no column named 'dist_img' in the header"):
        read_label_file(koniq, LAYOUTS["kadid10k"])


def test_merge_keeps_dataset_names_and_renumbers(tmp_path, capsys):
    a = write_jsonl([{"id": 0, "image": "x.png", "dataset_name": "A", "mos": 1.0}] * 2, tmp_path / "a.jsonl")
    b = write_jsonl([{"id": 0, "image": "y.png", "dataset_name": "B", "mos": 2.0}], tmp_path / "b.jsonl")
    assert cli(["merge-data", str(a), str(b), "--output", str(tmp_path / "m.jsonl")]) == 0
    merged = read_jsonl(tmp_path / "m.jsonl")
    assert [(r["id"], r["dataset_name"]) for r in merged] == [(0, "A"), (1, "A"), (2, "B")]
    assert merged[0]["image"] == str(tmp_path / "x.png")  # relative paths resolve against the file's folder
    assert "A: all 2" in capsys.readouterr().out
    assert merge_rows([]) == []


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "a", "dataset_name": "A", "mos": 1}) + "\n{oops\n")
    with pytest.raises(DataFileError, match="bad.jsonl:2: not valid JSON"):
        read_jsonl(bad)
    bad.write_text(json.dumps({"image": "a"}) + "\n")
    with pytest.raises(DataFileError, match=r"bad.jsonl:1: missing \['dataset_name', 'mos'\]"):
        read_jsonl(bad)


def _plain_labels(tmp_path: Path, lines: list[str]) -> Path:
    for line in lines:
        (tmp_path / line.split()[0]).touch()
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    return labels


def test_conflicting_duplicates_and_outliers_are_refused_with_their_lines(tmp_path):
    lines = [f"img{i}.png {2 + i % 3}" for i in range(10)] + ["img3.png 4.5"]
    labels = _plain_labels(tmp_path, lines)
    with pytest.raises(LabelFileError) as error:
        read_label_file(labels)
    assert "labels.txt:11: 'img3.png' has MOS 4.5 here but 2 on line 4; keep one of them" in str(error.value)
    rows, skipped = read_label_file(labels, skip_bad_rows=True)
    assert "img3.png" not in {r.image for r in rows} and len(rows) == 9 and len(skipped) == 1
    labels.write_text("\n".join([f"img{i}.png {2 + i % 3}" for i in range(9)] + ["img9.png -1e308", "img0.png 2"]))
    with pytest.raises(LabelFileError, match=r"labels.txt:10: MOS -1e\+308 is far outside the others"):
        read_label_file(labels)
    rows, skipped = read_label_file(labels, skip_bad_rows=True)  # the exact repeat of img0 is dropped, reported
    assert max(normalize_mos([r.mos for r in rows])) == 5.0 and len({r.image for r in rows}) == len(rows) == 9
    assert any("repeats line 1 with the same MOS; dropped" in message for message in skipped)


def test_prepare_data_writes_every_split_or_none(tmp_path, monkeypatch, capsys):
    labels = _plain_labels(tmp_path, [f"r{i}_a.png {1 + i % 5}" for i in range(20)])
    out = tmp_path / "data"
    args = ["prepare-data", "--labels", str(labels), "--images", str(tmp_path), "--dataset-name", "X",
            "--output-dir", str(out), "--reference-pattern", "^(r\\d+)_"]  # fmt: skip
    from vq_reward.data import jsonl

    staged = jsonl._staged
    calls = []

    def full_disk_on_the_second_file(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return staged(path, text)

    monkeypatch.setattr(jsonl, "_staged", full_disk_on_the_second_file)
    assert cli(args) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # not even a hidden temporary file is left
    monkeypatch.setattr(jsonl, "_staged", staged)
    assert cli(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["X_test.jsonl", "X_train.jsonl", "X_val.jsonl"]


def test_an_empty_split_is_refused(tmp_path, capsys):
    labels = _plain_labels(tmp_path, ["a.png 1", "b.png 2"])
    args = ["prepare-data", "--labels", str(labels), "--images", str(tmp_path), "--dataset-name", "X",
            "--output-dir", str(tmp_path / "data")]  # fmt: skip
    assert cli(args) == 1
    assert re.search(r"the (val|test)(, test)? split would be empty .*--no-split", capsys.readouterr().err)
    assert cli(args + ["--no-split"]) == 0


def test_training_rows_are_all_checked_before_training(tmp_path):
    from conftest import noise_image

    noise_image(64, 64).save(tmp_path / "good.png")
    (tmp_path / "notes.png").write_text("not an image")
    rows = [
        {"image": "good.png", "dataset_name": "X", "mos": 3.0},
        {"image": "gone.png", "dataset_name": "X", "mos": 3.0},
        {"image": "good.png", "dataset_name": "X", "mos": float("nan")},
        {"image": "good.png", "dataset_name": "X", "mos": None},
        {"image": "good.png", "dataset_name": "X", "mos": "high"},
        {"image": "notes.png", "dataset_name": "X", "mos": 2.0},
        {"image": "good.png", "mos": 2.0},
    ]
    path = write_jsonl(rows, tmp_path / "train.jsonl")
    assert len(read_jsonl(path, required=("image",))) == 7  # without image checks only the keys asked for
    with pytest.raises(DataFileError) as error:
        read_jsonl(path, check_images=True)
    message = str(error.value)
    assert message.startswith(f"6 bad rows in {path}")
    for line, what in [(2, "gone.png does not exist"), (3, "mos is NaN, not a finite number"),
                       (4, "mos is null, not a number"), (5, 'mos is "high", not a number'),
                       (6, "notes.png cannot be read"), (7, "missing ['dataset_name']")]:  # fmt: skip
        assert f"{path}:{line}: " in message and what in message, (line, what, message)


def test_a_missing_value_code_among_tied_labels_is_refused(tmp_path):
    # Over half the MOS tie, so the median absolute deviation is 0: 0.2 accepted 1e308 and normalised it to 5.0.
    for values, outlier in (([3.0] * 9 + [1e308], "1e\\+308"), ([1.0] * 7 + [5.0, 5.0, 999.0], "999")):
        labels = _plain_labels(tmp_path, [f"img{i}.png {value}" for i, value in enumerate(values)])
        with pytest.raises(LabelFileError, match=f"labels.txt:10: MOS {outlier} is far outside the others"):
            read_label_file(labels)
        rows, skipped = read_label_file(labels, skip_bad_rows=True)
        assert len(rows) == 9 and len(skipped) == 1
    # Tied labels with real values on their own scale stay: a distorted set's many level-5 images (MOS 1) and its
    # clean ones (MOS 5), a 0..100 scale whose median is 0, a 0..100 scale tied at 50.
    for values in ([1.0] * 7 + [5.0] * 3, [0.0] * 8 + [60.0, 100.0], [50.0] * 6 + [0.0, 20.0, 70.0, 100.0]):
        labels = _plain_labels(tmp_path, [f"img{i}.png {value}" for i, value in enumerate(values)])
        assert [row.mos for row in read_label_file(labels)[0]] == values


def test_label_files_with_a_byte_order_mark_or_not_in_utf8(tmp_path):
    (tmp_path / "a.png").touch()
    excel = tmp_path / "excel.csv"  # Excel's "CSV UTF-8" starts with a byte-order mark
    excel.write_text("dist_img,ref_img,dmos\na.png,r.png,3.5\n", encoding="utf-8-sig")
    rows, _ = read_label_file(excel, LAYOUTS["kadid10k"], images_dir=tmp_path)
    assert [(row.image, row.mos) for row in rows] == [("a.png", 3.5)]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("a.png 3.5\ncafé.png 4\n".encode("latin-1"))
    with pytest.raises(LabelFileError, match=r"latin.txt:2: not UTF-8 text \(byte 0xe9\); re-save the file as UTF-8"):
        read_label_file(latin)
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"image": "a.png", "dataset_name": "A", "mos": 3}\n', encoding="utf-8-sig")
    assert read_jsonl(jsonl)[0]["mos"] == 3


def test_dataset_names_cannot_leave_the_output_folder(tmp_path, capsys):
    labels = _plain_labels(tmp_path, [f"r{i}.png {1 + i % 5}" for i in range(10)])
    out = tmp_path / "a" / "b"
    for name in ("../../x", "sub/x", ""):
        args = ["prepare-data", "--labels", str(labels), "--images", str(tmp_path), "--dataset-name", name,
                "--output-dir", str(out), "--no-split"]  # fmt: skip
        with pytest.raises(SystemExit) as exit_code:
            cli(args)
        assert exit_code.value.code == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"--dataset-name: {name!r} cannot be part of a file name" in error
    assert not list(tmp_path.glob("**/*.jsonl"))


@pytest.mark.parametrize(
    ("args", "message"),
    [(["merge-data", "{a}", "--output", "{tmp}"], "is a folder; name the file to write"),
     (["merge-data", "{a}", "--output", "{a}/m.jsonl"], "a.jsonl: a file is in the way"),
     (["prepare-data", "--labels", "{labels}", "--images", "{tmp}/gone", "--dataset-name", "X",
       "--output-dir", "{tmp}"], "gone: no such folder of images; check --images"),
     (["prepare-data", "--labels", "{tmp}/gone.txt", "--images", "{tmp}", "--dataset-name", "X",
       "--output-dir", "{tmp}"], "gone.txt: no such label file; check --labels"),
     (["prepare-degradation", "--labels", "{bad}", "--dataset-name", "X", "--output-dir", "{tmp}"],
      "label 0: image 7 is not a file name"),
     (["distort", "{tmp}/gone", "{tmp}/d"], "gone: no such folder of clean images"),
     (["distort", "examples/images", "{a}"], "a.jsonl is a file; name a folder for the distorted images")],
    ids=["output-is-a-folder", "folder-is-a-file", "no-images-folder", "no-label-file", "image-not-a-name",
         "no-photos-folder", "distort-into-a-file"],
)  # fmt: skip
def test_bad_paths_are_one_line_errors(tmp_path, capsys, args, message):
    labels = _plain_labels(tmp_path, ["a.png 1", "b.png 2"])
    a = write_jsonl([{"image": "x.png", "dataset_name": "A", "mos": 1.0}], tmp_path / "a.jsonl")
    bad = write_jsonl([{"image": 7, "distortion_class": "blur", "severity": "obvious"}], tmp_path / "bad.jsonl")
    assert cli([arg.format(tmp=tmp_path, a=a, labels=labels, bad=bad) for arg in args]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error, error


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    from vq_reward.data import jsonl

    def full_disk(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jsonl.os, "fsync", full_disk)
    with pytest.raises(OSError, match=r"\[Errno 28\] cannot write .*rows.jsonl: No space left on device"):
        write_jsonl([{"a": 1}], tmp_path / "rows.jsonl")
    assert not list(tmp_path.iterdir())


def test_the_distort_hint_runs_as_printed_and_writes_beside_the_images(tmp_path, capsys):
    images = tmp_path / "data" / "my synthetic"  # a space: the hint must quote its paths
    assert cli(["distort", "examples/images", str(images), "--crops", "1", "--crop-size", "28", "--kinds", "blur",
                "--levels", "5"]) == 0  # fmt: skip
    hint = capsys.readouterr().out.splitlines()[-1]
    command = shlex.split(hint)
    assert command[:2] == ["vq-reward", "prepare-data"]
    assert cli(command[1:] + ["--ratios", "0.4", "0.3", "0.3"]) == 0
    assert sorted(p.name for p in (tmp_path / "data").glob("*.jsonl")) == [
        "synthetic_test.jsonl", "synthetic_train.jsonl", "synthetic_val.jsonl"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [(["distort", "examples/images", "{tmp}/d", "--crop-size", "8"], "--crop-size: must be at least 28"),
     (["prepare-comparison", "--distortions", "d.jsonl", "--dataset-name", "X", "--output-dir", "{tmp}",
       "--pairs-per-reference", "-1"], "--pairs-per-reference: must be at least 1"),
     (["prepare-data", "--labels", "l.txt", "--images", "{tmp}", "--dataset-name", "X", "--output-dir", "{tmp}",
       "--reference-pattern", "("], "--reference-pattern: '(' is not a regular expression"),
     (["eval", "--labels", "l.txt", "--reference-pattern", "^I"], "--reference-pattern: '^I' has no (group)")],
    ids=["crop-size", "pairs-per-reference", "bad-regex", "no-group"],
)  # fmt: skip
def test_bad_option_values_are_usage_errors_before_any_work(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_code:
        cli([arg.format(tmp=tmp_path) for arg in args])
    error = capsys.readouterr().err
    assert exit_code.value.code == 2 and error.count("\n") == 1 and message in error, error
    assert not list(tmp_path.iterdir())


def test_written_files_get_the_usual_mode(tmp_path):
    # Written through a temporary file (mkstemp: 0600); the result must be readable like any file the user writes.
    from vq_reward.data.jsonl import write_atomically

    umask = os.umask(0o022)
    try:
        new = write_atomically(tmp_path / "new.jsonl", "{}\n")
        assert new.stat().st_mode & 0o777 == 0o644
        os.chmod(new, 0o640)
        write_atomically(new, "{}\n")  # replacing a file keeps its mode
        assert new.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)
