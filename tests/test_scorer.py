import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import noise_image

from vq_reward import Rating, VisualQualityScorer
from vq_reward.prompts import NON_THINKING_TEMPLATE, QUALITY_QUESTION, THINKING_TEMPLATE


MIXED_SIZES = [(64, 64), (200, 150), (300, 100), (56, 56), (120, 240), (90, 90)]


def test_score_shape_range_and_attributes(scorer):
    scores = scorer.score([noise_image(64, 64, seed=1), noise_image(96, 64, seed=2)])
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert ((scores >= 1) & (scores <= 5)).all()
    assert VisualQualityScorer.score_range == (1.0, 5.0) and VisualQualityScorer.higher_is_better


def test_details_are_a_distribution_and_its_expectation(scorer):
    details = scorer.score_details([noise_image(64, 64, seed=s) for s in range(3)], readout="first-digit")
    assert torch.allclose(details.probs.sum(-1), torch.ones(3))
    assert torch.allclose(details.scores, details.probs @ torch.arange(1.0, 6.0))
    assert details.readout == "first-digit" and details.dot_mass is None
    default = scorer.score_details([noise_image(64, 64, seed=s) for s in range(3)])
    assert default.readout == "number" and torch.allclose(default.probs, details.probs, atol=1e-6)  # same first digit
    assert ((default.std > 0) & (default.std < 2)).all() and default.dot_mass.shape == (3, 4)
    assert ((details.digit_mass > 0) & (details.digit_mass < 1)).all()  # random weights: mass spread over the vocab


def test_single_token_readout_matches_a_manual_forward(scorer):
    # One forward of the chat prompt + "<answer>", softmax over the five digit tokens: the documented readout.
    image = scorer.prepare(noise_image(80, 60))[0]
    question = NON_THINKING_TEMPLATE.format(Question=QUALITY_QUESTION)
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = scorer.processor.apply_chat_template(message, tokenize=False, add_generation_prompt=True) + "<answer>"
    inputs = scorer.processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = scorer.model(**inputs).logits[0, -1]
    digits = scorer.processor.tokenizer.convert_tokens_to_ids(list("12345"))
    expected = (logits[digits].softmax(-1) * torch.arange(1.0, 6.0)).sum()
    assert scorer.score(image, readout="first-digit").item() == pytest.approx(expected.item(), abs=1e-5)


def test_batch_invariance_across_sizes(scorer):
    images = [noise_image(w, h, seed=i) for i, (w, h) in enumerate(MIXED_SIZES)]
    alone = torch.stack([scorer.score(image)[0] for image in images])
    for batch_size in (2, 4, 6):
        together = scorer.score(images, batch_size=batch_size)
        assert (together - alone).abs().max() <= 1e-4
    reordered = scorer.score(images[::-1], batch_size=6)
    assert (reordered.flip(0) - alone).abs().max() <= 1e-4


def test_deterministic_bit_for_bit(scorer, tiny_path):
    images = [noise_image(w, h, seed=i) for i, (w, h) in enumerate(MIXED_SIZES)]
    first = scorer.score(images, batch_size=3)
    assert torch.equal(first, scorer.score(images, batch_size=3))
    assert torch.equal(first, VisualQualityScorer.from_pretrained(tiny_path).score(images, batch_size=3))


def test_every_input_kind_scores_the_same(scorer, tmp_path):
    image = noise_image(100, 70, seed=5)
    image.save(tmp_path / "x.png")
    pixels = np.array(image)
    unit = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    kinds = [str(tmp_path / "x.png"), image, image.convert("RGBA"), pixels, pixels.astype(np.float64) / 255, unit,
             unit[None]]  # fmt: skip
    reference = scorer.score(image)
    for kind in kinds:  # alone: the very same computation, so the very same bits
        assert torch.equal(scorer.score(kind), reference)
    assert (scorer.score(kinds) - reference).abs().max() <= 1e-4  # one mixed batch
    assert torch.equal(scorer.score(unit * 2 - 1, input_range=(-1, 1)), reference)


