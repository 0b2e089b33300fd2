"""`vq-reward score`: one line per image in a results file that is never lost, mixed, duplicated or mistaken."""

import json
import os
import subprocess
import sys

import pytest
from conftest import noise_image

from vq_reward.batch.results_file import ResultsFile
from vq_reward.cli import main


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    (images / "nested").mkdir(parents=True)
    for i in range(5):
        noise_image(40 + 10 * i, 50, seed=i).save(images / f"img{i}.png")
    noise_image(60, 60, seed=9).save(images / "nested" / "deep.jpg")
    (images / "broken.png").write_bytes(b"\x89PNG garbage")
    (images / "readme.txt").write_text("not scanned: wrong extension")
    return images


def read_lines(path):
    """The result lines: every line is one image's record, strict JSON (a NaN would be refused)."""
    return [json.loads(line, parse_constant=pytest.fail) for line in path.read_text().splitlines()]


def score(folder, out, tiny_path, *extra):
    return main(["score", str(folder), "--model", str(tiny_path), "--output", str(out), *extra])


def test_score_folder_writes_one_line_per_image(folder, tmp_path, tiny_path, capsys):
    out = tmp_path / "results.jsonl"
    assert score(folder, out, tiny_path, "--batch-size", "2") == 0
    lines = read_lines(out)
    assert len(lines) == 7 and len({line["path"] for line in lines}) == 7
    (error,) = [line for line in lines if "error" in line]
    assert error["path"].endswith("broken.png") and "not an image" in error["error"]
    for line in lines:
        if "error" not in line:
            assert 1 <= line["score"] <= 5 and 0 < line["digit_mass"] <= 1 and len(line["probs"]) == 5
    err = capsys.readouterr().err
    assert "6 scored, 1 errors, 0 skipped" in err and "error: " in err and "broken.png" in err


def test_the_file_holds_every_digit_of_the_score(folder, tmp_path, tiny_path):
    from vq_reward import VisualQualityScorer

    out = tmp_path / "results.jsonl"
    assert score(folder, out, tiny_path, "--batch-size", "1") == 0
    lines = [line for line in read_lines(out) if "error" not in line]
    scorer = VisualQualityScorer.from_pretrained(str(tiny_path), batch_size=1)
    details = scorer.score_details([line["path"] for line in lines])
    # The float32 value itself, not six decimals of it: a rerun that scores the same never shows a change.
    assert [line["score"] for line in lines] == details.scores.tolist()
    assert [line["std"] for line in lines] == details.std.tolist()


def test_rerun_skips_what_is_done_and_drops_a_torn_line(folder, tmp_path, tiny_path):
    out = tmp_path / "results.jsonl"
    score(folder, out, tiny_path)
    complete = read_lines(out)
    # What a kill in the middle of a write leaves: the header, two whole lines and half of a third.
    text = out.read_text().splitlines(keepends=True)
    out.write_text(text[0] + text[1] + text[2] + text[3][:17])
    score(folder, out, tiny_path)
    resumed = read_lines(out)
    assert sorted(line["path"] for line in resumed) == sorted(line["path"] for line in complete)
    scores = {line["path"]: line.get("score") for line in complete}
    # Other batches around an image move its score by float32 rounding only (the scorer's stated bound).
    assert all(line.get("score") == pytest.approx(scores[line["path"]], abs=1e-6) for line in resumed)
    score(folder, out, tiny_path)
    assert read_lines(out) == resumed  # nothing left to do, nothing written


def test_retry_errors(folder, tmp_path, tiny_path):
    out = tmp_path / "results.jsonl"
    score(folder, out, tiny_path)
    noise_image(50, 50).save(folder / "broken.png")  # the user repairs the file
    score(folder, out, tiny_path)
    assert sum(line["path"].endswith("broken.png") for line in read_lines(out)) == 1
    score(folder, out, tiny_path, "--retry-errors")
    last = [line for line in read_lines(out) if line["path"].endswith("broken.png")][-1]
    assert "score" in last


@pytest.mark.parametrize("content", [b"my notes\n", b"\x00\x01binary weights" * 100], ids=["text", "binary"])
def test_a_file_that_is_not_a_results_file_is_left_untouched(folder, tmp_path, tiny_path, capsys, content):
    out = tmp_path / "notes.txt"
    out.write_bytes(content)
    assert score(folder, out, tiny_path) == 1
    assert out.read_bytes() == content
    assert "is not a vq_reward results file" in capsys.readouterr().err


def test_another_run_is_refused_and_nothing_is_mixed(folder, tmp_path, tiny_path, capsys):
    out = tmp_path / "results.jsonl"
    score(folder, out, tiny_path)
    before = out.read_bytes()
    for extra, changed in [(["--max-pixels", "6272"], "max_pixels"), (["--readout", "first-digit"], "readout"),
                           (["--thinking", "--max-new-tokens", "2"], "mode")]:  # fmt: skip
        assert score(folder, out, tiny_path, *extra) == 1
        err = capsys.readouterr().err
        assert "holds results of another run" in err and changed in err
    assert out.read_bytes() == before


