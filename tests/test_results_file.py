"""The results file of `vq-reward score` as other tools read it, and what it refuses: one image per line (pandas,
jq, json.loads), strict JSON, no NaN passed as a score, symlinks followed, nothing created or deleted by the early
check, and one-line errors for a full disk or a damaged line."""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import noise_image

from vq_reward.cli import main


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        noise_image(40 + 10 * i, 50, seed=i).save(images / f"img{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG garbage")
    return images


def score(folder, out, model, *extra):
    return main(["score", str(folder), "--model", str(model), "--output", str(out), *extra])


def strict_lines(path):
    """Every line parsed as strict JSON: `NaN` or `Infinity` fails the test."""
    return [json.loads(line, parse_constant=pytest.fail) for line in path.read_text().splitlines()]


def test_every_line_is_one_image_as_pandas_and_json_read_it(folder, tmp_path, tiny_path):
    out = tmp_path / "results.jsonl"
    assert score(folder, out, tiny_path) == 0
    lines = strict_lines(out)
    assert len(lines) == 5 and all("path" in line for line in lines)
    assert sorted(line["path"] for line in lines if "score" in line) == sorted(str(p) for p in folder.glob("img*"))
    run = json.loads((tmp_path / "results.jsonl.run.json").read_text())["run"]
    assert run["model"] == str(tiny_path) and run["mode"] == "score"
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_json(out, lines=True)
    assert len(frame) == 5 and frame["path"].notna().all()
    assert frame["score"].notna().sum() == 4 and frame["error"].notna().sum() == 1


def test_jq_reads_the_scores(folder, tmp_path, tiny_path):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    out = tmp_path / "results.jsonl"
    score(folder, out, tiny_path)
    jq = subprocess.run(["jq", "-r", 'select(.score != null) | "\\(.score)\\t\\(.path)"', str(out)],
                        capture_output=True, text=True, check=True)  # fmt: skip
    assert len(jq.stdout.splitlines()) == 4 and all(
        1 <= float(row.split("\t")[0]) <= 5 for row in jq.stdout.splitlines()
    )


def test_a_02_file_is_refused_with_a_command_that_converts_it(folder, tmp_path, tiny_path, capsys):
    out = tmp_path / "results.jsonl"
    score(folder, out, tiny_path)
    run_file = tmp_path / "results.jsonl.run.json"
    out.write_text(run_file.read_text() + out.read_text())  # the 0.2 layout: the run's header, then the records
    run_file.unlink()
    before = out.read_bytes()
    capsys.readouterr()
    assert score(folder, out, tiny_path) == 1
    err = capsys.readouterr().err
    assert "was written by vq-reward 0.2" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before
    command = err.split("then rerun: ", 1)[1].strip()
    subprocess.run(command, shell=True, check=True)
    assert score(folder, out, tiny_path) == 0
    assert "0 scored, 0 errors, 5 skipped" in capsys.readouterr().err


def test_a_results_file_without_its_run_file_is_left_untouched(folder, tmp_path, tiny_path, capsys):
    out = tmp_path / "results.jsonl"
    score(folder, out, tiny_path)
    (tmp_path / "results.jsonl.run.json").unlink()
    before = out.read_bytes()
    assert score(folder, out, tiny_path) == 1
    assert "results.jsonl.run.json is not beside it" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.fixture
def nan_model(tmp_path, tiny_path):
    from vq_reward import VisualQualityScorer

    model = tmp_path / "nan-model"
    shutil.copytree(tiny_path, model)
    scorer = VisualQualityScorer.from_pretrained(model)
    scorer.model.lm_head.weight.data.fill_(float("nan"))
    scorer.model.save_pretrained(model)
    return model


def test_a_nan_score_is_an_error_line_that_retry_errors_retries(folder, tmp_path, nan_model, capsys):
    out = tmp_path / "results.jsonl"
    assert score(folder, out, nan_model) == 1  # nothing could be scored
    err = capsys.readouterr().err
    assert "0 scored, 5 errors" in err and "not a finite number" in err
    lines = strict_lines(out)
    assert len(lines) == 5 and all("error" in line and "score" not in line for line in lines)
    assert score(folder, out, nan_model, "--retry-errors") == 1
    assert len(strict_lines(out)) == 10  # every failed image tried again


