"""`vq-reward eval` per group: the distortion kind that `vq-reward distort` records, or a column the user names,
gives SRCC/PLCC/KRCC per group in the JSON report and the printed table (issue 20 item 5)."""

import json

import pytest

from vq_reward.cli import main as cli
from vq_reward.data.rows import read_jsonl, write_jsonl
from vq_reward.eval.metrics import correlations
from vq_reward.eval.report import report_from_scores


@pytest.fixture(scope="module")
def distorted(tmp_path_factory):
    root = tmp_path_factory.mktemp("groups")
    assert cli(["distort", "examples/images", str(root), "--crops", "1", "--crop-size", "56",
                "--kinds", "darken", "noise", "--levels", "1", "3", "5"]) == 0  # fmt: skip
    return root


def _expected(predictions: list[dict], kind: str) -> dict:
    members = [p for p in predictions if p["group"] in (kind, "null")]
    return correlations([p["score"] for p in members], [p["mos"] for p in members])


def test_a_distorted_set_is_reported_per_kind_with_its_clean_images(tiny_path, distorted, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert cli(["eval", "--labels", str(distorted / "labels.txt"), "--images", str(distorted),
                "--model", str(tiny_path), "--device", "cpu", "--output", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert report["group_by"] == "distortion_class"
    groups = report["groups"]["labels"]
    assert sorted(groups) == ["darken", "noise"]  # the clean images join each kind, not a group of their own
    photos = len({p["image"].split("__")[0] for p in report["predictions"]})
    for kind, figures in groups.items():
        assert figures["n"] == photos * 4  # 3 levels of the kind + the clean crop
        expected = _expected(report["predictions"], kind)
        assert figures["srcc"] == pytest.approx(expected["srcc"]) and figures["krcc"] == pytest.approx(
            expected["krcc"]
        )
    printed = capsys.readouterr().out
    assert "per distortion_class" in printed and "labels / darken" in printed and "labels / noise" in printed


@pytest.fixture(scope="module")
def with_camera(distorted):
    """distortions.jsonl as score rows with a made-up column, "camera"."""
    rows = read_jsonl(distorted / "distortions.jsonl", required=("image",))
    for row in rows:
        row.update(dataset_name="all", camera="phone" if row["level"] % 2 else "dslr")
    write_jsonl(rows, distorted / "with_camera.jsonl")
    return distorted / "with_camera.jsonl", rows


def test_a_column_the_user_names_groups_the_rows(tiny_path, with_camera, tmp_path, capsys):
    labels, rows = with_camera
    out = tmp_path / "report.json"
    assert cli(["eval", "--labels", str(labels), "--group-by", "camera", "--model", str(tiny_path),
                "--device", "cpu", "--output", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    groups = report["groups"]["all"]
    assert sorted(groups) == ["dslr", "phone"]
    assert groups["phone"]["n"] == sum(row["level"] % 2 == 1 for row in rows)
    assert "all / phone" in capsys.readouterr().out


def test_a_missing_group_column_is_one_line_naming_it(tiny_path, with_camera, tmp_path, capsys):
    assert cli(["eval", "--labels", str(with_camera[0]), "--group-by", "lens",
                "--model", str(tiny_path), "--device", "cpu", "--output", str(tmp_path / "r.json")]) == 1  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "'lens'" in error[0] and "--group-by" in error[0]  # before any image is scored


def test_groups_are_computed_within_each_dataset():
    rows = [{"image": f"{name}{i}", "mos": float(i), "dataset_name": name, "kind": "blur" if i % 2 else "null"}
            for name in ("A", "B") for i in range(6)]  # fmt: skip
    scores = [float(i) if row["dataset_name"] == "A" else -float(i) for i, row in enumerate(rows)]
    report = report_from_scores(rows, scores, group_by="kind")
    assert report["groups"]["A"]["blur"]["srcc"] == pytest.approx(1.0)
    assert report["groups"]["B"]["blur"]["srcc"] == pytest.approx(-1.0)
    assert report["groups"]["A"]["blur"]["n"] == 6  # 3 blurred + 3 clean
    assert "groups" not in report_from_scores(rows, scores)
    with pytest.raises(ValueError, match="'lens'"):
        report_from_scores(rows, scores, group_by="lens")
