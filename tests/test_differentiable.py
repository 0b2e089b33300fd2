"""Our torch preprocessing against the HF processor, and the differentiable reward against score() and finite
differences, on the tiny real Qwen2.5-VL."""

import numpy as np
import pytest
import torch
from conftest import noise_image
from transformers import Qwen2VLImageProcessor

from vq_reward import ImageInputError, VisualQualityScorer
from vq_reward.images import resize_for_model, smart_resize
from vq_reward.readout import token_inputs
from vq_reward.rewards.pixels import QwenImageLayout, patchify, pixel_inputs, resize_to_budget


# (height, width): sides multiples of 28 inside the tiny budget (3136..50176 pixels), so the processor's resize is
# the identity and any difference is ours.
CONFORMING = [(56, 84), (112, 56), (56, 56), (224, 196)]


def as_unit_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def layout(scorer):
    return QwenImageLayout.from_processor(scorer.processor)


@pytest.fixture(scope="module")
def scorer64(tiny_path):
    return VisualQualityScorer.from_pretrained(tiny_path, dtype=torch.float64)


def test_layout_is_read_from_the_processor(scorer, layout):
    image_processor = scorer.processor.image_processor
    assert (layout.min_pixels, layout.max_pixels) == (3136, 50176)
    assert layout.mean == pytest.approx(image_processor.image_mean) and layout.std == pytest.approx(
        image_processor.image_std
    )
    assert (layout.patch_size, layout.merge_size, layout.temporal_patch_size, layout.factor) == (14, 2, 2, 28)


def test_pixel_values_match_the_hf_processor(scorer, layout):
    images = [noise_image(w, h, seed=i) for i, (h, w) in enumerate(CONFORMING)]
    reference = scorer.processor.image_processor(images=images, return_tensors="pt")
    values, grid = pixel_inputs([as_unit_tensor(image) for image in images], layout)
    assert torch.equal(grid, reference["image_grid_thw"])
    assert values.shape == reference["pixel_values"].shape
    assert (values - reference["pixel_values"]).abs().max() <= 1e-3  # measured: about 2e-7
    batch_values, batch_grid = pixel_inputs(torch.stack([as_unit_tensor(images[0])] * 2), layout)
    single = scorer.processor.image_processor(images=[images[0]] * 2, return_tensors="pt")
    assert torch.equal(batch_grid, single["image_grid_thw"])
    assert (batch_values - single["pixel_values"]).abs().max() <= 1e-3


def test_a_budget_like_the_7b_gives_the_same_grid_as_its_processor():
    # The real checkpoints' budget; 512x384 is resized (to 504x392), so only the grid must agree exactly.
    processor = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)
    layout = QwenImageLayout.from_processor(processor)
    image = noise_image(512, 384)
    _, grid = pixel_inputs(as_unit_tensor(image)[None], layout)
    assert torch.equal(grid, processor(images=[image], return_tensors="pt")["image_grid_thw"])
    assert grid.tolist() == [[1, 28, 36]]


def test_resize_follows_smart_resize_and_stays_close_to_pil_bicubic(layout):
    image = noise_image(200, 150, seed=3).resize((200, 150))
    resized = resize_to_budget(as_unit_tensor(image)[None], layout)
    assert tuple(resized.shape[-2:]) == smart_resize(150, 200, layout.min_pixels, layout.max_pixels)
    pil = as_unit_tensor(resize_for_model(image, layout.min_pixels, layout.max_pixels))
    # Same filter family (bicubic, antialiased); PIL rounds to uint8 and the kernels differ slightly at the edges.
    assert (resized[0] - pil).abs().mean() < 0.01
    conforming = torch.rand(1, 3, 56, 84)
    assert resize_to_budget(conforming, layout) is conforming


def test_text_inputs_match_the_processor_with_left_padding(scorer):
    images = [noise_image(w, h, seed=i) for i, (h, w) in enumerate(CONFORMING)]
    text = scorer.prompt(thinking=False) + scorer.answer_prefix
    reference = scorer.processor(
        text=[text] * len(images), images=images, padding=True, padding_side="left", return_tensors="pt"
    )
    ours = token_inputs(scorer.processor, [text] * len(images), reference["image_grid_thw"])
    assert set(ours) == {"input_ids", "attention_mask", "mm_token_type_ids"}
    for key in ours:
        assert torch.equal(ours[key], reference[key]), key
    assert (ours["attention_mask"] == 0).any()  # different sizes, so some rows really are padded


def test_patchify_refuses_sides_that_are_not_multiples_of_28(layout):
    with pytest.raises(ValueError, match="multiples of 28, got 56x70"):
        patchify(torch.zeros(1, 3, 56, 70), layout)


