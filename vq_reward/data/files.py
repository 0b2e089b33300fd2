"""Finding image files: light (no torch), so the command line can check its paths before loading a model."""

import os
from collections.abc import Iterable
from pathlib import Path


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def find_images(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given, and the image files under each folder (recursively, sorted), resolved, without repeats.

    Raises `FileNotFoundError` for a path that does not exist, so a typo fails before any work.
    """
    found: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(str(p.resolve()) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS))
        elif path.exists():
            found.append(str(path.resolve()))
        else:
            raise FileNotFoundError(f"{os.fsdecode(path)}: no such file or folder; check the path.")
    return list(dict.fromkeys(found))
