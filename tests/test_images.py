import os
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from conftest import noise_image
from PIL import Image

from vq_reward.images import ImageInputError, load_image, pil_to_rgb, resize_for_model, to_rgb_images


def rgb_of(image):
    return np.asarray(pil_to_rgb(image))


def test_pil_modes_become_rgb_correctly():
    assert rgb_of(Image.new("L", (30, 30), 77))[0, 0].tolist() == [77, 77, 77]
    assert rgb_of(Image.new("CMYK", (30, 30), (0, 0, 0, 0)))[0, 0].tolist() == [255, 255, 255]
    # Transparency is composited onto white, not dropped to whatever colour hides under it.
    assert rgb_of(Image.new("RGBA", (30, 30), (10, 20, 30, 0)))[0, 0].tolist() == [255, 255, 255]
    assert rgb_of(Image.new("RGBA", (30, 30), (10, 20, 30, 255)))[0, 0].tolist() == [10, 20, 30]
    assert rgb_of(Image.new("LA", (30, 30), (0, 0)))[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (30, 30), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert rgb_of(palette)[0, 0].tolist() == [200, 100, 50]
    palette.info["transparency"] = 1
    assert rgb_of(palette)[0, 0].tolist() == [255, 255, 255]
    # 16-bit gray is scaled to 8 bits, not clipped at 255.
    sixteen = Image.frombytes("I;16", (30, 30), np.full((30, 30), 65535, "<u2").tobytes())
    assert rgb_of(sixteen)[0, 0].tolist() == [255, 255, 255]
    half = Image.frombytes("I;16", (30, 30), np.full((30, 30), 32896, "<u2").tobytes())
    assert rgb_of(half)[0, 0].tolist() == [128, 128, 128]
    assert pil_to_rgb(Image.new("RGB", (30, 30))).mode == "RGB"


def test_sixteen_bit_png_file(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16)).save(path)
    assert np.asarray(load_image(path))[0, 0].tolist() == [255, 255, 255]


def test_every_kind_gives_the_same_pixels(tmp_path):
    image = noise_image(64, 48)
    pixels = np.array(image)
    image.save(tmp_path / "x.png")
    unit = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    kinds = [
        tmp_path / "x.png",
        str(tmp_path / "x.png"),
        image,
        pixels,
        pixels[None],
        pixels.astype(np.float32) / 255,
        unit,
        unit[None],
        (unit * 255).round().to(torch.uint8),
    ]
    for kind in kinds:
        (converted,) = to_rgb_images(kind)
        assert np.array_equal(np.asarray(converted), pixels), type(kind)
    (from_vae,) = to_rgb_images(unit * 2 - 1, input_range=(-1, 1))
    assert np.array_equal(np.asarray(from_vae), pixels)
    assert len(to_rgb_images([image, unit[None].repeat(3, 1, 1, 1), pixels])) == 5


def test_grayscale_tensor_and_array():
    gray = to_rgb_images(torch.full((1, 1, 30, 30), 0.5))[0]
    assert np.asarray(gray)[0, 0].tolist() == [128, 128, 128]
    assert np.asarray(to_rgb_images(np.full((30, 30), 9, np.uint8))[0])[0, 0].tolist() == [9, 9, 9]


