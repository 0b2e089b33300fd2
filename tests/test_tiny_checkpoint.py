import filecmp
import os
import socket
import subprocess
import sys

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from vq_reward.prompts import image_message
from vq_reward.smoke import build_tiny_checkpoint


def test_byte_identical_across_builds(tiny_path, tmp_path):
    again = build_tiny_checkpoint(tmp_path / "again")
    files = sorted(p.name for p in tiny_path.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(tiny_path, again, files, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(files)


@pytest.mark.slow
def test_byte_identical_across_builds_and_processes(tiny_path, tmp_path):
    again = build_tiny_checkpoint(tmp_path / "again")
    code = "import sys; from vq_reward.smoke import build_tiny_checkpoint as b; b(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "other")], check=True, capture_output=True)
    files = sorted(p.name for p in tiny_path.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(files)
    for folder in (again, tmp_path / "other"):
        match, mismatch, errors = filecmp.cmpfiles(tiny_path, folder, files, shallow=False)
        assert mismatch == [] and errors == [] and len(match) == len(files)


def test_tokenizer_is_qwen_like(tiny_path):
    tokenizer = AutoProcessor.from_pretrained(tiny_path).tokenizer
    for digit in "0123456789":
        assert len(tokenizer.encode(digit, add_special_tokens=False)) == 1
    assert tokenizer.tokenize("<answer>3.75</answer>")[-7:-3] == ["3", ".", "7", "5"]  # every digit its own token
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2]  # Qwen's special-token order
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert "<think>" not in tokenizer.get_vocab()  # plain text, as in Qwen2.5-VL


def test_chat_template_renders_qwen_format(tiny_path):
    processor = AutoProcessor.from_pretrained(tiny_path)
    message = image_message("Rate it.")
    text = processor.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Rate it.<|im_end|>\n<|im_start|>assistant\n"
    )
    labelled = processor.apply_chat_template(message, tokenize=False, add_generation_prompt=True, add_vision_id=True)
    assert "Picture 1: <|vision_start|>" in labelled
    with_system = processor.apply_chat_template(image_message("Rate it.", system="Be brief."), tokenize=False)
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "helpful" not in with_system


def test_loads_offline_with_stock_classes(tiny_path):
    model = AutoModelForImageTextToText.from_pretrained(tiny_path)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert model.config.text_config.vocab_size == len(AutoProcessor.from_pretrained(tiny_path).tokenizer)
    assert 500_000 < sum(p.numel() for p in model.parameters()) < 1_000_000


def test_a_smoke_build_says_what_it_builds_and_clears_what_killed_builds_left(tmp_path, capsys):
    from vq_reward import hub

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a build killed midway leaves its staging folder, named after its host and PID
    name = f"tiny-qwen2.5-vl-v{hub.SMOKE_VERSION}"
    stale = [f"{name}.partial-{gone.pid}", f"{name}.partial-{socket.gethostname()}-{gone.pid}"]  # 0.2's name, ours
    kept = [f"{name}.partial-{os.getpid()}", f"{name}.partial-other-host-{gone.pid}"]  # a live build; not our host's
    for folder in stale + kept:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text("{}")
    path = hub.tiny_checkpoint(tmp_path)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"vq_reward: building the tiny smoke model (random weights, about a second) in {path} (first use only; "
        "reused after)"
    ]  # and no progress bars
    assert sorted(child.name for child in tmp_path.iterdir()) == sorted([name, *kept])
    assert hub.tiny_checkpoint(tmp_path) == path and capsys.readouterr().err == ""  # built once, then silent
