"""The README's commands and snippets run as written (on the smoke models), so a newcomer's first hour works."""

import os
import re
import shlex
from pathlib import Path

import pytest

from vq_reward.cli import main


REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


def local_snippets() -> list[str]:
    """The Python snippets that need no server (those with `from_server` run against one in test_vllm.py)."""
    return [block for block in blocks("python") if "from_server(" not in block]


@pytest.mark.parametrize("index", range(len(local_snippets())))
def test_python_snippets_run_as_written(index, monkeypatch):
    monkeypatch.chdir(REPO)
    exec(compile(local_snippets()[index], f"README.md python block {index}", "exec"), {})


def test_the_main_command_runs_offline_and_degraded_copies_score_lower(tmp_path, monkeypatch):
    (command,) = [
        line for block in blocks("bash") for line in block.splitlines() if line.startswith("vq-reward score examples")
    ]
    argv = shlex.split(command)[1:]
    argv[argv.index("--output") + 1] = str(tmp_path / "results.jsonl")
    monkeypatch.chdir(REPO)
    assert main(argv) == 0
    assert "--model taught" in command  # the smoke model whose scores follow image quality, clearly labelled
    from vq_reward.batch.results_file import ResultsFile

    with ResultsFile(tmp_path / "results.jsonl") as results:
        scores = {os.path.basename(path): score for path, score in results.scores().items()}
    kinds = ("blur", "noise", "darken")
    assert scores["chelsea__clean.png"] > max(scores[f"chelsea__{k}2.png"] for k in kinds)
    assert min(scores[f"chelsea__{k}2.png"] for k in kinds) > max(scores[f"chelsea__{k}4.png"] for k in kinds)


def test_every_file_the_tree_names_exists():
    tree = README[README.index("## Files") :]
    names = re.findall(r"^  (\S+\.py|\S+/)", tree, re.MULTILINE) + re.findall(r"^(\S+/|\.ci/run)", tree, re.MULTILINE)
    for name in names:
        assert (REPO / name).exists() or (REPO / "vq_reward" / name).exists(), name
