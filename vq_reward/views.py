"""Deterministic views of an image: seeded crops and rescales (optionally a JPEG round trip), for multi-view scoring.

A reward tuned to one exact grid of pixels (an artifact aligned with the model's 14-pixel patches, a texture at
one scale) earns less when it is scored as the mean over several slightly different looks at the same image. View 0
is the image itself; view k >= 1 keeps a seeded fraction of each side (`crop`) at a seeded offset and resizes that
crop by a seeded factor (`scale`), never to more pixels than the image had (so a model-sized image stays inside the
model's pixel budget), with sides snapped to multiples of `factor` (28, Qwen's patch grid) and at least one grid
cell. The seed of view k is k itself: the same image and `Views` give the same views in every process, whatever the
global random state.

The same views exist for PIL images (`pil_view`, what `score(views=K)` uses) and for float tensors (`tensor_view`:
crop and bicubic `F.interpolate`, so the differentiable reward's gradient flows through them). The JPEG round trip
has no gradient, so it exists for PIL images only.

Example:
    >>> from PIL import Image
    >>> image = Image.new("RGB", (224, 168), (120, 90, 60))
    >>> [pil_view(image, k).size for k in range(3)]
    [(224, 168), (168, 140), (168, 140)]
    >>> tensor_view(torch.rand(2, 3, 168, 224), 1).shape
    torch.Size([2, 3, 140, 168])
"""

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vq_reward.images import PATCH_FACTOR, ImageSource, resize_for_model, smart_resize


# Mixed into every view's seed, so views do not share a random stream with anything else seeded by small integers.
_VIEW_SALT = 0x56494557  # "VIEW"


@dataclass(frozen=True)
class Views:
    """How many views to score and how they vary.

    Attributes:
        count: views per image, view 0 the image itself; `score(views=count)` costs `count` forwards per image.
        crop: the range of the fraction of each side a view keeps (the same fraction for both sides).
        scale: the range of the factor the crop is resized by (capped so a view never has more pixels than its
            image).
        jpeg_quality: with a number, views 1.. also go through a JPEG round trip at this quality (PIL images only:
            it has no gradient). `None` (default): no JPEG.
        factor: view sides are multiples of this (Qwen's 28-pixel patch grid), at least one.
    """

    count: int = 1
    crop: tuple[float, float] = (0.75, 1.0)
    scale: tuple[float, float] = (0.75, 1.25)
    jpeg_quality: int | None = None
    factor: int = PATCH_FACTOR

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise ValueError(f"views must be a whole number of at least 1 (1 = the image alone), got {self.count!r}.")
        if not 0 < self.crop[0] <= self.crop[1] <= 1:
            raise ValueError(f"Views.crop={self.crop} must be fractions with 0 < low <= high <= 1, e.g. (0.75, 1.0).")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"Views.scale={self.scale} must be factors with 0 < low <= high, e.g. (0.75, 1.25).")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"Views.jpeg_quality={self.jpeg_quality} must be in 1..95, or None for no JPEG.")


@dataclass(frozen=True)
class ViewBox:
    """Where view k of an image comes from and what size it becomes: crop `(left, top, right, bottom)` in pixels,
    then resize to `size` `(width, height)`."""

    box: tuple[int, int, int, int]
    size: tuple[int, int]


def as_views(views: "int | Views") -> Views:
    """`Views(count=views)` for a whole number, the `Views` itself otherwise.

    Example:
        >>> as_views(4).count
        4
    """
    return views if isinstance(views, Views) else Views(count=views)


