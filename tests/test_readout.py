"""The model-reading core against independent references: separate teacher-forced sequences, the processor itself,
and a brute force over every answer of the two-decimal grammar."""

import copy
import threading

import pytest
import torch
from conftest import noise_image

from vq_reward import VisualQualityScorer, readout


SIZES = [(64, 64), (200, 150), (56, 112)]


def test_model_inputs_equal_the_processor_s_whole_output(scorer):
    images = scorer.prepare([noise_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)])
    text = scorer.readout_prompt()
    ours = readout.model_inputs(scorer.processor, [text] * len(images), images)
    theirs = scorer.processor(text=[text] * len(images), images=images, padding=True, padding_side="left",
                              return_tensors="pt")  # fmt: skip
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_several_images_per_row(scorer):
    from vq_reward import prompts

    images = scorer.prepare([noise_image(64, 64, seed=i) for i in range(6)])
    text = readout.chat_text(scorer.processor, prompts.comparison_messages())
    rows = [images[:3], images[3:]]
    ours = readout.model_inputs(scorer.processor, [text, text], rows)
    theirs = scorer.processor(text=[text, text], images=rows, padding=True, padding_side="left", return_tensors="pt")
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    with pytest.raises(ValueError, match="2 images for 3 <|image_pad|>"):
        readout.model_inputs(scorer.processor, [text], [images[:2]])


def test_tree_branches_read_what_separate_sequences_read(scorer):
    images = scorer.prepare([noise_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)])
    inputs = readout.model_inputs(scorer.processor, [scorer.readout_prompt()] * len(images), images)
    tree = readout.number_tree(scorer.tokens)
    assert len(tree) == 48
    with torch.no_grad():
        read = readout.tree_logits(scorer.model, inputs, tree)
        for node in range(len(tree)):
            path, at = [], node
            while at >= 0:
                path.insert(0, tree.tokens[at])
                at = tree.parents[at]
            separate = _forward_with(scorer.model, inputs, path)[:, -1]
            assert (separate - read[:, 1 + node]).abs().max() < 1e-5, node
        assert (readout.first_digit_logits(scorer.model, inputs) - read[:, 0]).abs().max() < 1e-5


def _forward_with(model, inputs, tokens):
    """The model on each prompt followed by `tokens`, as ordinary causal sequences (no tree, no custom mask)."""
    n = len(inputs["input_ids"])
    extra = torch.tensor(tokens).expand(n, -1)
    return model(
        input_ids=torch.cat([inputs["input_ids"], extra], 1),
        attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(extra)], 1),
        mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], 1),
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"],
    ).logits


def brute_force_number(scorer, image) -> tuple[float, float]:
    """The expected two-decimal answer and its std by teacher-forcing all 401 answers as separate sequences, fp64."""
    model = copy.deepcopy(scorer.model).double()
    inputs = readout.model_inputs(scorer.processor, [scorer.readout_prompt()], [image])
    inputs["pixel_values"] = inputs["pixel_values"].double()
    tokens = scorer.tokens
    first, decimals = list(tokens.first), list(tokens.decimals)
    answers = [(a, b, c) for a in range(4) for b in range(10) for c in range(10)]
    mean = second = 0.0
    with torch.no_grad():
        # The vision tower does not depend on the text: encode the image once and give every sequence its features.
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
        for start in range(0, len(answers), 100):
            chunk = answers[start : start + 100]
            extra = torch.tensor([[first[a], tokens.dot, decimals[b], decimals[c]] for a, b, c in chunk])
            rows = len(chunk)
            encoded = type(features)(pooler_output=list(features.pooler_output) * rows)
            logits = model(
                input_ids=torch.cat([inputs["input_ids"].expand(rows, -1), extra], 1),
                attention_mask=torch.cat([inputs["attention_mask"].expand(rows, -1), torch.ones_like(extra)], 1),
                mm_token_type_ids=torch.cat(
                    [inputs["mm_token_type_ids"].expand(rows, -1), torch.zeros_like(extra)], 1
                ),
                image_grid_thw=inputs["image_grid_thw"].repeat(rows, 1),
                mm_encoder_outputs={"image": encoded},
            ).logits[:, -5:]
            a, b, c = (torch.tensor(column) for column in zip(*chunk, strict=True))
            rows_ = torch.arange(rows)
            p = (
                logits[:, 0, first].softmax(-1)[rows_, a]  # p1(d1)
                * logits[:, 2, decimals].softmax(-1)[rows_, b]  # p2(d2 | d1), after d1 "."
                * logits[:, 3, decimals].softmax(-1)[rows_, c]  # p3(d3 | d1, d2), after d1 "." d2
            )
            value = (a + 1) + b / 10 + c / 100
            mean += (p * value).sum().item()
            second += (p * value * value).sum().item()
            if start == 0:
                p5 = logits[0, 0, first].softmax(-1)[4].item()  # "5": answers above 5 count as 5
    mean += p5 * 5.0
    second += p5 * 25.0
    return mean, (second - mean * mean) ** 0.5