def png_header_only(path, width, height):
    """A PNG that declares its size but holds no pixels: what a decompression bomb looks like before decoding."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_bad_files_name_the_file_and_the_fix(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("hello, not an image")
    noise_image(64, 64).save(tmp_path / "whole.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:300])
    cases = {
        "empty.png": r"empty\.png' is empty \(0 bytes\)",
        "notes.png": r"notes\.png' is not an image Pillow can read",
        "cut.jpg": r"cut\.jpg' is corrupt or truncated",
        "missing.png": r"missing\.png': no such file",
    }
    for name, message in cases.items():
        with pytest.raises(ImageInputError, match=message):
            to_rgb_images(tmp_path / name)


def test_oversized_inputs_are_refused_before_decoding(tmp_path):
    with pytest.raises(ImageInputError, match=r"bomb\.png' is 10000x10000 = 100,000,000 pixels, over the 89,478,485"):
        to_rgb_images(png_header_only(tmp_path / "bomb.png", 10_000, 10_000))
    with pytest.raises(ImageInputError, match=r"huge\.png' is too large to decode safely"):
        to_rgb_images(png_header_only(tmp_path / "huge.png", 40_000, 40_000))  # past Pillow's own hard limit
    with pytest.raises(ImageInputError, match=r"is 300x200 = 60,000 pixels, over the 50,000-pixel limit"):
        to_rgb_images(torch.zeros(3, 200, 300), max_input_pixels=50_000)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([], r"No images given"),
        (Image.new("RGB", (1, 1)), r"image is 1x1 pixels; both sides must be at least 28"),
        (torch.zeros(3, 20, 500), r"is 500x20 pixels; both sides must be at least 28"),
        (torch.zeros(3, 28, 6000), r"aspect ratio over 200"),
        (torch.full((1, 3, 32, 32), float("nan")), r"contains NaN or infinite values"),
        (torch.full((3, 32, 32), 1.5), r"values in \[1\.5, 1\.5\] but input_range=\(0\.0, 1\.0\)"),
        (torch.full((3, 32, 32), -0.5), r"values in \[-0\.5, -0\.5\].*input_range=\(-1, 1\) for raw VAE"),
        (torch.zeros(32, 32), r"has shape \(32, 32\); torch images must be NCHW or CHW"),
        (torch.zeros(2, 32, 32, 3), r"has shape \(2, 32, 32, 3\).*use tensor\.permute\(0, 3, 1, 2\)"),
        (torch.zeros(1, 1, 3, 32, 32), r"has shape \(1, 1, 3, 32, 32\)"),
        (np.zeros((3, 32, 32), np.uint8), r"has shape \(3, 32, 32\).*use array\.transpose\(1, 2, 0\)\.$"),
        (np.zeros((2, 3, 32, 32), np.uint8), r"has shape \(2, 3, 32, 32\).*use array\.transpose\(0, 2, 3, 1\)\.$"),
        (np.zeros((32, 32, 3), np.int64), r"has dtype int64; pass uint8"),
        ([Image.new("RGB", (32, 32)), 42], r"images\[1\] is a int"),
        ({"a": 1}, r"images is a dict"),
    ],
)
def test_bad_inputs_name_the_input_and_the_fix(images, message):
    with pytest.raises(ImageInputError, match=message):
        to_rgb_images(images)


def test_position_in_a_list_is_named(tmp_path):
    with pytest.raises(ImageInputError, match=r"images\[2\] \(torch \(3, 32, 32\) torch\.float32\) contains NaN"):
        to_rgb_images([noise_image(32, 32), noise_image(40, 40), torch.full((3, 32, 32), float("nan"))])


@pytest.mark.parametrize(("width", "height"), [(512, 384), (1000, 300), (60, 50), (29, 400), (64, 64)])
def test_resize_matches_the_official_loader(width, height):
    # qwen-vl-utils is what the official README loads images with; our canonical form must be pixel-identical.
    qwen_vl_utils = pytest.importorskip("qwen_vl_utils")
    image = noise_image(width, height, seed=width)
    official = qwen_vl_utils.fetch_image({"image": image, "min_pixels": 3136, "max_pixels": 50176})
    ours = resize_for_model(image, 3136, 50176)
    assert ours.size == official.size and np.array_equal(np.asarray(ours), np.asarray(official))
    transparent = Image.new("RGBA", (64, 64), (10, 20, 30, 0))
    official = qwen_vl_utils.fetch_image({"image": transparent, "min_pixels": 3136, "max_pixels": 50176})
    assert np.array_equal(np.asarray(resize_for_model(pil_to_rgb(transparent), 3136, 50176)), np.asarray(official))


def test_float_images_are_scaled_when_unambiguous_and_refused_otherwise(tmp_path):
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(ramp, mode="F").save(tmp_path / "unit.tif")
    (rgb,) = to_rgb_images(tmp_path / "unit.tif")
    assert np.asarray(rgb)[..., 0].max() == 255 and np.asarray(rgb)[..., 0].min() == 0  # not black
    Image.fromarray(np.rint(ramp * 255), mode="F").save(tmp_path / "bytes.tif")
    assert np.array_equal(np.asarray(to_rgb_images(tmp_path / "bytes.tif")[0]), np.asarray(rgb))
    cases = [
        ("nan.tif", np.full((64, 64), np.nan, np.float32), "NaN or infinite"),
        ("hdr.tif", ramp * 3.7, r"values in \[0, 3\.7\].*brightness scale is unknown"),
    ]
    for name, values, message in cases:
        Image.fromarray(values.astype(np.float32), mode="F").save(tmp_path / name)
        with pytest.raises(ImageInputError, match=message):
            to_rgb_images(tmp_path / name)


def test_exif_orientation_is_one_rule_for_every_input_kind(tmp_path):
    photo = noise_image(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    photo.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    from_path = to_rgb_images(tmp_path / "rotated.jpg")[0]
    with Image.open(tmp_path / "rotated.jpg") as opened:
        from_pil = to_rgb_images(opened)[0]
        stored = to_rgb_images(opened, exif_transpose=False)[0]
    assert from_path.size == from_pil.size == (40, 80) and stored.size == (80, 40)
    assert np.array_equal(np.asarray(from_path), np.asarray(from_pil))
    assert to_rgb_images(tmp_path / "rotated.jpg", exif_transpose=False)[0].size == (80, 40)  # the official way


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: noise_image(20, 20).save(p / "tiny.png") or p / "tiny.png",
            r"tiny\.png' is 20x20 pixels; both sides",
        ),
        (lambda p: noise_image(20000, 28).save(p / "strip.png") or p / "strip.png", r"aspect ratio over 200:1"),
        (lambda p: bytes(p / "x.png"), r"is bytes; pass a file path as str"),
        (lambda p: torch.empty(2, 3, 32, 32, device="meta"), r"on the meta device"),
        (lambda p: torch.zeros(1, 3, 32, 32).to_sparse(), r"sparse_coo tensor; call \.to_dense\(\)"),
        (lambda p: torch.zeros(0, 3, 32, 32), r"holds no images \(batch size 0\)"),
    ],
    ids=["undersized-file", "28x20000-file", "bytes", "meta", "sparse", "empty-batch"],
)
def test_inputs_say_what_is_actually_wrong(tmp_path, make, message):
    with pytest.raises(ImageInputError, match=message):
        to_rgb_images(make(tmp_path))


def test_an_unreadable_file_is_called_unreadable(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    noise_image(64, 64).save(tmp_path / "locked.png")
    (tmp_path / "locked.png").chmod(0)
    with pytest.raises(ImageInputError, match="cannot be read \\(permission denied\\)"):
        to_rgb_images(tmp_path / "locked.png")


def test_input_range_must_be_finite_and_increasing():
    for bad in [(float("nan"), 1.0), (0.0, float("inf")), (1.0, 1.0), (1.0, 0.0)]:
        with pytest.raises(ValueError, match="must be finite \\(low, high\\) with low < high"):
            to_rgb_images(torch.zeros(3, 32, 32), input_range=bad)


@pytest.mark.parametrize("shape", [(384, 384, 3), (2, 64, 64, 3)], ids=["HWC", "NHWC"])
def test_a_channels_last_tensor_gets_the_shape_passed_and_a_fix_that_works(shape):
    pixels = torch.rand(shape)
    with pytest.raises(ImageInputError) as caught:
        to_rgb_images([pixels])
    message = str(caught.value)
    assert f"has shape {shape};" in message and "(1, 384, 384, 3)" not in message
    dims = [int(d) for d in re.search(r"use tensor\.permute\(([\d, ]+)\)\.$", message).group(1).split(",")]
    fixed = to_rgb_images([pixels.permute(*dims)])  # the fix the message gives works on the tensor passed
    assert len(fixed) == (shape[0] if len(shape) == 4 else 1) and fixed[0].size == (shape[-2], shape[-3])


def test_an_animated_image_is_scored_on_a_frame_it_names(tmp_path):
    frames = [Image.new("RGB", (64, 48), color) for color in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    for name in ("a.gif", "b.webp"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], lossless=True)
    paths = [str(tmp_path / "a.gif"), str(tmp_path / "b.webp")]
    with pytest.warns(UserWarning, match=rf"images\[0\] '{paths[0]}' is animated \(3 frames\): only frame 0, the "
                      r"first, is scored \(1 more animated input likewise\)\. To score another frame"):  # fmt: skip
        loaded = to_rgb_images(paths)
    assert [image.getpixel((5, 5)) for image in loaded] == [(200, 0, 0)] * 2
    opened = Image.open(paths[0])
    opened.seek(2)
    with pytest.warns(UserWarning, match=r"image is animated \(3 frames\): only frame 2, the one the PIL image is at"):
        (third,) = to_rgb_images(opened)
    assert third.getpixel((5, 5)) == (0, 0, 200)
    opened.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a still image says nothing
        to_rgb_images(frames[0])
