"""Q-Insight training data: degradation and comparison rows from the synthetic generator and from official-format
files, split by content, mixed with score rows in one JSONL, read back per task, and turned into TRL prompts whose
images land where Q-Insight puts them (interleaved for comparison) -- the very prompts the scorer's readouts use."""

import json

import pytest

from vq_reward.cli import main as cli
from vq_reward.data.qinsight_rows import comparison_rows, degradation_rows, synthetic_comparisons
from vq_reward.data.rows import DataFileError, read_jsonl, write_jsonl
from vq_reward.qinsight import COMPARISON_RESULTS, DEGRADATION_CLASSES, SEVERITIES


pytest.importorskip("trl")
from trl.data_utils import prepare_multimodal_messages  # noqa: E402

from vq_reward import prompts, readout  # noqa: E402
from vq_reward.train.config import VQScriptArguments  # noqa: E402
from vq_reward.train.dataset import build_dataset, load_rows, with_answer_prefix  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One 56x56 crop of each sample photo; clean, blur and darken at severities 2 and 5; all three tasks."""
    root = tmp_path_factory.mktemp("qinsight")
    synth = root / "synth"
    assert cli(["distort", "examples/images", str(synth), "--crops", "1", "--crop-size", "56",
                "--kinds", "blur", "darken", "--levels", "2", "5"]) == 0  # fmt: skip
    assert cli(["prepare-data", "--labels", str(synth / "labels.txt"), "--images", str(synth), "--reference-pattern",
                "^(.+)__", "--dataset-name", "synthetic", "--output-dir", str(root)]) == 0  # fmt: skip
    assert cli(["prepare-degradation", "--labels", str(synth / "distortions.jsonl"), "--dataset-name", "synthetic",
                "--output-dir", str(root)]) == 0  # fmt: skip
    assert cli(["prepare-comparison", "--distortions", str(synth / "distortions.jsonl"), "--dataset-name",
                "synthetic", "--output-dir", str(root), "--pairs-per-reference", "5"]) == 0  # fmt: skip
    parts = [root / f"synthetic_{task}train.jsonl" for task in ("", "degradation_", "comparison_")]
    assert cli(["merge-data", *map(str, parts), "--output", str(root / "mixed.jsonl")]) == 0
    return root


def test_degradation_rows_carry_q_insight_names_and_stay_with_their_content(data):
    rows = [r for split in ("train", "val", "test") for r in read_jsonl(data / f"synthetic_degradation_{split}.jsonl")]
    assert len(rows) == 8 * 5  # 8 photos x (clean + 2 kinds x 2 levels)
    assert {(r["distortion_class"], r["severity"]) for r in rows} == {
        ("null", "null"), ("blur", "moderate"), ("blur", "catastrophic"), ("darken", "moderate"),
        ("darken", "catastrophic"),
    }  # fmt: skip
    assert all(r["task"] == "degradation" and r["image"].endswith(".png") for r in rows)
    splits_of = {}
    for row in rows:
        splits_of.setdefault(row["reference"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values())  # every version of a content in one split
    # ... and the split a content's score rows and comparison rows are in (same rule, same seed): no leak on mixing.
    for task in ("", "comparison_"):
        for split in ("train", "val", "test"):
            for row in read_jsonl(data / f"synthetic_{task}{split}.jsonl"):
                assert splits_of[row["reference"]] == {split}


def test_synthetic_comparisons_rank_by_severity_with_the_clean_crop_as_reference(data):
    rows = [r for split in ("train", "val", "test") for r in read_jsonl(data / f"synthetic_comparison_{split}.jsonl")]
    assert len(rows) == 8 * 5 and {r["result"] for r in rows} <= set(COMPARISON_RESULTS)
    for row in rows:
        reference, a, b = row["images"]
        assert reference.endswith("__clean.png") and a != b and row["reference"] in reference
        level_a, level_b = row["levels"]
        expected = "Similar" if level_a == level_b else "Image A" if level_a < level_b else "Image B"
        assert row["result"] == expected
    counts = {result: sum(r["result"] == result for r in rows) for result in COMPARISON_RESULTS}
    assert counts["Similar"] == 8  # round(5 x 0.2) per content
    assert counts["Image A"] + counts["Image B"] == 32 and min(counts["Image A"], counts["Image B"]) >= 8


def test_one_jsonl_mixes_the_three_tasks_and_is_read_back_per_task(data, tmp_path):
    rows = read_jsonl(data / "mixed.jsonl")
    assert {r["task"] for r in rows} == {"score", "degradation", "comparison"}
    assert [r["id"] for r in rows] == list(range(len(rows)))
    # Each row is checked for its own task's keys, with the file and line in the message.
    bad = write_jsonl([rows[0], {"task": "degradation", "image": "a.png", "severity": "slight"}], tmp_path / "b.jsonl")
    with pytest.raises(DataFileError, match=r"b.jsonl:2: missing \['distortion_class'\]; degradation rows need"):
        read_jsonl(bad)
    relative = write_jsonl([{"task": "comparison", "images": ["r.png", "a.png", "b.png"], "result": "Similar"}],
                           tmp_path / "c.jsonl")  # fmt: skip
    assert read_jsonl(relative)[0]["images"][0] == str(tmp_path / "r.png")  # resolved against the file's folder


def test_prompts_and_images_reach_trl_in_q_insight_layout(data, scorer):
    rows = load_rows([data / "mixed.jsonl"])
    args = VQScriptArguments(prompt_style="q-insight", thinking=False, force_answer_prefix=True)
    dataset = build_dataset(rows, args, min_pixels=3136, max_pixels=28 * 28 * 16)
    by_task = {dataset[i]["task"]: dataset[i] for i in range(len(dataset))}
    assert "image" not in dataset.column_names  # a multi-image row turns every row's image into a list
    assert [len(by_task[t]["images"]) for t in ("score", "degradation", "comparison")] == [1, 1, 3]
    assert by_task["degradation"]["distortion_class"] is not None and by_task["comparison"]["result"] is not None
    # TRL fills the explicit image blocks in order; the rendered prompt is the scorer readout's, plus the prefix.
    processor = scorer.processor
    template = with_answer_prefix(processor.chat_template, args.answer_prefix)
    for task, messages in (
        ("degradation", prompts.degradation_messages()),
        ("comparison", prompts.comparison_messages()),
    ):
        item = by_task[task]
        filled = prepare_multimodal_messages(item["prompt"], images=item["images"])
        rendered = processor.apply_chat_template(
            filled, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        assert rendered == readout.chat_text(scorer.processor, messages) + "<think>\n\n</think>\n<answer>\n"
    order = [rendered.index(s) for s in ("Reference Image:<|vision_start|>", "Image A:<|vision_start|>",
                                         "Image B:<|vision_start|>", "Decide which")]  # fmt: skip
    assert order == sorted(order)
    score = prepare_multimodal_messages(by_task["score"]["prompt"], images=by_task["score"]["images"])
    assert score[0]["content"][0]["text"].startswith("A conversation between User and Assistant.")
    assert score[1]["content"][0]["type"] == "image" and "rating" in score[1]["content"][1]["text"]


def test_dataset_refuses_mismatched_rows(tmp_path):
    image = "examples/images/chelsea.jpg"
    degradation_row = {
        "id": 0,
        "image": image,
        "task": "degradation",
        "distortion_class": "blur",
        "severity": "slight",
    }
    with pytest.raises(ValueError, match="is a degradation row, a Q-Insight task; set prompt_style: q-insight"):
        build_dataset([degradation_row], VQScriptArguments(), 3136, 50176)
    two = {"id": 1, "images": [image, image], "task": "comparison", "result": "Similar"}
    with pytest.raises(ValueError, match="has 2 images; it needs exactly 3"):
        build_dataset([two], VQScriptArguments(prompt_style="q-insight"), 3136, 50176)


def test_official_format_files(tmp_path):
    metas = tmp_path / "train_dist.json"
    metas.write_text(json.dumps([{"image": "x/1.png", "distortion_class": "compression", "severity": "obvious"}]))
    assert cli(["prepare-degradation", "--labels", str(metas), "--dataset-name", "KADIS", "--output-dir",
                str(tmp_path), "--no-split"]) == 0  # fmt: skip
    (row,) = read_jsonl(tmp_path / "KADIS_degradation_all.jsonl")
    assert (row["image"], row["reference"], row["split"]) == (str(tmp_path / "x" / "1.png"), "1", "all")
    pairs = [{"ref_image": "r.png", "ImageA": "a.png", "ImageB": "b.png", "result": "Image B"}]
    assert comparison_rows(pairs, "/d", "DiffIQA")[0]["images"] == ["/d/r.png", "/d/a.png", "/d/b.png"]
    with pytest.raises(DataFileError, match="distortion_class 'jpeg' is not one of .*Q-Insight calls JPEG"):
        degradation_rows([{"image": "a.png", "distortion_class": "jpeg", "severity": "slight"}], "/d", "X")
    with pytest.raises(DataFileError, match="severity 'slight' of class 'null' is not one of \\['null'\\]"):
        degradation_rows([{"image": "a.png", "distortion_class": "null", "severity": "slight"}], "/d", "X")
    with pytest.raises(DataFileError, match="result 'A' is not one of"):
        comparison_rows([{**pairs[0], "result": "A"}], "/d", "X")
    assert set(DEGRADATION_CLASSES) >= {"compression"} and SEVERITIES[0] == "slight"


def test_synthetic_comparisons_need_a_clean_reference_and_enough_pairs():
    labels = [
        {"image": f"c__blur{lv}.png", "reference": "c", "distortion_class": "blur", "level": lv} for lv in (1, 2)
    ]
    with pytest.raises(DataFileError, match="no clean image"):
        synthetic_comparisons(labels, "/d", "X", pairs_per_reference=1, similar_fraction=0.0)
    labels.append({"image": "c__clean.png", "reference": "c", "distortion_class": "null", "level": 0})
    with pytest.raises(ValueError, match="0 equal-level and 1 unequal-level pairs"):
        synthetic_comparisons(labels, "/d", "X", pairs_per_reference=2, similar_fraction=0.5)
