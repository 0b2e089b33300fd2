import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import noise_image

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
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_folder_writes_one_line_per_image(folder, tmp_path, tiny_path, capsys):
    out = tmp_path / "results.jsonl"
    assert main(["score", str(folder), "--model", str(tiny_path), "--output", str(out), "--batch-size", "2"]) == 0
    lines = read_lines(out)
    assert len(lines) == 7 and len({line["path"] for line in lines}) == 7
    (error,) = [line for line in lines if "error" in line]
    assert error["path"].endswith("broken.png") and "not an image" in error["error"]
    for line in lines:
        if "error" not in line:
            assert 1 <= line["score"] <= 5 and 0 < line["digit_mass"] <= 1 and len(line["probs"]) == 5
    assert "6 scored, 1 errors, 0 skipped" in capsys.readouterr().out


def test_rerun_skips_what_is_done_and_drops_a_torn_line(folder, tmp_path, tiny_path):
    out = tmp_path / "results.jsonl"
    args = ["score", str(folder), "--model", str(tiny_path), "--output", str(out)]
    main(args)
    complete = read_lines(out)
    # What a kill in the middle of a write leaves: two whole lines and half of a third.
    text = out.read_text().splitlines(keepends=True)
    out.write_text(text[0] + text[1] + text[2][:17])
    main(args)
    resumed = read_lines(out)
    assert sorted(line["path"] for line in resumed) == sorted(line["path"] for line in complete)
    scores = {line["path"]: line.get("score") for line in complete}
    assert all(line.get("score") == scores[line["path"]] for line in resumed)  # deterministic: same numbers
    main(args)
    assert read_lines(out) == resumed  # nothing left to do, nothing written


def test_retry_errors(folder, tmp_path, tiny_path):
    out = tmp_path / "results.jsonl"
    args = ["score", str(folder), "--model", str(tiny_path), "--output", str(out)]
    main(args)
    noise_image(50, 50).save(folder / "broken.png")  # the user repairs the file
    main(args)
    assert sum(line["path"].endswith("broken.png") for line in read_lines(out)) == 1
    main(args + ["--retry-errors"])
    last = [line for line in read_lines(out) if line["path"].endswith("broken.png")][-1]
    assert "score" in last


def test_resuming_with_another_model_is_refused(folder, tmp_path, tiny_path, capsys):
    out = tmp_path / "results.jsonl"
    main(["score", str(folder), "--model", str(tiny_path), "--output", str(out)])
    assert main(["score", str(folder), "--model", "other-model", "--output", str(out)]) == 1
    assert re.search(r"holds results of model .*pass a new --output or the same --model", capsys.readouterr().err)


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, tiny_path):
    images = tmp_path / "many"
    images.mkdir()
    for i in range(48):
        noise_image(56 + i, 56, seed=i).save(images / f"{i:02d}.png")
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "vq_reward.cli", "score", str(images), "--model", str(tiny_path),
               "--output", str(out), "--batch-size", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 4):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = out.read_text().count("\n")
    assert 4 <= done_before < 48, "the run should be killed part-way"
    main(["score", str(images), "--model", str(tiny_path), "--output", str(out)])
    lines = read_lines(out)
    assert sorted(line["path"] for line in lines) == sorted(str(p) for p in images.iterdir())


def test_make_tiny(tmp_path, tiny_path):
    assert main(["make-tiny", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "model.safetensors").read_bytes() == (tiny_path / "model.safetensors").read_bytes()


def test_no_images_found(tmp_path, capsys):
    assert main(["score", str(tmp_path), "--model", "tiny", "--output", str(tmp_path / "r.jsonl")]) == 2
    assert "No image files found" in capsys.readouterr().err