def test_differentiable_score_equals_score_on_conforming_images(scorer):
    images = [noise_image(w, h, seed=10 + i) for i, (h, w) in enumerate(CONFORMING)]
    reward_fn = scorer.as_differentiable_reward()
    ours = reward_fn([as_unit_tensor(image) for image in images])
    assert (ours.detach() - scorer.score(images)).abs().max() <= 1e-4
    batch = torch.stack([as_unit_tensor(image) for image in images[:1]] * 3)
    assert (reward_fn(batch).detach() - scorer.score(batch)).abs().max() <= 1e-4
    signed = scorer.as_differentiable_reward(input_range=(-1, 1))(batch * 2 - 1)
    assert (signed.detach() - scorer.score(batch)).abs().max() <= 1e-4


def test_gradient_reaches_the_pixels_and_not_the_weights(scorer):
    pixels = torch.rand(2, 3, 56, 84, requires_grad=True)
    scores = scorer.as_differentiable_reward()(pixels)
    assert scores.shape == (2,) and scores.requires_grad
    scores.sum().backward()
    assert torch.isfinite(pixels.grad).all()
    assert (pixels.grad != 0).float().mean() > 0.9  # nearly every pixel moves the score
    assert all(parameter.grad is None for parameter in scorer.model.parameters())
    # Each score depends on its own image only.
    first = torch.autograd.grad(scorer.as_differentiable_reward()(pixels)[0], pixels)[0]
    assert first[1].abs().max() == 0 and first[0].abs().max() > 0


@pytest.mark.parametrize("readout", ["number", "first-digit"])
@pytest.mark.parametrize("shape", [(1, 3, 56, 84), (1, 3, 50, 70)], ids=["identity-resize", "through-resize"])
def test_gradient_agrees_with_a_finite_difference(scorer64, shape, readout, monkeypatch):
    monkeypatch.setattr(scorer64, "readout", readout)  # the gradient of the expected number, or of the first digit
    generator = torch.Generator().manual_seed(0)
    # Pixels away from 0 and 1: the range clamp has a kink there that a central difference would straddle.
    pixels = (0.1 + 0.8 * torch.rand(shape, generator=generator, dtype=torch.float64)).requires_grad_(True)
    reward_fn = scorer64.as_differentiable_reward()
    reward_fn(pixels).sum().backward()
    gradient = pixels.grad

    def central_difference(direction: torch.Tensor, eps: float) -> float:
        with torch.no_grad():
            return ((reward_fn(pixels + eps * direction) - reward_fn(pixels - eps * direction)) / (2 * eps)).item()

    # Along the gradient (scaled to unit RMS per pixel) the slope is large and the check tight. The float64 model
    # still runs its RMSNorms in float32, which sets a noise floor of about 1e-8 on the score.
    along = gradient / gradient.pow(2).mean().sqrt()
    slope = (gradient * along).sum().item()
    assert slope > 1.0
    assert central_difference(along, 3e-4) == pytest.approx(slope, rel=1e-3)  # measured: about 5e-5
    # A random direction checks the gradient's direction too; its slope is small, so the noise floor shows more.
    direction = torch.randn(shape, generator=generator, dtype=torch.float64)
    analytic = (gradient * direction).sum().item()
    assert central_difference(direction, 1e-3) == pytest.approx(analytic, rel=2e-2)  # measured: 1e-5 .. 3e-3


def test_gradient_checkpointing_gives_the_same_gradient_with_fewer_saved_activations(tiny_path):
    scorer = VisualQualityScorer.from_pretrained(tiny_path)
    pixels = torch.rand(2, 3, 112, 112)

    def grad_and_saved_bytes(reward_fn) -> tuple[torch.Tensor, int]:
        saved = [0]

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        leaf = pixels.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            scores = reward_fn(leaf)
        scores.sum().backward()
        return leaf.grad, saved[0]

    plain_grad, plain_bytes = grad_and_saved_bytes(scorer.as_differentiable_reward())
    checkpointed_grad, checkpointed_bytes = grad_and_saved_bytes(
        scorer.as_differentiable_reward(gradient_checkpointing=True)
    )
    assert torch.allclose(plain_grad, checkpointed_grad, atol=1e-7)
    assert checkpointed_bytes < plain_bytes / 2  # measured: about a third
    assert not scorer.model.training  # back in eval mode after the call


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(1, 3, 56, 56, dtype=torch.uint8), "float tensors"),
        (torch.rand(1, 56, 56, 3), r"\(N, 3, H, W\) RGB, channels first"),
        (torch.rand(1, 3, 20, 56), "at least 28"),
        (torch.full((1, 3, 56, 56), float("nan")), "NaN"),
        ([], "No images given"),
    ],
    ids=["uint8", "nhwc", "too-small", "nan", "empty"],
)
def test_bad_inputs_are_refused_with_the_fix(scorer, images, message):
    with pytest.raises(ImageInputError, match=message):
        scorer.as_differentiable_reward()(images)
