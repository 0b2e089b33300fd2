"""examples/retrain.py runs end to end (data, training, evaluation) offline."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_retrain_example_runs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VQ_REWARD_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "examples/retrain.py", "--output", str(tmp_path / "run"), "--steps", "2"],
                            capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("\nsynthetic ") == 2  # the before and after rows of the report
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    # The next step `distort` prints writes where the example's next step does (0.2's hint said data/).
    data = tmp_path / "run" / "data"
    assert f"--output-dir {data}\n" in result.stdout and (data / "synthetic_train.jsonl").is_file()
    assert "is_gradient_checkpointing" not in result.stderr  # 0.2: one FutureWarning per training step
