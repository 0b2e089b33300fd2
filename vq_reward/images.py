"""Every input kind becomes one canonical form: RGB PIL images sized by Qwen's "smart resize" rule.

Inputs: file paths, PIL images of any mode, numpy HWC/NHWC (uint8, or float in `input_range`), torch NCHW/CHW
(float in `input_range`, or uint8), and lists mixing these. Float pixels are quantised to uint8 once, so a tensor,
an array and a PIL image of the same picture get the same score. Anything that cannot be scored raises
`ImageInputError`, which names the input (its index and path or shape) and says what is wrong and how to fix it.

Orientation: with `exif_transpose=True` (the default) every input that carries an EXIF orientation tag (a file, or
a PIL image opened from one) is turned upright, whatever its kind; `exif_transpose=False` uses the stored pixels
as they are, as the official VisualQuality-R1 code does.

Decoding is lazy: `image_sources` checks every input and reads only file headers, so a scorer can sort a long list
of paths by size and decode one batch at a time (`ImageSource.load`).

Animated images (GIF, WebP, APNG, multi-page TIFF) are scored on one frame: a file on its first, a PIL image on the
frame it is at (`image.tell()`). A warning names the input and the frame; to score another frame, `seek` to it in
PIL and pass the image (or pass each frame as its own image).
"""

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


try:  # the PIL backend module (no torchvision import); older transformers 5 releases only have the other one
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as _qwen_smart_resize
except ImportError:  # pragma: no cover - depends on the installed transformers
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as _qwen_smart_resize


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
    """Qwen2-VL's resize rule (transformers' own function): sides multiples of `factor`, pixels in the budget.

    Example:
        >>> smart_resize(384, 512, min_pixels=3136, max_pixels=12845056)
        (392, 504)
    """
    height, width = _qwen_smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return int(height), int(width)


