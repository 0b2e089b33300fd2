"""benchmarks/bench_hacking.py: its true-quality metrics, and the --quick run end to end on the taught model."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling `common`
    spec = importlib.util.spec_from_file_location("bench_hacking", BENCHMARKS / "bench_hacking.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_hacking", module)
    spec.loader.exec_module(module)
    return module


def test_psnr_and_ssim(bench):
    clean = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(bench.psnr((clean + 0.1).clamp(0, 1), clean), bench.psnr(clean, clean - 0.1), atol=3)
    assert bench.psnr(torch.full_like(clean, 0.5), torch.full_like(clean, 0.6)).tolist() == pytest.approx([20, 20])
    assert bench.ssim(clean, clean).tolist() == pytest.approx([1.0, 1.0])
    noisy = (clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (bench.ssim(noisy, clean) < 0.9).all() and (bench.ssim(noisy, clean) > bench.ssim(1 - clean, clean)).all()


def test_both_policies_start_as_the_identity(bench):
    images = torch.rand(2, 3, 28, 28)
    assert torch.equal(bench.Restorer()(images), images)
    enhancer = bench.Enhancer()
    assert torch.allclose(bench.apply_edits(images, enhancer(images)), images, atol=1e-6)


def test_group_advantages(bench):
    import numpy as np

    rewards = np.array([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    advantages = bench.group_advantages(rewards, group_size=3)
    assert advantages[:3].tolist() == pytest.approx([-1, 0, 1], abs=1e-3) and advantages[3:].tolist() == [0, 0, 0]
    assert bench.group_advantages(rewards * 10, 3, scale=False)[:3].tolist() == pytest.approx([-10, 0, 10])


@pytest.mark.slow
def test_quick_run(bench, tmp_path, capsys):
    summary = bench.main(["--quick", "--output", str(tmp_path)])
    assert {path.name for path in tmp_path.iterdir()} >= {"summary.json", "curves.png", "monitor.png"}
    assert json.loads((tmp_path / "summary.json").read_text())["table"] == summary["table"]
    refl, grpo = summary["refl"], summary["grpo"]
    assert len(refl) == 5 and len(grpo) == 4
    starts = [run["evaluations"][0] for run in [*refl.values(), *grpo.values()]]
    assert all(start == starts[0] for start in starts)  # every policy starts as the identity on the same crops
    held_out = bench.make_data(2, held_out=True, seed=1)
    assert starts[0]["psnr"] == pytest.approx(bench.psnr(held_out.degraded, held_out.clean).mean().item(), abs=1e-4)
    for run in [*refl.values(), *grpo.values()]:
        assert len(run["steps"]) == 6 and [e["step"] for e in run["evaluations"]] == [0, 3, 6]
        assert all(0 < point["ssim"] <= 1 and point["psnr"] > 5 for point in run["evaluations"])
    assert len([line for line in summary["table"].splitlines() if line.startswith("| ")]) == 1 + 9
    assert "summary.json" in capsys.readouterr().out