def view_box(width: int, height: int, index: int, views: Views = Views()) -> ViewBox:
    """The crop and output size of view `index` of a `width` x `height` image; view 0 is the whole image as it is.

    Example:
        >>> view_box(224, 224, 0)
        ViewBox(box=(0, 0, 224, 224), size=(224, 224))
    """
    if index == 0:
        return ViewBox((0, 0, width, height), (width, height))
    rng = np.random.default_rng([_VIEW_SALT, index])
    keep, scale, across, down = rng.uniform(size=4)
    fraction = views.crop[0] + keep * (views.crop[1] - views.crop[0])
    crop_width, crop_height = max(1, round(fraction * width)), max(1, round(fraction * height))
    left, top = round(across * (width - crop_width)), round(down * (height - crop_height))
    factor = views.scale[0] + scale * (views.scale[1] - views.scale[0])
    factor = min(factor, math.sqrt(width * height / (crop_width * crop_height)))  # never more pixels than the image
    size = (_snap(crop_width * factor, views.factor), _snap(crop_height * factor, views.factor))
    while size[0] * size[1] > max(width * height, views.factor**2) and max(size) > views.factor:
        size = (max(views.factor, size[0] - views.factor), max(views.factor, size[1] - views.factor))
    return ViewBox((left, top, left + crop_width, top + crop_height), size)


def pil_view(image: Image.Image, index: int, views: Views = Views()) -> Image.Image:
    """View `index` of a PIL image (bicubic resize; JPEG round trip when `views.jpeg_quality` is set); view 0 is the
    image itself, unchanged."""
    if index == 0:
        return image
    where = view_box(image.width, image.height, index, views)
    view = image.crop(where.box).resize(where.size, Image.Resampling.BICUBIC)
    if views.jpeg_quality is None:
        return view
    buffer = io.BytesIO()
    view.convert("RGB").save(buffer, format="JPEG", quality=views.jpeg_quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def source_view(source: ImageSource, index: int, views: Views, min_pixels: int, max_pixels: int) -> ImageSource:
    """View `index` of an image source, cut from the image at the model's size (`min_pixels` / `max_pixels`): sized
    from the header alone, decoded when loaded (what `score(views=K)` scores); view 0 is `source` itself.

    Example:
        >>> from vq_reward.images import image_sources
        >>> [source] = image_sources(torch.rand(3, 168, 224))
        >>> view = source_view(source, 1, Views(), 3136, 12544)  # a budget below the image: resized first
        >>> (view.width, view.height) == view.load().size, view.name.endswith(" view 1")
        (True, True)
    """
    if index == 0:
        return source
    height, width = smart_resize(source.height, source.width, min_pixels, max_pixels)
    size = view_box(width, height, index, views).size

    def load() -> Image.Image:
        return pil_view(resize_for_model(source.load(), min_pixels, max_pixels), index, views)

    return ImageSource(f"{source.name} view {index}", *size, load)


def tensor_view(images: torch.Tensor, index: int, views: Views = Views()) -> torch.Tensor:
    """View `index` of `(N, C, H, W)` float images, every image cut the same way: a crop and a bicubic antialiased
    `F.interpolate`, so gradients flow through it (bicubic may overshoot the input's range slightly: clamp after
    if it matters). View 0 is `images` itself.
    """
    if views.jpeg_quality is not None:
        raise ValueError(
            "Views.jpeg_quality is set, but a JPEG round trip has no gradient; use Views(jpeg_quality=None) for "
            "tensor views (the differentiable reward)."
        )
    if index == 0:
        return images
    height, width = images.shape[-2:]
    where = view_box(width, height, index, views)
    left, top, right, bottom = where.box
    crop = images[..., top:bottom, left:right]
    if (right - left, bottom - top) == where.size:
        return crop
    return F.interpolate(crop, size=where.size[::-1], mode="bicubic", align_corners=False, antialias=True)


def view_mixture(scores: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and standard deviation of the mixture of the views' score distributions, from `(N, K)` means and
    standard deviations: mean = mean over views; variance = mean of the views' variances plus the variance of their
    means (the answer of a view drawn at random).

    Example:
        >>> view_mixture(torch.tensor([[2.0, 4.0]]), torch.tensor([[0.0, 0.0]]))
        (tensor([3.]), tensor([1.]))
    """
    mean = scores.mean(dim=1)
    variance = std.square().mean(dim=1) + (scores - mean[:, None]).square().mean(dim=1)
    return mean, variance.sqrt()


def _snap(length: float, factor: int) -> int:
    return max(factor, int(round(length / factor)) * factor)