def resize_for_model(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Resize (bicubic, as qwen-vl-utils does) to the smart-resize size; a no-op when the size already conforms."""
    height, width = smart_resize(image.height, image.width, min_pixels, max_pixels)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class ImageSource:
    """One checked input, not decoded yet: its name for messages, its stored size (before any EXIF rotation, which
    changes neither its area nor its sides' ratio), how to get its RGB pixels, and for an animated image its number
    of frames and the one scored."""

    name: str
    width: int
    height: int
    load: Callable[[], Image.Image]
    frames: int = 1
    frame: int = 0


def image_sources(
    images: Images,
    input_range: tuple[float, float] = (0.0, 1.0),
    max_input_pixels: int = MAX_INPUT_PIXELS,
    exif_transpose: bool = True,
) -> list[ImageSource]:
    """Check every input and describe it, reading only file headers (see the module docstring).

    Example:
        >>> [(s.width, s.height) for s in image_sources(torch.zeros(2, 3, 32, 48))]
        [(48, 32), (48, 32)]
    """
    input_range = check_input_range(input_range)
    items = _as_list(images)
    if not items:
        raise ImageInputError("No images given: pass a path, a PIL image, an array or tensor, or a non-empty list.")
    sources: list[ImageSource] = []
    for index, item in enumerate(items):
        name = _describe(item, index, several=len(items) > 1)
        for source in _sources(item, name, input_range, max_input_pixels, exif_transpose):
            _check_size(source.width, source.height, source.name, max_input_pixels)
            sources.append(source)
    _warn_animated([source for source in sources if source.frames > 1])
    return sources


def _warn_animated(animated: list[ImageSource]) -> None:
    """One warning per call that names the first animated input and the frame of it that is scored."""
    if not animated:
        return
    first = animated[0]
    which = "the first" if first.frame == 0 else "the one the PIL image is at"
    others = len(animated) - 1
    more = f" ({others} more animated input{'s' if others > 1 else ''} likewise)" if others else ""
    warnings.warn(
        f"{first.name} is animated ({first.frames} frames): only frame {first.frame}, {which}, is scored{more}. To "
        "score another frame, seek to it with PIL (image.seek(k)) and pass the image, or pass each frame.",
        stacklevel=3,
    )


def to_rgb_images(
    images: Images,
    input_range: tuple[float, float] = (0.0, 1.0),
    max_input_pixels: int = MAX_INPUT_PIXELS,
    exif_transpose: bool = True,
) -> list[Image.Image]:
    """Turn any supported input into a list of RGB PIL images, checking each one (decodes everything at once).

    Args:
        images: one input or a list of inputs (see the module docstring).
        input_range: the value range of float arrays and tensors: (0, 1) for diffusers `output_type="pt"`,
            (-1, 1) for a raw VAE decode.
        max_input_pixels: larger inputs are refused before they are decoded (decompression-bomb guard).
        exif_transpose: turn inputs with an EXIF orientation upright (see the module docstring).

    Example:
        >>> [im.size for im in to_rgb_images(torch.zeros(2, 3, 32, 48))]
        [(48, 32), (48, 32)]
    """
    return [source.load() for source in image_sources(images, input_range, max_input_pixels, exif_transpose)]


def load_image(
    path: str | os.PathLike,
    name: str | None = None,
    max_input_pixels: int = MAX_INPUT_PIXELS,
    exif_transpose: bool = True,
) -> Image.Image:
    """Read an image file into RGB, refusing missing, unreadable, empty, corrupt and oversized files clearly."""
    return _file_source(path, name or repr(str(path)), max_input_pixels, exif_transpose).load()


def check_input_range(input_range: tuple[float, float]) -> tuple[float, float]:
    """`(low, high)` as floats, refusing a range that is not finite or not increasing.

    Example:
        >>> check_input_range((-1, 1))
        (-1.0, 1.0)
    """
    try:
        low, high = (float(value) for value in input_range)
    except (TypeError, ValueError):
        raise ValueError(f"input_range={input_range!r} must be two numbers (low, high), e.g. (0, 1)") from None
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(
            f"input_range={input_range} must be finite (low, high) with low < high, e.g. (0, 1) or (-1, 1)."
        )
    return low, high


def pil_to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Any PIL mode to RGB.

    Transparency is composited onto white; 16-bit gray is scaled to 8 bits; 32-bit float ("F") in [0, 1] is scaled
    to 0..255, whole numbers in 0..255 are kept, and any other range (or NaN) is refused; CMYK and palettes are
    converted.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "F":
        return Image.fromarray(_float_gray_to_uint8(np.asarray(image, dtype=np.float64), name), mode="L").convert(
            "RGB"
        )
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        # 16-bit data spans 0..65535; mode "I" may also hold 8-bit data, which is left as it is.
        if image.mode != "I" or values.max() > 255:
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")


def _float_gray_to_uint8(values: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ImageInputError(f"{name} is a float image with NaN or infinite pixels; fix or re-export the file.")
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0 and np.array_equal(values, np.rint(values)):
        return values.astype(np.uint8)
    raise ImageInputError(
        f"{name} is a float image with values in [{low:.4g}, {high:.4g}], which is neither [0, 1] nor whole numbers "
        "in 0..255, so its brightness scale is unknown. Convert it to 8-bit (or scale it to [0, 1]) first."
    )


def _sources(
    item: ImageInput, name: str, input_range: tuple[float, float], max_pixels: int, exif_transpose: bool
) -> list[ImageSource]:
    if isinstance(item, (bytes, bytearray)):
        raise ImageInputError(
            f"{name} is {type(item).__name__}; pass a file path as str (e.g. path.decode()) or a PIL image "
            "(PIL.Image.open(io.BytesIO(data)))."
        )
    if isinstance(item, (str, os.PathLike)):
        return [_file_source(item, name, max_pixels, exif_transpose)]
    if isinstance(item, Image.Image):
        image = item

        def load() -> Image.Image:
            return pil_to_rgb(_upright(image, exif_transpose), name)

        return [ImageSource(name, *image.size, load, getattr(image, "n_frames", 1), image.tell())]
    if isinstance(item, np.ndarray):
        return _array_sources(item, name, input_range)
    if isinstance(item, torch.Tensor):
        return _tensor_sources(item, name, input_range)
    raise ImageInputError(
        f"{name} is a {type(item).__name__}; pass a file path, a PIL image, a numpy HWC/NHWC array or a torch "
        "NCHW tensor."
    )


def _file_source(path: str | os.PathLike, name: str, max_pixels: int, exif_transpose: bool) -> ImageSource:
    file = Path(path)
    if not file.exists():
        raise ImageInputError(f"{name}: no such file. Check the path (URLs are not fetched; download the file first).")
    if file.is_dir():
        raise ImageInputError(f"{name} is a directory; pass the image files inside it (the CLI walks directories).")
    if not os.access(file, os.R_OK):
        raise ImageInputError(f"{name} cannot be read (permission denied); fix its permissions or copy it.")
    if file.stat().st_size == 0:
        raise ImageInputError(f"{name} is empty (0 bytes); the file was not written completely. Re-create it.")
    with _opened(file, name) as image:  # Image.open reads only the header: the size is known before decoding
        width, height = image.size  # before any EXIF rotation, which keeps the area, the short side and the ratio
        frames = getattr(image, "n_frames", 1)
    _check_size(width, height, name, max_pixels)

    def load() -> Image.Image:
        with _opened(file, name) as image:
            try:
                upright = _upright(image, exif_transpose)
                upright.load()
            except Image.DecompressionBombError as error:
                raise ImageInputError(
                    f"{name} is too large to decode safely ({error}). Downscale it first."
                ) from error
            except (OSError, SyntaxError, ValueError) as error:
                raise ImageInputError(
                    f"{name} is corrupt or truncated: its header reads but its pixels do not ({error}). Re-create or "
                    "re-download it."
                ) from error
            return pil_to_rgb(upright, name)

    return ImageSource(name, width, height, load, frames)


class _opened:
    """`Image.open` with errors that say what is wrong with the file."""

    def __init__(self, file: Path, name: str) -> None:
        self.file, self.name = file, name

    def __enter__(self) -> Image.Image:
        try:
            self.image = Image.open(self.file)
        except UnidentifiedImageError as error:
            raise ImageInputError(
                f"{self.name} is not an image Pillow can read (unknown format or a damaged header). Pass PNG, JPEG, "
                "WebP, BMP, TIFF or another Pillow format."
            ) from error
        except Image.DecompressionBombError as error:
            raise ImageInputError(f"{self.name} is too large to decode safely ({error}). Downscale it.") from error
        except OSError as error:  # readable (checked before), so the file itself is damaged
            raise ImageInputError(
                f"{self.name} is corrupt or truncated ({error}). Re-create or re-download it."
            ) from error
        return self.image

    def __exit__(self, *exc_info: object) -> None:
        self.image.close()


def _upright(image: Image.Image, exif_transpose: bool) -> Image.Image:
    return ImageOps.exif_transpose(image) if exif_transpose else image


def _array_sources(array: np.ndarray, name: str, input_range: tuple[float, float]) -> list[ImageSource]:
    shape = tuple(array.shape)
    if array.ndim == 2:
        array = array[:, :, None]
    batch = array.ndim == 4
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        hint = ""
        if array.ndim == 4 and array.shape[1] in (1, 3):
            hint = f" It looks channels-first; use array.transpose({'0, 2, 3, 1' if batch else '1, 2, 0'})."
        raise ImageInputError(
            f"{name} has shape {shape}; numpy images must be HWC or NHWC with 1, 3 or 4 channels.{hint}"
        )
    if len(array) == 0:
        raise ImageInputError(f"{name} holds no images (batch size 0); pass at least one.")
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

    def loader(image: np.ndarray) -> Callable[[], Image.Image]:
        plane = np.ascontiguousarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
        return lambda: pil_to_rgb(Image.fromarray(plane, mode=modes[image.shape[-1]]))

    height, width = pixels.shape[1:3]
    return [
        ImageSource(f"{name}[{i}]" if batch else name, width, height, loader(image)) for i, image in enumerate(pixels)
    ]


def _tensor_sources(tensor: torch.Tensor, name: str, input_range: tuple[float, float]) -> list[ImageSource]:
    if tensor.is_meta:
        raise ImageInputError(f"{name} is on the meta device and holds no pixels; pass a tensor with data.")
    if tensor.layout != torch.strided:
        raise ImageInputError(f"{name} is a {tensor.layout} tensor; call .to_dense() first.")
    shape = tuple(tensor.shape)
    batch = tensor.ndim == 4
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[1] not in (1, 3):
        hint = ""
        if tensor.ndim == 4 and tensor.shape[-1] in (1, 3):
            hint = f" It looks channels-last; use tensor.permute({'0, 3, 1, 2' if batch else '2, 0, 1'})."
        raise ImageInputError(
            f"{name} has shape {shape}; torch images must be NCHW or CHW with 1 or 3 channels.{hint}"
        )
    if len(tensor) == 0:
        raise ImageInputError(f"{name} holds no images (batch size 0); pass at least one.")
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.uint8:
        pixels = tensor
    elif tensor.is_floating_point():
        pixels = _floats_to_uint8(tensor, name, input_range)
    else:
        raise ImageInputError(f"{name} has dtype {tensor.dtype}; pass a float tensor in {input_range} or uint8.")
    height, width = pixels.shape[-2:]

    def loader(image: torch.Tensor) -> Callable[[], Image.Image]:
        return lambda: Image.fromarray(image.expand(3, -1, -1).permute(1, 2, 0).contiguous().numpy(), mode="RGB")

    return [
        ImageSource(f"{name}[{i}]" if batch else name, width, height, loader(image)) for i, image in enumerate(pixels)
    ]


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
            f"{name} is {width}x{height} pixels, an aspect ratio over {MAX_ASPECT_RATIO}:1 that Qwen's resize rule "
            "refuses; crop or pad it first."
        )


def _as_list(images: Images) -> list[ImageInput]:
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor, bytes, bytearray)):
        return [images]
    if isinstance(images, Sequence):
        return list(images)
    raise ImageInputError(f"images is a {type(images).__name__}; pass one image or a list of images.")


def _describe(item: ImageInput, index: int, several: bool) -> str:
    where = f"images[{index}]" if several else "image"
    if isinstance(item, (str, os.PathLike)):
        return f"{where} {os.fsdecode(item)!r}"
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return f"{where} ({type(item).__module__.split('.')[0]} {tuple(item.shape)} {item.dtype})"
    return where
