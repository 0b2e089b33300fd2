"""The benchmark scripts run end to end in --quick mode on the tiny model and print the rows they promise.

The scripts are plain files in benchmarks/ (not a package): each is imported from its path, with its folder on
sys.path for the shared `common` module, as `python benchmarks/SCRIPT.py` would have it.
"""

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
VLLM_PYTHON = os.environ.get("VQ_REWARD_VLLM_PYTHON")


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
    from vq_reward.loading import load_processor
    from vq_reward.scorer import VisualQualityScorer

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
    assert summary["model"] == "base" and summary["steps"] == 2
    assert set(summary["after"]) == {"all", "right", "unseen"} | {f"{s}/{k}" for s in ("right", "unseen")
                                                                   for k in ("blur", "darken")}  # fmt: skip
    assert summary["train_images"] == 6 * 11 + 8 * 2  # left-half crops x (clean + 2 kinds x 5) + procedural x 2
    assert summary["held_out_images"] == {"right": 6 * 11, "unseen": 2 * 11}
    assert 0 <= summary["parse_rate"]["after"] <= 1 and summary["parse_rate"]["before"] == 1.0  # base: the format
    assert (tmp_path / "curve.png").exists() and (tmp_path / "curve_steps.png").exists()
    assert (tmp_path / "model" / "model.safetensors").exists()  # the trained checkpoint, loadable
    assert (tmp_path / "data" / "train" / "labels.txt").exists()  # written by make_distorted_set