def test_resize_follows_the_pixel_budget(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(tiny_path, min_pixels=56 * 56, max_pixels=10 * 28 * 28)
    assert (scorer.min_pixels, scorer.max_pixels) == (56 * 56, 10 * 28 * 28)
    sizes = [im.size for im in scorer.prepare([noise_image(512, 384), noise_image(30, 30), noise_image(84, 56)])]
    assert sizes == [(84, 56), (56, 56), (84, 56)]
    assert all(w % 28 == 0 and h % 28 == 0 and 56 * 56 <= w * h <= 10 * 28 * 28 for w, h in sizes)


def test_generate_parses_with_the_shared_parser(scorer):
    ratings = scorer.generate([noise_image(64, 64), noise_image(90, 60)], max_new_tokens=6, do_sample=False)
    assert len(ratings) == 2 and all(isinstance(r, Rating) for r in ratings)
    for rating in ratings:
        # A random model writes no <answer>: the score is reported missing, never made up.
        assert rating.score is None and rating.raw_score is None and isinstance(rating.text, str)
    greedy_again = scorer.generate([noise_image(64, 64), noise_image(90, 60)], max_new_tokens=6, do_sample=False)
    assert [r.text for r in greedy_again] == [r.text for r in ratings]


def test_thinking_and_plain_prompts_are_the_official_templates(scorer):
    assert THINKING_TEMPLATE.format(Question=QUALITY_QUESTION) in scorer.prompt(thinking=True)
    assert NON_THINKING_TEMPLATE.format(Question=QUALITY_QUESTION) in scorer.prompt(thinking=False)
    with pytest.warns(UserWarning, match="wrote no <think>"):
        sampled = scorer.generate(noise_image(64, 64), thinking=True, max_new_tokens=4, temperature=0.7, top_k=5)
    assert len(sampled) == 1 and sampled[0].reasoning is None


def test_thinking_without_reasoning_says_so_instead_of_a_silent_none():
    scorer = VisualQualityScorer.from_pretrained("taught")  # answers "<answer>X.YZ</answer>" and never reasons
    with pytest.warns(UserWarning, match=r"wrote no <think>\.\.\.</think> reasoning.*Rating\.reasoning is None.*"
                      r"smoke models"):  # fmt: skip
        (rating,) = scorer.generate(noise_image(64, 64), thinking=True, do_sample=False, max_new_tokens=12)
    assert rating.reasoning is None and rating.score is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # without thinking nothing is missing: no warning
        scorer.generate(noise_image(64, 64), do_sample=False, max_new_tokens=12)


def test_out_of_range_answers_are_clipped_and_kept_raw():

    assert Rating.from_text("<answer>7.5</answer>") == Rating(
        score=5.0, raw_score=7.5, reasoning=None, text="<answer>7.5</answer>"
    )
    assert Rating.from_text("<think>x</think><answer>-2</answer>").score == 1.0
    assert Rating.from_text("<answer>n/a</answer>").score is None


def test_custom_question(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(tiny_path, question="How sharp is this photo?")
    assert "How sharp is this photo? Please only output" in scorer.prompt(thinking=False)


def test_bad_batch_size(scorer):
    with pytest.raises(ValueError, match="batch_size must be a whole number of at least 1, got 0"):
        scorer.score(noise_image(64, 64), batch_size=0)


def test_flash_attention_missing_is_explained(tiny_path):
    pytest.importorskip("torch")
    if __import__("importlib").util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ImportError, match=r"pip install 'vq-reward\[flash\]'"):
        VisualQualityScorer.from_pretrained(tiny_path, attn_implementation="flash_attention_2")


@pytest.mark.slow
def test_a_scorer_does_not_pull_training_code():
    code = (
        "import sys, vq_reward\n"
        "vq_reward.VisualQualityScorer\n"
        "training = ('trl', 'peft', 'deepspeed', 'datasets')\n"  # (transformers itself imports accelerate)
        "bad = [m for m in sys.modules if m.split('.')[0] in training or m.startswith('vq_reward.train')]\n"
        "print(bad)\nsys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_smoke_names_work_in_python_as_in_the_cli():
    scorer = VisualQualityScorer.from_pretrained("tiny")
    assert scorer.score(noise_image(64, 64)).shape == (1,)


def test_a_checkpoint_s_custom_code_is_never_run_or_asked_about(tiny_path, tmp_path, monkeypatch):
    import json
    import shutil

    folder = tmp_path / "with_auto_map"
    shutil.copytree(tiny_path, folder)
    marker = tmp_path / "custom code ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom transformers import *\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForImageTextToText": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail("asked whether to run the checkpoint's code"))
    scores = VisualQualityScorer.from_pretrained(str(folder)).score(noise_image(64, 64, seed=1))
    original = VisualQualityScorer.from_pretrained(str(tiny_path)).score(noise_image(64, 64, seed=1))
    assert torch.equal(scores, original) and not marker.exists()  # a known model type: the stock classes
    config["model_type"] = "evil_vl"  # unknown to transformers: only its own code could load it
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"with_auto_map needs its own Python code .* never runs code a checkpoint"):
        VisualQualityScorer.from_pretrained(str(folder))
    assert not marker.exists()


