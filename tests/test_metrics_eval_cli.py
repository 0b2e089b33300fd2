"""`vq-reward eval` on the tiny checkpoint: per-dataset figures in JSON agree with the metrics of the predictions,
the scatter plot is written, and raw label files work as well as prepared JSONL."""

import json

import pytest
from PIL import Image

from vq_reward.cli import main as cli
from vq_reward.eval.metrics import correlations
from vq_reward.eval.report import write_report


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    assert cli(["distort", "examples/images", str(root / "images"), "--crops", "1", "--crop-size", "56",
                "--kinds", "darken", "noise", "--levels", "2", "4"]) == 0  # fmt: skip
    return root


def test_eval_on_merged_jsonl_reports_each_dataset(tiny_path, labelled, tmp_path, capsys):
    images = labelled / "images"
    for name in ("first", "second"):
        assert cli(["prepare-data", "--labels", str(images / "labels.txt"), "--images", str(images),
                    "--dataset-name", name, "--output-dir", str(tmp_path), "--no-split"]) == 0  # fmt: skip
    merged = tmp_path / "both.jsonl"
    assert cli(["merge-data", str(tmp_path / "first_all.jsonl"), str(tmp_path / "second_all.jsonl"),
                "--output", str(merged)]) == 0  # fmt: skip
    report_path, plot_path = tmp_path / "report.json", tmp_path / "scatter.png"
    assert cli(["eval", "--labels", str(merged), "--model", str(tiny_path), "--device", "cpu",
                "--output", str(report_path), "--plot", str(plot_path)]) == 0  # fmt: skip
    report = json.loads(report_path.read_text())
    assert sorted(report["datasets"]) == ["first", "second"]
    for name, figures in report["datasets"].items():
        members = [p for p in report["predictions"] if p["dataset_name"] == name]
        assert figures["n"] == len(members) == 8 * 5
        expected = correlations([p["score"] for p in members], [p["mos"] for p in members])
        assert figures["srcc"] == pytest.approx(expected["srcc"]) and figures["krcc"] == pytest.approx(
            expected["krcc"]
        )
    assert Image.open(plot_path).size[0] > 600  # two panels
    assert "SRCC" in capsys.readouterr().out


def test_eval_reads_a_raw_label_file(tiny_path, labelled, tmp_path):
    out = tmp_path / "raw.json"
    assert cli(["eval", "--labels", str(labelled / "images" / "labels.txt"), "--images", str(labelled / "images"),
                "--model", str(tiny_path), "--device", "cpu", "--output", str(out)]) == 0  # fmt: skip
    assert list(json.loads(out.read_text())["datasets"]) == ["labels"]  # named after the file by default


def test_raw_label_file_needs_images(labelled, capsys):
    assert cli(["eval", "--labels", str(labelled / "images" / "labels.txt"), "--model", "tiny"]) == 1
    assert "needs --images" in capsys.readouterr().err


def test_undefined_figures_are_null_in_json(tmp_path):
    path = write_report({"datasets": {"A": {"n": 1, "srcc": float("nan")}}, "predictions": []}, tmp_path / "r.json")
    assert json.loads(path.read_text())["datasets"]["A"]["srcc"] is None


def test_eval_reuses_the_scores_it_already_computed(tiny_path, labelled, tmp_path, capsys):
    args = ["eval", "--labels", str(labelled / "images" / "labels.txt"), "--images", str(labelled / "images"),
            "--model", str(tiny_path), "--output", str(tmp_path / "report.json")]  # fmt: skip
    assert cli(args) == 0
    first = json.loads((tmp_path / "report.json").read_text())
    assert "40 new, 0 reused" in capsys.readouterr().err
    assert (tmp_path / "report.scores.jsonl").is_file()
    assert cli(args) == 0
    assert "0 new, 40 reused" in capsys.readouterr().err
    assert json.loads((tmp_path / "report.json").read_text())["datasets"] == first["datasets"]


def test_eval_checks_its_dependencies_before_scoring(tiny_path, labelled, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else find_spec(name, *a))
    args = ["eval", "--labels", str(labelled / "images" / "labels.txt"), "--images", str(labelled / "images"),
            "--model", str(tiny_path), "--output", str(tmp_path / "report.json")]  # fmt: skip
    assert cli(args) == 1
    assert "needs scipy: pip install 'vq-reward[eval]'" in capsys.readouterr().err
    assert not (tmp_path / "report.scores.jsonl").exists()  # nothing was scored


def test_eval_writes_into_a_folder_that_does_not_exist_yet(tiny_path, labelled, tmp_path):
    """The README's `--output eval/kadid.json`: the report, and the scores beside it, go into a new folder."""
    report = tmp_path / "eval" / "kadid.json"
    assert cli(["eval", "--labels", str(labelled / "images" / "labels.txt"), "--images", str(labelled / "images"),
                "--model", str(tiny_path), "--output", str(report)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["datasets"]["labels"]["n"] == 40
    assert (tmp_path / "eval" / "kadid.scores.jsonl").is_file()


@pytest.mark.parametrize("option", ["--output", "--plot", "--scores"])
def test_eval_checks_every_output_path_before_the_model_loads(labelled, tmp_path, capsys, monkeypatch, option):
    import vq_reward.cli.options

    def load_scorer(*args, **kwargs):
        raise AssertionError("the model was loaded before the output paths were checked")

    monkeypatch.setattr(vq_reward.cli.options, "load_scorer", load_scorer)
    (tmp_path / "a-file").write_text("not a folder")
    args = ["eval", "--labels", str(labelled / "images" / "labels.txt"), "--images", str(labelled / "images"),
            "--model", "tiny", option, str(tmp_path / "a-file" / "out")]  # fmt: skip
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert "a-file is a file, not a folder" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing created
