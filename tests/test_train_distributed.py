"""Two CPU processes (torchrun, gloo): the global-scope fidelity reward sees every rollout of both processes, each
device batch holds one dataset, DDP keeps the ranks in sync, and a layout that splits groups is refused."""

import json
import os
import subprocess
import sys

import pytest

from vq_reward.cli import main as cli


pytest.importorskip("trl")


def _torchrun(out, args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "tests/train_two_process_worker.py", str(out), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """Two datasets (blur-only and darken-only degradations of 56x56 crops) in one training run."""
    root = tmp_path_factory.mktemp("two")
    files = []
    for name, kind in (("blurred", "blur"), ("darkened", "darken")):
        assert cli(["distort", "examples/images", str(root / name), "--crops", "1", "--crop-size", "56",
                    "--kinds", kind, "--levels", "1", "3", "5"]) == 0  # fmt: skip
        assert cli(["prepare-data", "--labels", str(root / name / "labels.txt"), "--images", str(root / name),
                    "--dataset-name", name, "--output-dir", str(root), "--no-split"]) == 0  # fmt: skip
        files.append(str(root / f"{name}_all.jsonl"))
    return files


def _args(tiny_path, files, out, *extra) -> list[str]:
    return ["--config", "train/recipes/tiny_cpu.yaml", "--model_name_or_path", str(tiny_path),
            "--train_files", *files, "--output_dir", str(out / "model"), "--num_generations", "4",
            "--per_device_train_batch_size", "8", "--max_steps", "2", "--logging_steps", "1",
            "--fidelity_scope", "global", "--dataloader_num_workers", "0", *extra]  # fmt: skip


@pytest.mark.slow
def test_global_scope_sees_every_rollout_and_batches_stay_in_one_dataset(tiny_path, two_datasets, tmp_path):
    result = _torchrun(tmp_path, _args(tiny_path, two_datasets, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    for record in ranks:
        call = record["last_call"]
        assert call["local_rollouts"] == 8 and call["scope_rollouts"] == 16  # both processes' rollouts, once each
        assert len(call["local_datasets"]) == 1  # this device's batch: one dataset
        steps = [h for h in record["log_history"] if "fidelity/rollouts_in_scope" in h]
        assert len(steps) == 2
        assert all(h["fidelity/rollouts_in_scope"] == 16.0 for h in steps)
        assert all(h["fidelity/datasets_per_device_batch"] == 1.0 for h in steps)
    union = sorted({d for r in ranks for d in r["last_call"]["local_datasets"]})
    assert all(r["last_call"]["scope_datasets"] == union for r in ranks)  # the gathered scope = both devices
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-12)  # DDP kept the ranks in sync


@pytest.mark.slow
def test_per_device_layout_that_splits_groups_is_refused(tiny_path, two_datasets, tmp_path):
    # TRL accepts 2 x 6 = 12 completions for G=4 globally, but each device would hold 1.5 images.
    result = _torchrun(tmp_path, _args(tiny_path, two_datasets, tmp_path, "--per_device_train_batch_size", "6"))
    assert result.returncode != 0
    assert "6 x 1 = 6 completions, which is not a multiple of num_generations=4" in result.stderr