@pytest.mark.slow
def test_bench_qinsight_quick(load_script, tmp_path, capsys):
    bench = load_script("bench_qinsight")
    summary = bench.main(["--quick", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert "held-out before:" in out and "held-out after:" in out
    assert summary["steps"] == 2 and summary["train_rows"] == 6 * 21 and summary["held_out_images"] == 8 * 21
    assert 0 <= summary["after"]["class"] <= 1 and (tmp_path / "curve.png").exists()
    assert summary["model"] == "base" and -1 <= summary["after"]["score_srcc"] <= 1


@pytest.mark.slow
def test_bench_qinsight_multi_task_quick(load_script, tmp_path):
    bench = load_script("bench_qinsight")
    summary = bench.main(["--quick", "--tasks", "degradation", "score", "--output", str(tmp_path)])
    rows = [json.loads(line) for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    assert sorted({row["task"] for row in rows}) == ["degradation", "score"] and len(rows) == 2 * 6 * 21
    assert summary["tasks"] == ["degradation", "score"] and summary["steps"] == 2


# -- bench_gpu.py ----------------------------------------------------------------------------------------------------

GPU_HEADER = ["batch", "path", "images/s", "vs hf-generate", "peak MiB", "memory", "timed"]


def test_bench_gpu_7b_checkpoint_is_the_released_architecture(load_script, tmp_path):
    bench = load_script("bench_gpu")
    from transformers import AutoConfig

    from vq_reward.loading import load_processor

    folder = bench.write_checkpoint(tmp_path / "7B", "7B")
    assert not list(folder.glob("*.safetensors"))  # config and processor files only: the weights are random
    config = AutoConfig.from_pretrained(folder)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (3584, 18944, 28)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (28, 4, 152064)
    assert text.rope_parameters["rope_theta"] == 1e6 and text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads) == (32, 1280, 3420, 16)
    assert vision.window_size == 112 and vision.fullatt_block_indexes == [7, 15, 23, 31]
    assert (vision.out_hidden_size, vision.spatial_merge_size, vision.patch_size, vision.temporal_patch_size) == (
        3584, 2, 14, 2
    )  # fmt: skip
    assert config.architectures == ["Qwen2_5_VLForConditionalGeneration"]  # vLLM needs it to pick the generator
    assert bench.parameter_count(folder) == 8_292_166_656  # Qwen2.5-VL-7B-Instruct's count
    processor = load_processor(str(folder))
    assert processor.image_processor.size["shortest_edge"] == 3136
    assert processor.image_processor.size["longest_edge"] == 12845056
    tokens = len(processor.tokenizer)
    assert tokens < text.vocab_size  # the stand-in tokenizer: generation must stay below its size
    assert all(i < tokens for i in (config.image_token_id, config.vision_start_token_id, text.eos_token_id))


def test_bench_gpu_quick_hf(load_script, capsys):
    bench = load_script("bench_gpu")
    start = time.perf_counter()
    result = bench.main(["--quick", "--paths", "hf"])
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    rows = {(row.name, row.batch_size): row for row in result["rows"]}
    assert set(rows) == {(name, b) for name in ("hf-first-digit", "hf-number", "hf-generate") for b in (1, 2)}
    for row in rows.values():
        assert not row.skipped and row.images == 4 and len(row.seconds) == 1 and row.peak_mib > 0, row
    assert table_rows(out, "batch")[0] == GPU_HEADER
    for batch in ("1", "2"):
        table = {row[1]: row for row in table_rows(out, batch)}
        assert table["hf-generate"][3] == "1.00x" and table["hf-number"][3].endswith("x")
        assert {row[5] for row in table.values()} == {"rss"} and all(row[6] == "4 x 1" for row in table.values())
    assert "machine:" in out and "252 image tokens" in out and "vocab 1024" in out and "What the numbers mean" in out
    assert result["problems"] == [] and elapsed < 60


def test_bench_gpu_says_why_the_vllm_paths_are_skipped(load_script, capsys):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this environment")
    bench = load_script("bench_gpu")
    result = bench.main(["--quick", "--paths", "vllm", "--vllm-python", sys.executable])
    out = capsys.readouterr().out
    assert result["rows"] == [] and "vLLM does not import in" in result["vllm_skipped"]
    assert "vLLM paths skipped:" in out and "VQ_REWARD_VLLM_PYTHON" in out
    assert [row[2] for row in table_rows(out, "1")] == ["not run"] * 3  # first-digit, number, thinking


class SimulatedClock:
    """Stands in for the `time` module: it moves only when a simulated batch runs, whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def time(self) -> float:
        return self.now

    perf_counter = time

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_bench_gpu_cells_fit_the_time_they_are_given(load_script, monkeypatch):
    bench = load_script("bench_gpu")
    clock = SimulatedClock()
    monkeypatch.setattr(bench, "time", clock)
    per_image = 0.05
    spec = {"deadline": clock.time() + 1.5, "batch_sizes": [1, 4, 16], "repeats": 3}
    rows = []
    cells = bench.Cells(spec, "hf-generate", bench.PeakSampler("rss"), rows.append)
    for batch_size in spec["batch_sizes"]:
        cells.measure("hf-generate", batch_size, lambda batch: clock.advance(per_image * len(batch)), list(range(16)))
    assert clock.time() <= spec["deadline"]
    first, _, last = rows
    assert not first.skipped and 1 <= first.images < 16 and first.seconds  # fewer images per pass, still timed
    assert last.skipped.startswith("one batch would take ~1 s")  # 16 x 0.05 s, predicted from batch 4
    assert all(row.skipped or row.peak_mib > 0 for row in rows)


def test_bench_gpu_kills_a_worker_past_its_time_with_what_it_started(load_script, tmp_path, monkeypatch):
    bench = load_script("bench_gpu")
    monkeypatch.setattr(bench, "KILL_GRACE_S", 0.5)
    fake = tmp_path / "python"  # stands in for an interpreter whose worker never ends (and has a child)
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {tmp_path / 'child'}\nwait\n")
    fake.chmod(0o755)
    start = time.monotonic()
    reason = bench.run_path_process(str(fake), {"deadline": time.time() + 1}, "hf-generate", tmp_path / "w.log", print)
    assert reason == "killed at the end of its time budget" and time.monotonic() - start < 10
    child = Path("/proc") / (tmp_path / "child").read_text().strip() / "stat"
    deadline = time.monotonic() + 5
    while child.exists() and child.read_text().split(")")[-1].split()[0] not in "ZX" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not child.exists() or child.read_text().split(")")[-1].split()[0] in "ZX"  # gone (or a dead zombie)


@pytest.mark.slow
def test_bench_gpu_quick_hf_in_fresh_processes(load_script, capsys):
    bench = load_script("bench_gpu")
    result = bench.main(["--quick", "--paths", "hf-first-digit", "hf-generate", "--fresh-processes"])
    out = capsys.readouterr().out
    assert result["problems"] == [] and {row.name for row in result["rows"]} == {"hf-first-digit", "hf-generate"}
    assert all(not row.skipped and row.peak_mib > 0 for row in result["rows"])
    assert set(result["infos"]) == {"hf-first-digit", "hf-generate"} and "each in a fresh process" in out


@pytest.mark.vllm
@pytest.mark.skipif(
    not VLLM_PYTHON,
    reason="VQ_REWARD_VLLM_PYTHON is not set: point it at the python of a vLLM environment "
    '(ENV="$(.ci/vllm-env.sh | tail -n1)"; VQ_REWARD_VLLM_PYTHON="$ENV/bin/python" python -m pytest -m vllm)',
)
def test_bench_gpu_quick_vllm(load_script, capsys):
    bench = load_script("bench_gpu")
    result = bench.main(["--quick", "--vllm-python", VLLM_PYTHON])  # the HF paths too: the ratios need hf-generate
    out = capsys.readouterr().out
    assert result["problems"] == [] and result["vllm_skipped"] is None
    rows = {(row.name, row.batch_size): row for row in result["rows"]}
    for name in ("vllm-first-digit", "vllm-number", "vllm-thinking"):
        for batch in (1, 2):
            row = rows[(name, batch)]
            assert not row.skipped and row.images == 4 and row.peak_mib > 0, row
    assert result["infos"]["vllm-readout"]["versions"]["vllm"] and "load_format" in out
    assert result["infos"]["vllm-thinking"]["model_vocab"] == 1024 > result["infos"]["vllm-thinking"]["tokenizer_size"]
    for batch in ("1", "2"):
        table = {row[1]: row for row in table_rows(out, batch)}
        assert len(table) == 8 and all(row[3].endswith("x") for row in table.values())  # HF, Ray and vLLM rows
        assert {"ray-first-digit", "ray-number"} <= set(table)
