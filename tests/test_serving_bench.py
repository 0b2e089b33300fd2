"""benchmarks/bench_serving.py --quick runs end to end (slow: it starts a local Ray) and prints the rows it
promises: in-process both readouts, the Ray server at 1 and 8 images per request with 1 and 4 clients."""

import importlib.util
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_bench_serving_quick(monkeypatch, capsys):
    pytest.importorskip("ray.serve")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("bench_serving", BENCHMARKS / "bench_serving.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_serving", bench)
    spec.loader.exec_module(bench)
    rows = bench.main(["--quick"])
    out = capsys.readouterr().out
    cells = {(row.path, row.readout, row.per_request, row.clients) for row in rows}
    assert {("in-process", "number"), ("in-process", "first-digit")} <= {cell[:2] for cell in cells}
    assert {("ray", "number", str(n), str(c)) for n in (1, 8) for c in (1, 4)} <= cells
    for row in rows:
        assert row.timing.rate > 0 and row.peak_mib > 0 and row.latencies, row
    assert "| path | readout | replicas | images/request | clients | images/s | p50 ms | p95 ms |" in out
    assert "vLLM server rows skipped" in out or any(row.path == "vllm server" for row in rows)