def test_the_number_readout_is_the_exact_expected_answer(scorer):
    images = scorer.prepare([noise_image(w, h, seed=10 + i) for i, (w, h) in enumerate(SIZES[:1])])
    details = scorer.score_details(images, readout="number")
    for index, image in enumerate(images):
        mean, std = brute_force_number(scorer, image)
        assert details.scores[index].item() == pytest.approx(mean, abs=1e-5)
        assert details.std[index].item() == pytest.approx(std, abs=1e-5)
    assert details.dot_mass.shape == (1, 4) and ((details.dot_mass > 0) & (details.dot_mass < 1)).all()


def test_first_digit_is_today_s_single_token_readout(scorer):
    images = scorer.prepare([noise_image(64, 64, seed=3)])
    inputs = scorer.processor(text=[scorer.readout_prompt()], images=images, return_tensors="pt")
    with torch.no_grad():
        logits = scorer.model(**inputs).logits[0, -1]
    digits = scorer.processor.tokenizer.convert_tokens_to_ids(list("12345"))
    expected = (logits[digits].softmax(-1) * torch.arange(1.0, 6.0)).sum()
    details = scorer.score_details(images, readout="first-digit")
    assert details.scores.item() == pytest.approx(expected.item(), abs=1e-6) and details.dot_mass is None


@pytest.mark.slow
def test_q_insight_number_readout_after_its_json_prefix(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(tiny_path, prompt_style="q-insight", readout="number")
    assert scorer.readout_prompt().endswith('<answer>\n{"rating": ')
    image = scorer.prepare(noise_image(64, 64, seed=4))[0]
    mean, std = brute_force_number(scorer, image)
    details = scorer.score_details(image)
    assert details.scores.item() == pytest.approx(mean, abs=1e-5) and details.std.item() == pytest.approx(
        std, abs=1e-5
    )


def test_number_readout_is_batch_invariant_and_deterministic(scorer):
    images = [noise_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES * 2)]
    alone = torch.cat([scorer.score(image, readout="number") for image in images])
    together = scorer.score(images, batch_size=6, readout="number")
    assert (together - alone).abs().max() <= 1e-5
    assert torch.equal(together, scorer.score(images, batch_size=6, readout="number"))


def test_candidate_log_probs_equal_separate_sequences(scorer):
    images = scorer.prepare([noise_image(64, 64, seed=7), noise_image(90, 60, seed=8)])
    inputs = readout.model_inputs(scorer.processor, [scorer.readout_prompt()] * 2, images)
    candidates = [[scorer.tokens.first[0], scorer.tokens.dot], [scorer.tokens.first[0], scorer.tokens.first[1]],
                  [scorer.tokens.first[4]]]  # fmt: skip
    with torch.no_grad():
        ours = readout.candidate_logprobs(scorer.model, inputs, candidates)
        for k, candidate in enumerate(candidates):
            logprobs = _forward_with(scorer.model, inputs, candidate).float().log_softmax(-1)
            length = inputs["input_ids"].shape[1]
            manual = sum(logprobs[:, length - 1 + i, token] for i, token in enumerate(candidate))
            assert (ours[:, k] - manual).abs().max() < 1e-4


def test_the_number_readout_keeps_its_gradient(tiny_path):
    # Under autograd the lm_head chunks are recomputed in the backward pass: the gradient must be the plain one.
    scorer = VisualQualityScorer.from_pretrained(tiny_path)
    images = scorer.prepare([noise_image(64, 64, seed=30), noise_image(90, 60, seed=31)])
    inputs = readout.model_inputs(scorer.processor, [scorer.readout_prompt()] * 2, images)
    pixels = inputs["pixel_values"].clone().requires_grad_(True)
    details = readout.read_scores(scorer.model, {**inputs, "pixel_values": pixels}, scorer.tokens, "number")
    details.scores.sum().backward()
    reference = pixels.detach().clone().requires_grad_(True)
    tree, paths = readout.AnswerTree.from_sequences(readout.branch_continuations(scorer.tokens, "number")[1:])
    logits = readout.tree_logits(scorer.model, {**inputs, "pixel_values": reference}, tree)  # every logit, kept
    logprobs = logits.float().log_softmax(-1)[..., readout.branch_token_ids(scorer.tokens)]
    positions = [0] + [path[-1] + 1 for path in paths]
    readout.details_from_branches(logprobs[:, positions], scorer.tokens, "number").scores.sum().backward()
    assert pixels.grad.abs().max() > 0
    assert torch.allclose(pixels.grad, reference.grad, rtol=1e-4, atol=1e-7)