def test_a_hub_id_without_network_fails_fast_with_one_line(monkeypatch):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: as unreachable as the hub here
    start = time.monotonic()
    with pytest.raises(
        OSError, match=r"nobody/missing: the Hugging Face hub cannot be reached .*\(hf download nobody/missing "
    ):
        VisualQualityScorer.from_pretrained("nobody/missing")
    assert time.monotonic() - start < 10
    with pytest.raises(FileNotFoundError, match=r"/no/such/folder: no such checkpoint folder"):
        VisualQualityScorer.from_pretrained("/no/such/folder")


def test_score_decodes_one_batch_at_a_time(scorer, tmp_path):
    for i in range(12):
        noise_image(56 + 4 * i, 56, seed=i).save(tmp_path / f"{i:02d}.png")
    paths = sorted(tmp_path.glob("*.png"))
    decoded, at_forward = [], []
    original_read = scorer.backend.read_scores  # one call, one forward, per batch

    def spy(*args, **kwargs):
        at_forward.append(len(decoded))
        return original_read(*args, **kwargs)

    from PIL import ImageFile

    original_load = ImageFile.ImageFile.load  # decoding a file's pixels

    def counting_load(self):
        if getattr(self, "_im", None) is None:
            decoded.append(self.filename)
        return original_load(self)

    scorer.backend.read_scores = spy
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ImageFile.ImageFile, "load", counting_load)
            scorer.score(paths, batch_size=4)
    finally:
        del scorer.backend.read_scores
    assert at_forward == [4, 8, 12]  # each forward comes after its own batch was decoded, never all twelve first


def test_the_prompt_follows_changed_settings(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(tiny_path)
    before = scorer.score(noise_image(64, 64))
    scorer.question = "How sharp is this photo?"
    assert "How sharp is this photo?" in scorer.prompt()
    scorer.add_vision_id = True
    assert "Picture 1: " in scorer.prompt()
    scorer.system = "Rate strictly."
    assert "Rate strictly." in scorer.readout_prompt()
    assert not torch.equal(scorer.score(noise_image(64, 64)), before)
    scorer.answer_prefix = "<answer>4"  # not part of the cached prompt: read on every request
    assert scorer.request().answer_prefix == "<answer>4" and scorer.request(forced=False).answer_prefix == ""


def test_the_constructor_says_that_it_freezes_the_model(scorer):
    trainable = type(scorer.model)(scorer.model.config)
    with pytest.warns(UserWarning, match="froze the model you passed.*copy.deepcopy"):
        VisualQualityScorer(trainable, scorer.processor)
    assert not any(p.requires_grad for p in trainable.parameters())


def test_a_truncated_weights_file_is_one_line_naming_it_and_the_fix(tiny_path, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(tiny_path, folder)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)  # a download cut off midway
    with pytest.raises(OSError, match=rf"^{weights} is truncated or corrupt \(.*\).*Download it again") as caught:
        VisualQualityScorer.from_pretrained(folder)
    assert "\n" not in str(caught.value)


def test_loading_prints_no_weight_progress_bar(tiny_path, capfd):
    VisualQualityScorer.from_pretrained(tiny_path, device="cpu")
    assert "Loading weights" not in capfd.readouterr().err


def test_from_pretrained_routes_each_keyword_to_the_scorer_or_the_backend(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(
        tiny_path, readout="first-digit", batch_size=3, max_pixels=56 * 56 * 4, attn_implementation="eager"
    )
    assert (scorer.readout, scorer.batch_size, scorer.max_pixels) == ("first-digit", 3, 56 * 56 * 4)
    assert scorer.recipe().load == {
        "dtype": None, "attn_implementation": "eager", "revision": None, "max_pixels": 56 * 56 * 4}  # fmt: skip
    assert scorer.recipe().settings == scorer.settings() and scorer.settings()["readout"] == "first-digit"
    with pytest.raises(TypeError, match=r"\['tensor_parallel_size'\] \(engine arguments apply to backend='vllm'"):
        VisualQualityScorer.from_pretrained(tiny_path, tensor_parallel_size=2)
    with pytest.raises(ValueError, match=r"backend must be 'hf' or 'vllm' \(servers: from_server\), got 'server'"):
        VisualQualityScorer.from_pretrained(tiny_path, backend="server")


def test_the_public_names_keep_their_import_paths():
    import vq_reward
    from vq_reward import scorer, scores

    for name in ("Rating", "NonFiniteScoreError"):  # defined in vq_reward.scores, importable from the scorer too
        assert getattr(scorer, name) is getattr(scores, name) is getattr(vq_reward, name)
    assert sorted(scorer.__all__) == ["NonFiniteScoreError", "Rating", "ScorerRecipe", "VisualQualityScorer"]
    assert all(getattr(vq_reward, name) is getattr(scorer, name) for name in scorer.__all__)
