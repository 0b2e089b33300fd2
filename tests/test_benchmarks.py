"""The benchmark scripts run end to end in --quick mode on the tiny model and print the rows they promise.

The scripts are plain files in benchmarks/ (not a package): each is imported from its path, with its folder on
sys.path for the shared `common` module, as `python benchmarks/SCRIPT.py` would have it.
"""

import importlib.util
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def load_script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)  # spawned cells unpickle their function by module name
        spec.loader.exec_module(module)
        return module

    return load


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of every markdown table row of `text` whose first cell is `first_cell`."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()]
    return [row for row in rows if row and row[0] == first_cell]


def test_common_table_and_timer(load_script):
    common = load_script("common")
    table = common.markdown_table(["a", "b"], [["x", 1.5]])
    assert table.splitlines() == ["| a | b |", "|---|---:|", "| x | 1.5 |"]
    timing = common.Timing((2.0, 1.0, 4.0), items=4)
    assert timing.median == 2.0 and timing.rate == 2.0 and timing.rate_range == (1.0, 4.0)
    assert timing.rate_text(1) == "2.0 (1.0-4.0)"
    calls = []
    assert len(common.time_repeats(lambda: calls.append(1), 3).seconds) == 3 and len(calls) == 4  # + warm-up
    first, second = common.synthetic_images(2, 32, 24)
    assert first.size == (32, 24) and first.tobytes() != second.tobytes()
    assert common.synthetic_images(1, 32, 24)[0].tobytes() == first.tobytes()  # deterministic
    with common.PeakMemory("cpu") as memory:
        block = bytearray(64 * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    assert memory.peak_mib > 32


def test_bench_scoring_quick(load_script, capsys):
    bench = load_script("bench_scoring")
    cells = bench.main(["--quick"])
    out = capsys.readouterr().out
    assert {(cell.path, cell.batch_size) for cell in cells} == {(p, b) for p in bench.PATHS for b in (1, 2)}
    header = table_rows(out, "batch")[0]
    assert header[1:4] == ["first-digit img/s", "number img/s", "generate+parse img/s"]
    assert "number / first-digit" in header and "peak MiB generate+parse" in header
    for batch in ("1", "2"):
        (row,) = table_rows(out, batch)
        assert len(row) == len(header) and row[4].endswith("x")
        assert float(row[1]) > 0 and float(row[3]) > 0
    assert "vision tower" in out and "memory-bound" in out


@pytest.mark.slow
def test_bench_scoring_fresh_processes(load_script, capsys):
    bench = load_script("bench_scoring")
    cells = bench.run_bench("tiny", (2,), num_images=2, size=(56, 56), repeats=2, answer_tokens=2)
    assert [cell.path for cell in cells] == list(bench.PATHS)
    assert all(len(cell.timing.seconds) == 2 and cell.peak_mib == cell.peak_mib for cell in cells)  # not NaN
    assert "| 2 |" in bench.format_table(cells)


@pytest.mark.slow
def test_bench_rewards_quick(load_script, capsys):
    bench = load_script("bench_rewards")
    result = bench.main(["--quick"])
    out = capsys.readouterr().out
    for name in ("HF processor (PIL in)", "ours, torch, forward + backward", "score(PIL list)",
                 "as_differentiable_reward()(tensor), forward + backward"):  # fmt: skip
        assert len(table_rows(out, name)) == 1, name
    rows = table_rows(out, "quick")
    assert [(row[1], row[2]) for row in rows] == [
        ("first-digit", "no"),
        ("first-digit", "yes"),
        ("number", "no"),
        ("number", "yes"),
    ]
    memory = {(row.readout, row.checkpointing): row for row in result["activation_memory"]}
    assert memory[("number", False)].total > memory[("first-digit", False)].total > 0
    assert memory[("first-digit", True)].text_layer < memory[("first-digit", False)].text_layer  # checkpointing helps
    assert out.count("the number readout keeps") == 2 and "% (target: at most +10%)" in out


def test_shape_only_products_count_what_computed_products_do(load_script):
    """The cheap count (products replaced by zeros of the right shape) saves exactly the bytes the real one does."""
    bench = load_script("bench_rewards")
    from vq_reward.hub import tiny_checkpoint
    from vq_reward.scorer import VisualQualityScorer, load_processor

    processor = load_processor(str(tiny_checkpoint()), min_pixels=3136, max_pixels=12845056)
    text, vision = bench.QUICK_SIZE
    model = bench._random_qwen(processor, text, vision, 1, 2, (1,), zeros=False)
    for readout in bench.READOUT_NAMES:
        scorer = VisualQualityScorer(model, processor, readout=readout)
        for checkpointing in (False, True):
            reward = scorer.as_differentiable_reward(gradient_checkpointing=checkpointing)
            cheap = bench._saved_bytes(reward, model, 112, shape_only=True)
            assert cheap == bench._saved_bytes(reward, model, 112, shape_only=False) > 0, (readout, checkpointing)


@pytest.mark.slow
def test_bench_rewards_check_every_depth(load_script, capsys):
    bench = load_script("bench_rewards")
    bench.main(["--quick", "--check", "--activation-memory"])
    assert "checked equal" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_learning_quick(load_script, tmp_path, capsys):
    bench = load_script("bench_learning")
    summary = bench.main(["--quick", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert "held-out SRCC before:" in out and "held-out SRCC after:" in out
    assert summary["steps"] == 2 and set(summary["after"]) == {"all", "blur", "darken"}
    assert summary["train_images"] == 6 * 11 and (tmp_path / "curve.png").exists()
    assert (tmp_path / "data" / "train" / "labels.txt").exists()  # written by make_distorted_set


@pytest.mark.slow
def test_bench_qinsight_quick(load_script, tmp_path, capsys):
    bench = load_script("bench_qinsight")
    summary = bench.main(["--quick", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert "held-out before:" in out and "held-out after:" in out
    assert summary["steps"] == 2 and summary["train_rows"] == 6 * 21 and summary["held_out_images"] == 8 * 21
    assert 0 <= summary["after"]["class"] <= 1 and (tmp_path / "curve.png").exists()