def test_fail_on_error_for_pipelines(folder, tmp_path, tiny_path, capsys):
    out = tmp_path / "results.jsonl"
    assert score(folder, out, tiny_path) == 0  # some images failed, the run finished: 0, as documented
    assert score(folder, out, tiny_path, "--fail-on-error") == 1  # broken.png still has no score in the file
    assert "1 of the images given have no score" in capsys.readouterr().err
    (folder / "broken.png").unlink()
    assert score(folder, out, tiny_path, "--fail-on-error") == 0


def test_a_symlink_is_followed_and_left_in_place(folder, tmp_path, tiny_path):
    target, link = tmp_path / "target.jsonl", tmp_path / "link.jsonl"
    link.symlink_to(target)  # dangling until the first run writes
    assert score(folder, link, tmp_path / "no-such-model") == 1  # fails after the early check
    assert link.is_symlink() and not target.exists()
    assert score(folder, link, tiny_path) == 0
    assert link.is_symlink() and len(strict_lines(target)) == 5
    assert (tmp_path / "target.jsonl.run.json").is_file()
    assert score(folder, link, tiny_path) == 0 and len(strict_lines(target)) == 5  # resumed through the link


def test_the_early_check_creates_and_deletes_nothing(folder, tmp_path):
    """Creating and unlinking a file races another run's open (it would write to an unlinked file)."""
    out = tmp_path / "results.jsonl"
    events = []
    watching = True

    def audit(event, args):
        if watching and event in ("open", "os.remove", "os.rename", "os.replace") and str(out) in str(args[0]):
            if event != "open" or args[1] not in (None, "r", "rb") or (args[2] or 0) & os.O_CREAT:
                events.append((event, args[1:]))

    sys.addaudithook(audit)
    try:
        assert score(folder, out, tmp_path / "no-such-model") == 1  # refused after the check, before loading
    finally:
        watching = False
    assert events == [] and not out.exists()


def test_a_full_disk_is_one_line_naming_the_file(folder, tmp_path, tiny_path, monkeypatch, capsys):
    out = tmp_path / "results.jsonl"
    fsync, calls = os.fsync, []

    def full_disk(fd):
        calls.append(fd)
        if len(calls) == 2:  # the run file syncs, the first chunk of lines does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    assert score(folder, out, tiny_path) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"vq-reward score: error: {out}: could not write (the disk is full, errno 28)"), err
    assert "rerun the same command to resume" in err


@pytest.mark.parametrize(
    ("line", "problem"),
    [(b'{"path": "/a.png", "score": 3.5, "note": "caf\xe9"}\n', "is not UTF-8 text"),
     (b'{"score": 3.5}\n', 'is not a results line (a JSON object with a "path")'),
     (b"[1, 2]\n", "is not a results line")],
    ids=["latin-1", "no-path", "not-an-object"],
)  # fmt: skip
def test_a_damaged_line_is_one_line_naming_the_file_and_line(folder, tmp_path, tiny_path, capsys, line, problem):
    out = tmp_path / "results.jsonl"
    score(folder, out, tiny_path)
    with open(out, "ab") as file:
        file.write(line)
    before = out.read_bytes()
    capsys.readouterr()
    assert score(folder, out, tiny_path) == 1
    err = capsys.readouterr().err.strip()
    assert f"{out}:6 {problem}" in err and "fix or delete that line" in err and len(err.splitlines()) == 1, err
    assert out.read_bytes() == before


def test_the_progress_bar_ends_once_and_a_resume_with_nothing_to_do_shows_none(folder, tmp_path, tiny_path, capsys):
    out = tmp_path / "results.jsonl"
    score(folder, out, tiny_path)
    assert capsys.readouterr().err.count("5/5") <= 1  # not a second 100% line when the bar closes
    score(folder, out, tiny_path)
    err = capsys.readouterr().err
    assert "0 scored, 0 errors, 5 skipped" in err and "img" not in err  # no `0img` bar
