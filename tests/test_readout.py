"""The model-reading core against independent references: separate teacher-forced sequences, the processor itself,
and a brute force over every answer of the two-decimal grammar."""

import copy

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
