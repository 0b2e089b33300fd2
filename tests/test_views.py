"""Multi-view scoring: deterministic views (PIL and differentiable tensors), views=1 is the plain score, views=K is
the mean over the K views' scores, on `score()`, every adapter and the differentiable reward (gradient included)."""

import numpy as np
import pytest
import torch
from PIL import Image

from vq_reward.views import Views, pil_view, tensor_view, view_box, view_mixture


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()[None] / 255


def test_views_are_deterministic_whatever_the_global_random_state():
    image = noise(224, 168, 0)
    np.random.seed(1)
    torch.manual_seed(1)
    first = [pil_view(image, k).tobytes() for k in range(5)]
    np.random.seed(2)
    torch.manual_seed(2)
    assert [pil_view(image, k).tobytes() for k in range(5)] == first
    assert pil_view(image, 0) is image
    assert len(set(first)) == 5  # every view differs from the image and from the others


def test_views_stay_inside_the_image_and_its_pixel_count():
    for width, height in [(224, 168), (112, 112), (28, 56), (700, 300)]:
        for k in range(1, 8):
            where = view_box(width, height, k)
            left, top, right, bottom = where.box
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            assert where.size[0] % 28 == 0 and where.size[1] % 28 == 0
            assert where.size[0] * where.size[1] <= max(width * height, 28 * 28)


def test_tensor_views_cut_what_pil_views_cut():
    image = noise(224, 168, 1).resize((224, 168))
    smooth = image.resize((56, 42)).resize((224, 168), Image.Resampling.BICUBIC)  # bicubic filters agree on smooth
    for k in range(1, 4):
        from_pil = as_tensor(pil_view(smooth, k))
        from_tensor = tensor_view(as_tensor(smooth), k).clamp(0, 1)
        assert from_pil.shape == from_tensor.shape
        assert (from_pil - from_tensor).abs().mean() < 2 / 255


def test_jpeg_views_are_for_pil_only():
    image = noise(112, 112, 2)
    with_jpeg = Views(count=3, jpeg_quality=30)
    assert pil_view(image, 1, with_jpeg).tobytes() != pil_view(image, 1).tobytes()
    assert pil_view(image, 0, with_jpeg) is image
    with pytest.raises(ValueError, match="no gradient"):
        tensor_view(as_tensor(image), 1, with_jpeg)


def test_bad_view_settings_are_refused(scorer):
    with pytest.raises(ValueError, match="at least 1"):
        scorer.score(noise(56, 56, 0), views=0)
    with pytest.raises(ValueError, match="crop"):
        Views(count=2, crop=(0.0, 1.0))


def test_the_mixture_of_views():
    scores, std = torch.tensor([[2.0, 3.0, 4.0]]), torch.tensor([[0.1, 0.2, 0.3]])
    mean, spread = view_mixture(scores, std)
    assert mean.item() == pytest.approx(3.0)
    assert spread.item() == pytest.approx(np.sqrt((0.01 + 0.04 + 0.09) / 3 + 2 / 3))


def test_one_view_is_the_plain_score(scorer):
    images = [noise(84, 56, 3), noise(200, 120, 4)]
    plain = scorer.score_details(images)
    one = scorer.score_details(images, views=1)
    assert torch.equal(plain.scores, one.scores) and torch.equal(plain.std, one.std)
    assert torch.equal(scorer.score(images, views=Views(count=1)), plain.scores)


def test_k_views_score_the_mean_over_the_views(scorer):
    images = [noise(84, 56, 5), noise(200, 120, 6)]
    spec = Views(count=4)
    details = scorer.score_details(images, views=spec)
    for index, image in enumerate(scorer.prepare(images)):
        per_view = scorer.score_details([pil_view(image, k, spec) for k in range(4)])
        mean, std = view_mixture(per_view.scores[None], per_view.std[None])
        assert details.scores[index].item() == pytest.approx(mean.item(), abs=1e-6)
        assert details.std[index].item() == pytest.approx(std.item(), abs=1e-6)
        assert torch.allclose(details.probs[index], per_view.probs.mean(dim=0), atol=1e-6)
    assert not torch.allclose(details.scores, scorer.score(images), atol=1e-4)  # the views do change the score
    assert torch.equal(scorer.score(images, views=4), details.scores)  # and the same call gives the same scores


def test_adapters_take_views(scorer):
    batch = torch.rand(3, 3, 56, 84, generator=torch.Generator().manual_seed(7))
    expected = scorer.score(batch, views=3).numpy()
    rewards, _ = scorer.as_reward(views=3)(batch, ["p"] * 3, [{}] * 3)
    np.testing.assert_allclose(rewards, expected, atol=1e-6)
    completions = [[{"role": "assistant", "content": "x"}]] * 3
    trl = scorer.as_trl_reward(views=3)(prompts=["p"] * 3, completions=completions, image=list(batch))
    np.testing.assert_allclose(trl, expected, atol=1e-6)


def test_differentiable_views_keep_the_gradient_and_average_the_views(scorer):
    pixels = torch.rand(2, 3, 56, 84, generator=torch.Generator().manual_seed(8)).requires_grad_(True)
    single, several = scorer.as_differentiable_reward(), scorer.as_differentiable_reward(views=3)
    scores = several(pixels)
    scores.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    with torch.no_grad():
        by_hand = torch.stack([single(tensor_view(pixels, k).clamp(0, 1)) for k in range(3)]).mean(dim=0)
        assert torch.allclose(scores.detach(), by_hand, atol=1e-5)
        assert torch.equal(scorer.as_differentiable_reward(views=1)(pixels), single(pixels))
        # the same views as score(views=3), up to the resize filters and score()'s uint8 rounding
        on_grid = (pixels * 255).round() / 255
        assert torch.allclose(several(on_grid), scorer.score(on_grid, views=3), atol=0.05)
