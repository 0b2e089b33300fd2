"""The serving benchmarks run end to end (slow: each starts a local Ray): bench_serving.py --quick prints the rows it
promises (in-process both readouts, the Ray server at 1 and 8 images per request with 1 and 4 clients), and
bench_gpu.py's Ray path measures both readouts on the tiny architecture."""

import importlib.util
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = pytest.mark.slow


def load_script(monkeypatch, name: str):
    """A benchmark script imported from its path, its folder on sys.path, as `python benchmarks/NAME.py` has it."""
    pytest.importorskip("ray.serve")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_bench_serving_quick(monkeypatch, capsys):
    rows = load_script(monkeypatch, "bench_serving").main(["--quick"])
    out = capsys.readouterr().out
    cells = {(row.path, row.readout, row.per_request, row.clients) for row in rows}
    assert {("in-process", "number"), ("in-process", "first-digit")} <= {cell[:2] for cell in cells}
    assert {("ray", "number", str(n), str(c)) for n in (1, 8) for c in (1, 4)} <= cells
    for row in rows:
        assert row.timing.rate > 0 and row.peak_mib > 0 and row.latencies, row
    assert "| path | readout | replicas | images/request | clients | images/s | p50 ms | p95 ms |" in out
    assert "vLLM server rows skipped" in out or any(row.path == "vllm server" for row in rows)


def test_bench_gpu_quick_ray(monkeypatch, capsys):
    result = load_script(monkeypatch, "bench_gpu").main(["--quick", "--paths", "ray"])
    out = capsys.readouterr().out
    rows = {(row.name, row.batch_size): row for row in result["rows"]}
    assert set(rows) == {(name, b) for name in ("ray-first-digit", "ray-number") for b in (1, 2)}, result
    for row in rows.values():
        assert not row.skipped and row.images == 4 and row.peak_mib > 0 and row.memory == "tree", row
    assert result["problems"] == [] and "ray-number" in out