def test_new_weights_at_the_same_path_are_another_run(folder, tmp_path, tiny_path, capsys):
    import shutil

    from vq_reward import VisualQualityScorer

    model = tmp_path / "model"
    shutil.copytree(tiny_path, model)
    out = tmp_path / "results.jsonl"
    score(folder, out, model)
    retrained = VisualQualityScorer.from_pretrained(model)
    retrained.model.lm_head.weight.data += 0.01
    retrained.model.save_pretrained(model)
    assert score(folder, out, model) == 1
    assert "weights" in capsys.readouterr().err


def test_a_relative_and_an_absolute_path_are_one_image(folder, tmp_path, tiny_path, monkeypatch):
    out = tmp_path / "results.jsonl"
    monkeypatch.chdir(folder)
    assert main(["score", "img0.png", str(folder / "img0.png"), "--model", str(tiny_path), "--output", str(out)]) == 0
    assert score(folder / "img0.png", out, tiny_path) == 0
    assert [line["path"] for line in read_lines(out)] == [str(folder / "img0.png")]


def test_a_second_run_on_the_same_file_is_refused(folder, tmp_path, tiny_path, capsys):
    out = tmp_path / "results.jsonl"
    with ResultsFile(out):  # another run holds the file
        assert score(folder, out, tiny_path) == 1
    assert "is being written by another vq-reward run" in capsys.readouterr().err


def test_every_file_name_round_trips(tmp_path, tiny_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    names = [b"bad\xff.png", "café ☕.png".encode(), b"new\nline.png", b"sp ace.png"]
    for index, name in enumerate(names):
        noise_image(56, 56, seed=index).save(os.fsdecode(os.fsencode(folder) + b"/" + name), format="PNG")
    out = tmp_path / "results.jsonl"
    assert score(folder, out, tiny_path) == 0
    lines = read_lines(out)
    assert sorted(os.path.basename(os.fsencode(line["path"])) for line in lines) == sorted(names)
    assert all("score" in line for line in lines)


@pytest.mark.slow
def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, tiny_path):
    images = tmp_path / "many"
    images.mkdir()
    for i in range(24):
        noise_image(56 + i, 56, seed=i).save(images / f"{i:02d}.png")
    out = tmp_path / "results.jsonl"
    # A real kill -9 at a fixed moment: ten bytes into the second line of the second chunk.
    code = (
        "import os, signal, sys\n"
        "from vq_reward.batch import results_file\n"
        "write, calls = results_file._write_synced, []\n"
        "def write_then_die(file, data, name):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:  # the run file, the first chunk, then the second chunk\n"
        "        file.write(data[: data.index(b'\\n') + 10]); file.flush()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    write(file, data, name)\n"
        "results_file._write_synced = write_then_die\n"
        "from vq_reward.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    command = [sys.executable, "-c", code, "score", str(images), "--model", str(tiny_path), "--output", str(out),
               "--batch-size", "1"]  # fmt: skip
    process = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    assert process.returncode == -9
    torn = out.read_text()
    assert torn.count("\n") == 4 + 1 and not torn.endswith("\n")  # the first chunk, 1.x lines of the second
    assert score(images, out, tiny_path) == 0
    lines = read_lines(out)
    assert sorted(line["path"] for line in lines) == sorted(str(p) for p in images.iterdir())


def test_make_tiny(tmp_path, tiny_path):
    assert main(["make-smoke", str(tmp_path / "s"), "--model", "skeleton"]) == 0
    assert (tmp_path / "s" / "model.safetensors").is_file()
    assert main(["make-tiny", str(tmp_path / "t")]) == 0  # 0.2's name, kept
    assert (tmp_path / "t" / "model.safetensors").read_bytes() == (tiny_path / "model.safetensors").read_bytes()


def test_bad_usage_gets_one_line_and_a_non_zero_exit(tmp_path, tiny_path, capsys):
    cases = [
        (["score", str(tmp_path / "missing"), "--model", str(tiny_path), "--output", str(tmp_path / "r.jsonl")],
         1, "missing: no such file or folder"),
        (["score", str(tmp_path), "--model", str(tiny_path), "--output", str(tmp_path / "r.jsonl")],
         1, "no image files"),
        (["score", "examples/images", "--model", str(tiny_path), "--output", str(tmp_path / "no" / "r.jsonl")],
         1, "does not exist; create it first"),
        (["score", "examples/images", "--model", str(tiny_path), "--output", "r.jsonl", "--batch-size", "0"],
         2, "must be at least 1, got 0"),
        (["score", "examples/images", "--output", "r.jsonl"], 2, "the following arguments are required: --model"),
        (["score", "examples/images", "--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r.jsonl")],
         1, "nowhere"),
    ]  # fmt: skip
    for argv, code, message in cases:
        try:
            assert main(argv) == code, argv
        except SystemExit as exit:  # argparse's own usage errors
            assert exit.code == code, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert not (tmp_path / "r.jsonl").exists()  # a run that failed before scoring anything leaves no file behind


def test_every_command_and_option_has_help():
    import argparse

    from vq_reward.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) >= {"score", "make-tiny", "distort", "prepare-data", "prepare-degradation",
                                     "prepare-comparison", "merge-data", "eval"}  # fmt: skip
    for name, command in commands.choices.items():
        assert command.description or any(c.dest == name for c in commands._choices_actions), name
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"vq-reward {name} {action.option_strings or action.dest} has no help"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("vq-reward 0.")