# -- the real vocabulary and flash-attention ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def skeleton():
    """Qwen2.5-VL's real tokenizer and 152,064-row vocabulary at tiny widths (vq_reward.smoke.skeleton)."""
    from vq_reward import hub

    return VisualQualityScorer.from_pretrained(hub.skeleton_checkpoint())


def test_no_readout_holds_more_than_a_chunk_of_logits(skeleton):
    images = skeleton.prepare([noise_image(64, 64, seed=i) for i in range(4)])
    inputs = readout.model_inputs(skeleton.processor, [skeleton.readout_prompt()] * 4, images)
    sizes = []
    handle = skeleton.model.lm_head.register_forward_hook(lambda module, args, output: sizes.append(output.numel()))
    saved = []

    def keep(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    try:
        with torch.no_grad():
            for name in readout.READOUTS:
                readout.read_scores(skeleton.model, inputs, skeleton.tokens, name)
            readout.candidate_logprobs(skeleton.model, inputs, [[16, 13, 15], [17, 13], [20]])
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            pixels = inputs["pixel_values"].clone().requires_grad_(True)
            readout.read_scores(skeleton.model, {**inputs, "pixel_values": pixels}, skeleton.tokens, "number")
    finally:
        handle.remove()
    whole = 4 * 49 * 152064  # the number readout's logits of 4 images, if they were read whole
    assert max(sizes) <= readout.LOGITS_PER_CHUNK < whole / 7
    assert sum(saved) < whole * 4 / 10  # what autograd keeps: activations, not the logits


def test_a_flash_attention_model_reads_its_tree_with_sdpa(tiny_path):
    # flash-attention takes 2D padding masks only; the tree's 4D mask must never reach it. flash-attn cannot run
    # here, so the model runs SDPA while its config says flash_attention_2, as from_pretrained(attn_implementation=
    # "flash_attention_2") would set it: the tree call must switch to SDPA, and give the model its own one back.
    scorer = VisualQualityScorer.from_pretrained(tiny_path)
    images = scorer.prepare([noise_image(64, 64, seed=40), noise_image(90, 60, seed=41)])
    inputs = readout.model_inputs(scorer.processor, [scorer.readout_prompt()] * 2, images)
    with torch.no_grad():
        expected = readout.read_scores(scorer.model, inputs, scorer.tokens, "number")
    text = scorer.model.config.text_config
    text._attn_implementation = "flash_attention_2"
    layers = scorer.model.model.language_model.layers
    seen: list[tuple[str, int, str]] = []
    entered, first_done = threading.Barrier(2, timeout=60), threading.Event()

    def record(index):
        def hook(module, args):
            name = threading.current_thread().name
            seen.append((name, index, module.config._attn_implementation))
            if index == 0:
                entered.wait()  # both calls are inside the tree forward
            elif name == "second":
                first_done.wait(60)  # the first call has returned; the second still runs

        return hook

    def read(name):
        with torch.no_grad():
            details = readout.read_scores(scorer.model, inputs, scorer.tokens, "number")
        if name == "first":
            first_done.set()
        return details

    handles = [layer.self_attn.register_forward_pre_hook(record(i)) for i, layer in enumerate(layers)]
    try:
        results = {}
        threads = [
            threading.Thread(target=lambda n=n: results.update({n: read(n)}), name=n) for n in ("first", "second")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == 2 * len(layers) and {implementation for *_, implementation in seen} == {"sdpa"}
    assert text._attn_implementation == "flash_attention_2"  # the model's own, back after the last call
    assert scorer.model.config.vision_config._attn_implementation == "sdpa"  # untouched
    for details in results.values():
        assert torch.equal(details.scores, expected.scores)


def test_an_eager_model_reads_its_tree_as_an_sdpa_one(tiny_path, scorer):
    eager = VisualQualityScorer.from_pretrained(tiny_path, attn_implementation="eager")
    assert eager.model.config.text_config._attn_implementation == "eager"
    images = [noise_image(w, h, seed=60 + i) for i, (w, h) in enumerate(SIZES)]
    for name in readout.READOUTS:
        assert (eager.score(images, readout=name) - scorer.score(images, readout=name)).abs().max() < 1e-5, name
