"""examples/score_folder.py says which smoke model its scores come from (issue 16: it scored with the random model
without a word)."""

import importlib.util
from pathlib import Path


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "score_folder.py"


def test_score_folder_says_when_it_scores_with_a_smoke_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VQ_REWARD_CACHE", str(tmp_path))  # the tiny model is built there, in under a second
    spec = importlib.util.spec_from_file_location("example_score_folder", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ranked = module.main([str(EXAMPLE.parent / "images"), "--model", "tiny", "--limit", "2"])
    assert len(ranked) == 2
    assert "Scoring with the 'tiny' smoke model: random weights, its scores mean nothing." in capsys.readouterr().out
