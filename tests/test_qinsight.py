import pytest
import torch
from conftest import noise_image

from vq_reward import VisualQualityScorer, prompts, qinsight, readout
from vq_reward.prompts import QINSIGHT_DEGRADATION_QUESTION, QINSIGHT_SCORE_QUESTION, QINSIGHT_SYSTEM


def test_degradation_readout_is_a_distribution_over_the_closed_set(scorer):
    images = [noise_image(64, 64, seed=1), noise_image(96, 72, seed=2)]
    results = scorer.degradation(images)
    assert len(results) == 2
    for result in results:
        assert set(result.class_probs) == {"noise", "compression", "blur", "darken", "null"}
        assert sum(result.class_probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert result.distortion_class == max(result.class_probs, key=result.class_probs.get)
        assert sum(result.severity_probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert result.severity in result.severity_probs and 0 < result.mass <= 1
        if result.distortion_class == "null":
            assert result.severity == "null"
        else:
            assert set(result.severity_probs) == {"slight", "moderate", "obvious", "serious", "catastrophic"}
    assert scorer.degradation(images) == results  # deterministic


def test_comparison_readout(scorer):
    ref, a, b = noise_image(64, 64, seed=3), noise_image(64, 64, seed=4), noise_image(80, 64, seed=5)
    (result,) = scorer.compare(ref, a, b)
    assert set(result.probs) == {"Image A", "Image B", "Similar"}
    assert sum(result.probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert result.result == max(result.probs, key=result.probs.get) and 0 < result.mass <= 1
    batched = scorer.compare([ref, ref], [a, b], [b, a])[0]  # in a batch: equal up to float rounding
    assert batched.result == result.result and batched.probs == pytest.approx(result.probs, abs=1e-6)
    with pytest.raises(ValueError, match=r"as many references as A and B images; got reference: 1, image_a: 2"):
        scorer.compare(ref, [a, b], [b, a])


def test_candidate_scores_equal_separate_teacher_forced_forwards(scorer):
    image = scorer.prepare(noise_image(70, 60))
    context = readout.chat_text(scorer.processor, prompts.degradation_messages()) + prompts.QINSIGHT_ANSWER_PREFIX
    answers = [qinsight.degradation_answer("noise", "slight"), qinsight.degradation_answer("blur", "serious"), "x"]
    candidates = readout.continuation_ids(scorer.processor.tokenizer, prompts.QINSIGHT_ANSWER_PREFIX, answers)
    inputs = readout.model_inputs(scorer.processor, [context], image)
    with torch.no_grad():
        batched = readout.candidate_logprobs(scorer.model, inputs, candidates)[0]
    context_length = len(scorer.processor(text=[context], images=image)["input_ids"][0])
    for answer, expected in zip(answers, batched, strict=True):
        full = scorer.processor(text=[context + answer], images=image, return_tensors="pt")
        with torch.no_grad():
            logprobs = scorer.model(**full).logits[0].float().log_softmax(-1)
        tokens = full["input_ids"][0]
        manual = sum(logprobs[p - 1, tokens[p]].item() for p in range(context_length, len(tokens)))
        assert expected.item() == pytest.approx(manual, abs=1e-4)


def test_generate_paths_parse_and_keep_the_text(scorer):
    (sampled,) = scorer.degradation(noise_image(64, 64), thinking=True, max_new_tokens=5)
    assert sampled.distortion_class is None and sampled.class_probs is None and isinstance(sampled.text, str)
    (verdict,) = scorer.compare(noise_image(64, 64), noise_image(64, 64, 1), noise_image(64, 64, 2), thinking=True,
                                max_new_tokens=5)  # fmt: skip
    assert verdict.result is None and isinstance(verdict.text, str)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('<think>\nx\n</think>\n<answer>\n{"distortion_class": "blur", "severity": "serious"}\n</answer>',
         ("blur", "serious")),
        ('<answer>{"distortion_class":"null","severity":"null"}</answer>', ("null", "null")),
        ('<answer>{"severity": "slight"}</answer>', (None, None)),
        ('{"distortion_class": "blur", "severity": "slight"}', (None, None)),  # no answer block
    ],
)  # fmt: skip
def test_parse_degradation(text, expected):
    assert qinsight.parse_degradation(text) == expected


def test_parse_comparison():
    assert qinsight.parse_comparison("<think>\nA is sharper\n</think>\n<answer>\nImage A\n</answer>") == "Image A"
    assert qinsight.parse_comparison("<answer>Image C</answer>") is None
    assert qinsight.parse_comparison("Similar") is None


def test_q_insight_prompt_style(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(tiny_path, prompt_style="q-insight")
    prompt = scorer.prompt(thinking=False)
    assert prompt.startswith(f"<|im_start|>system\n{QINSIGHT_SYSTEM}<|im_end|>") and QINSIGHT_SCORE_QUESTION in prompt
    assert scorer.answer_prefix.endswith('<answer>\n{"rating": ')
    scores = scorer.score([noise_image(64, 64), noise_image(90, 60)])
    assert scores.shape == (2,) and ((scores >= 1) & (scores <= 5)).all()
    assert QINSIGHT_DEGRADATION_QUESTION in readout.chat_text(scorer.processor, prompts.degradation_messages())
    with pytest.raises(ValueError, match=r"prompt_style must be one of \['q-insight', 'visualquality-r1'\]"):
        VisualQualityScorer.from_pretrained(tiny_path, prompt_style="qalign")
