"""Every input kind becomes one canonical form: a list of RGB PIL images sized by Qwen's "smart resize" rule.

Inputs: file paths, PIL images of any mode, numpy HWC/NHWC (uint8, or float in `input_range`), torch NCHW/CHW
(float in `input_range`, or uint8), and lists mixing these. Float pixels are quantised to uint8 once, so a tensor,
an array and a PIL image of the same picture get the same score. Anything that cannot be scored raises
`ImageInputError`, which names the input (its index and path or shape) and the fix.
"""

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor
Images = ImageInput | Sequence[ImageInput]

# Qwen2.5-VL cuts images into 14-pixel patches and merges 2x2 of them into one token: sides are multiples of 28.
PATCH_FACTOR = 28
# Below one merged patch a side carries nothing the model can see; Qwen's resize rule needs at least this much.
MIN_SIDE = PATCH_FACTOR
# Qwen's resize rule refuses more extreme aspect ratios.
MAX_ASPECT_RATIO = 200
# Pillow's own decompression-bomb threshold (about 89.5 million pixels), applied to every input kind.
MAX_INPUT_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_RANGE_TOLERANCE = 1e-3


class ImageInputError(ValueError):
    """An input that cannot be scored. The message names the input and says how to fix it."""


def smart_resize(
    height: int, width: int, min_pixels: int, max_pixels: int, factor: int = PATCH_FACTOR
) -> tuple[int, int]:
    """Qwen2-VL's resize rule: sides rounded to multiples of `factor`, pixel count kept in [min_pixels, max_pixels].

    The aspect ratio is kept as closely as the multiples allow. Same algorithm as the Qwen2-VL image processor, so
    an image resized here passes through the processor unchanged.

    Example:
        >>> smart_resize(384, 512, min_pixels=3136, max_pixels=12845056)
        (392, 504)
    """
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of {width}x{height} is over {MAX_ASPECT_RATIO}")
    new_h = round(height / factor) * factor
    new_w = round(width / factor) * factor
    if new_h * new_w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / shrink / factor) * factor)
        new_w = max(factor, math.floor(width / shrink / factor) * factor)
    elif new_h * new_w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * grow / factor) * factor
        new_w = math.ceil(width * grow / factor) * factor
    return new_h, new_w


