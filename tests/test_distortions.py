"""Synthetic degradations: every kind gets worse with severity, deterministically, and a set round-trips to labels."""

import numpy as np
import pytest
from PIL import Image

from vq_reward.data.distorted_sets import make_distorted_set
from vq_reward.distortions import DISTORTIONS, distort, quality_label, severity_name


PHOTO = "examples/images/chelsea.jpg"


@pytest.fixture(scope="module")
def photo():
    return Image.open(PHOTO).convert("RGB").crop((100, 60, 228, 188))


def _mse(a: Image.Image, b: Image.Image) -> float:
    return float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())


@pytest.mark.parametrize("kind", DISTORTIONS)
def test_error_from_clean_grows_with_severity(photo, kind):
    errors = [_mse(photo, distort(photo, kind, level)) for level in range(1, 6)]
    assert all(a < b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert distort(photo, kind, 3).size == photo.size


def test_each_kind_does_what_its_name_says(photo):
    brightness = [np.asarray(distort(photo, "darken", s)).mean() for s in (1, 5)]
    assert brightness[1] < brightness[0] < np.asarray(photo).mean()

    # Blur removes high frequencies: neighbouring pixels differ less.
    def roughness(image):
        return np.abs(np.diff(np.asarray(image, dtype=np.float64), axis=1)).mean()

    assert roughness(distort(photo, "blur", 4)) < roughness(photo) < roughness(distort(photo, "noise", 4))


def test_deterministic(photo):
    for kind in DISTORTIONS:
        assert distort(photo, kind, 2).tobytes() == distort(photo, kind, 2).tobytes()


def test_labels_fall_with_severity():
    assert [quality_label(s) for s in range(6)] == [5.0, 4.2, 3.4, 2.6, 1.8, 1.0]
    assert [severity_name(s) for s in range(6)] == ["null", "slight", "moderate", "obvious", "serious", "catastrophic"]


@pytest.mark.parametrize(("kind", "severity"), [("sharpen", 1), ("blur", 0), ("blur", 6), ("blur", 2.5)])
def test_bad_arguments_name_the_choices(photo, kind, severity):
    with pytest.raises(ValueError, match="choose one of|severity must be"):
        distort(photo, kind, severity)


def test_make_distorted_set_writes_images_and_labels(tmp_path):
    rows = make_distorted_set(
        "examples/images", tmp_path, kinds=("blur", "darken"), levels=(1, 5), crops_per_image=1, crop_size=96
    )
    assert len(rows) == 8 * (1 + 2 * 2)
    lines = (tmp_path / "labels.txt").read_text().splitlines()
    assert len(lines) == len(rows)
    name, mos = lines[1].split()
    assert (tmp_path / name).is_file() and Image.open(tmp_path / name).size == (96, 96)
    assert float(mos) == rows[1].mos == quality_label(rows[1].level)
    assert len({row.reference for row in rows}) == 8  # one crop per photo, each its own reference
    assert all(row.image.startswith(row.reference + "__") for row in rows)


def test_crop_larger_than_photo_is_refused(tmp_path):
    with pytest.raises(ValueError, match="smaller than crop_size"):
        make_distorted_set("examples/images", tmp_path, crops_per_image=1, crop_size=1000)
