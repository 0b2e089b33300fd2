"""Rows -> TRL dataset: prompts per task, lazy resized images, the answer-prefix chat template, digit token ids."""

import pytest
from transformers import AutoProcessor


pytest.importorskip("trl")
from vq_reward.images import ImageInputError  # noqa: E402
from vq_reward.readout import NumberTokens  # noqa: E402
from vq_reward.train.config import VQScriptArguments  # noqa: E402
from vq_reward.train.dataset import build_dataset, with_answer_prefix  # noqa: E402


QWEN_STYLE = "{% for m in messages %}...{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"


@pytest.mark.parametrize("template", [QWEN_STYLE, QWEN_STYLE.replace("\n", "\\n")])
def test_answer_prefix_goes_into_the_generation_prompt(template):
    patched = with_answer_prefix(template, "<answer>")
    assert patched.replace("<answer>", "") == template and "assistant\n<answer>" in patched.replace("\\n", "\n")


def test_answer_prefix_refuses_an_unknown_template():
    with pytest.raises(ValueError, match="cannot find the generation prompt"):
        with_answer_prefix("{{ messages }}", "<answer>")


def test_patched_tiny_template_renders_the_scorer_prompt(tiny_path, scorer):
    processor = AutoProcessor.from_pretrained(tiny_path)
    processor.chat_template = with_answer_prefix(processor.chat_template, "<answer>")
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": scorer.question}]}]
    rendered = processor.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    assert (
        rendered
        == scorer.processor.apply_chat_template(message, tokenize=False, add_generation_prompt=True) + "<answer>"
    )
    assert len(NumberTokens.of(processor.tokenizer).first) == 5


def test_dataset_builds_prompts_and_loads_resized_images(tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 200), "gray").save(tmp_path / "a.png")
    rows = [{"id": 0, "image": str(tmp_path / "a.png"), "dataset_name": "A", "mos": 3.0}]
    dataset = build_dataset(rows, VQScriptArguments(thinking=False), min_pixels=3136, max_pixels=28 * 28 * 16)
    item = dataset[0]
    assert item["task"] == "score" and item["prompt"][-1]["role"] == "user"
    assert item["prompt"][-1]["content"].endswith("in <answer> </answer> tags.")
    assert item["image"].size == (112, 84) and item["mos"] == 3.0  # smart-resized: 300x200 -> 112x84 (16 x 28^2 max)
    with pytest.raises(ValueError, match="task 'caption'"):
        build_dataset([{**rows[0], "task": "caption"}], VQScriptArguments(), 3136, 50176)
    missing = build_dataset([{**rows[0], "image": str(tmp_path / "gone.png")}], VQScriptArguments(), 3136, 50176)
    with pytest.raises(ImageInputError, match="gone.png': no such file"):  # rows are checked before training too
        missing[0]


def test_script_arguments_refuse_contradictions():
    with pytest.raises(ValueError, match="answer_prefix needs thinking=False"):
        VQScriptArguments(thinking=True, force_answer_prefix=True)
    with pytest.raises(ValueError, match="digit_only needs force_answer_prefix=True"):
        VQScriptArguments(thinking=False, digit_only=True)


def test_training_images_are_the_images_the_scorer_sees(tmp_path, scorer):
    # Transparent and 16-bit files must look the same in training as at scoring time (white background, 8-bit).
    import numpy as np
    from PIL import Image

    Image.new("RGBA", (90, 60), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    Image.fromarray(np.full((60, 90), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    rows = [{"id": i, "image": str(tmp_path / name), "dataset_name": "A", "mos": 3.0}
            for i, name in enumerate(["clear.png", "deep.png"])]  # fmt: skip
    dataset = build_dataset(rows, VQScriptArguments(), scorer.min_pixels, scorer.max_pixels)
    for row in range(2):
        (expected,) = scorer.prepare(rows[row]["image"])
        assert np.array_equal(np.asarray(dataset[row]["image"]), np.asarray(expected))
        assert np.asarray(expected).min() == 255  # white, not the black that convert("RGB") gives