def resize_for_model(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Resize (bicubic, as qwen-vl-utils does) to the smart-resize size; a no-op when the size already conforms."""
    height, width = smart_resize(image.height, image.width, min_pixels, max_pixels)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def to_rgb_images(
    images: Images,
    input_range: tuple[float, float] = (0.0, 1.0),
    max_input_pixels: int = MAX_INPUT_PIXELS,
) -> list[Image.Image]:
    """Turn any supported input into a list of RGB PIL images, checking each one.

    Args:
        images: one input or a list of inputs (see the module docstring).
        input_range: the value range of float arrays and tensors: (0, 1) for diffusers `output_type="pt"`,
            (-1, 1) for a raw VAE decode.
        max_input_pixels: larger inputs are refused before they are decoded (decompression-bomb guard).

    Example:
        >>> [im.size for im in to_rgb_images(torch.zeros(2, 3, 32, 48))]
        [(48, 32), (48, 32)]
    """
    items = _as_list(images)
    if not items:
        raise ImageInputError("No images given: pass a path, a PIL image, an array or tensor, or a non-empty list.")
    converted: list[Image.Image] = []
    for index, item in enumerate(items):
        name = _describe(item, index, several=len(items) > 1)
        for offset, image in enumerate(_convert(item, name, input_range, max_input_pixels)):
            label = name if offset == 0 and not _is_batch(item) else f"{name}[{offset}]"
            _check_size(image.width, image.height, label, max_input_pixels)
            converted.append(image)
    return converted


def load_image(
    path: str | os.PathLike, name: str | None = None, max_input_pixels: int = MAX_INPUT_PIXELS
) -> Image.Image:
    """Read an image file into RGB, refusing empty, unreadable, corrupt and oversized files with a clear message."""
    name = name or repr(str(path))
    file = Path(path)
    if not file.exists():
        raise ImageInputError(f"{name}: no such file. Check the path (URLs are not fetched; download the file first).")
    if file.is_dir():
        raise ImageInputError(f"{name} is a directory; pass the image files inside it (the CLI walks directories).")
    if file.stat().st_size == 0:
        raise ImageInputError(f"{name} is empty (0 bytes); the file was not written completely. Re-create it.")
    try:
        with Image.open(file) as image:
            # Image.open reads only the header, so the size is checked before any pixel is decoded.
            _check_size(image.width, image.height, name, max_input_pixels)
            image = ImageOps.exif_transpose(image)
            image.load()
            return pil_to_rgb(image)
    except Image.DecompressionBombError as error:
        raise ImageInputError(f"{name} is too large to decode safely ({error}). Downscale it first.") from error
    except UnidentifiedImageError as error:
        raise ImageInputError(
            f"{name} is not an image Pillow can read. Pass PNG, JPEG, WebP, BMP, TIFF or another Pillow format."
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(f"{name} is corrupt or truncated ({error}). Re-create or re-download it.") from error


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: transparency is composited onto white, 16-bit gray is scaled to 8 bits, CMYK converted."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        # 16-bit data spans 0..65535; mode "I" may also hold 8-bit data, which is left as it is.
        if image.mode != "F" and (image.mode != "I" or values.max() > 255):
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")


def _convert(item: ImageInput, name: str, input_range: tuple[float, float], max_pixels: int) -> list[Image.Image]:
    if isinstance(item, (str, os.PathLike)):
        return [load_image(item, name, max_pixels)]
    if isinstance(item, Image.Image):
        _check_size(item.width, item.height, name, max_pixels)
        return [pil_to_rgb(item)]
    if isinstance(item, np.ndarray):
        return _array_to_images(item, name, input_range)
    if isinstance(item, torch.Tensor):
        return _tensor_to_images(item, name, input_range)
    raise ImageInputError(
        f"{name} is a {type(item).__name__}; pass a file path, a PIL image, a numpy HWC/NHWC array or a torch "
        "NCHW tensor."
    )


def _array_to_images(array: np.ndarray, name: str, input_range: tuple[float, float]) -> list[Image.Image]:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        hint = (
            " It looks channels-first; use array.transpose(1, 2, 0)."
            if array.ndim == 4 and array.shape[1] in (1, 3)
            else ""
        )
        raise ImageInputError(
            f"{name} has shape {tuple(array.shape)}; numpy images must be HWC or NHWC with 1, 3 or 4 channels.{hint}"
        )
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        pixels = _floats_to_uint8(torch.from_numpy(np.ascontiguousarray(array)), name, input_range).numpy()
    else:
        raise ImageInputError(
            f"{name} has dtype {array.dtype}; pass uint8 (0..255) or float in {input_range} "
            "(e.g. array.astype(np.float32) / 65535 for 16-bit data)."
        )
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    return [
        pil_to_rgb(
            Image.fromarray(
                np.ascontiguousarray(image.squeeze(-1) if image.shape[-1] == 1 else image), mode=modes[image.shape[-1]]
            )
        )
        for image in pixels
    ]


def _tensor_to_images(tensor: torch.Tensor, name: str, input_range: tuple[float, float]) -> list[Image.Image]:
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[1] not in (1, 3):
        hint = (
            " It looks channels-last; use tensor.permute(0, 3, 1, 2)."
            if tensor.ndim == 4 and tensor.shape[-1] in (1, 3)
            else ""
        )
        raise ImageInputError(
            f"{name} has shape {tuple(tensor.shape)}; torch images must be NCHW or CHW with 1 or 3 channels.{hint}"
        )
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.uint8:
        pixels = tensor
    elif tensor.is_floating_point():
        pixels = _floats_to_uint8(tensor, name, input_range)
    else:
        raise ImageInputError(f"{name} has dtype {tensor.dtype}; pass a float tensor in {input_range} or uint8.")
    pixels = pixels.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()
    return [Image.fromarray(image, mode="RGB") for image in pixels]


def _floats_to_uint8(values: torch.Tensor, name: str, input_range: tuple[float, float]) -> torch.Tensor:
    low, high = input_range
    values = values.float()  # float32 is exact enough for 8-bit output; float64 would cost 3x the model's forward
    if not torch.isfinite(values).all():
        raise ImageInputError(f"{name} contains NaN or infinite values; check the model output that produced it.")
    found_low, found_high = values.min().item(), values.max().item()
    span = high - low
    if found_low < low - _RANGE_TOLERANCE * span or found_high > high + _RANGE_TOLERANCE * span:
        raise ImageInputError(
            f"{name} has values in [{found_low:.4g}, {found_high:.4g}] but input_range={input_range}. Pass "
            "input_range=(-1, 1) for raw VAE output, input_range=(0, 255) for 0..255 floats, or clamp the values."
        )
    scaled = values.sub(low).mul_(255 / span)  # a new tensor: the in-place steps never touch the caller's
    return scaled.clamp_(0, 255).round_().to(torch.uint8)


def _check_size(width: int, height: int, name: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageInputError(
            f"{name} is {width}x{height} = {width * height:,} pixels, over the {max_pixels:,}-pixel limit that "
            "guards against decompression bombs. Downscale it first, or raise max_input_pixels if you trust it."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageInputError(
            f"{name} is {width}x{height} pixels; both sides must be at least {MIN_SIDE} (one merged Qwen patch). "
            "Upscale it, or check that you passed the image and not a thumbnail or a single pixel."
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageInputError(
            f"{name} is {width}x{height} pixels, an aspect ratio over {MAX_ASPECT_RATIO}; crop or pad it first."
        )


def _as_list(images: Images) -> list[ImageInput]:
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        return [images]
    if isinstance(images, Sequence):
        return list(images)
    raise ImageInputError(f"images is a {type(images).__name__}; pass one image or a list of images.")


def _is_batch(item: ImageInput) -> bool:
    return (isinstance(item, torch.Tensor) and item.ndim == 4) or (isinstance(item, np.ndarray) and item.ndim == 4)


def _describe(item: ImageInput, index: int, several: bool) -> str:
    where = f"images[{index}]" if several else "image"
    if isinstance(item, (str, os.PathLike)):
        return f"{where} {str(item)!r}"
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return f"{where} ({type(item).__module__.split('.')[0]} {tuple(item.shape)} {item.dtype})"
    return where
