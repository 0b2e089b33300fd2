"""Paths of a batch run: the image files to score, and output paths checked before a model loads.

Light (no torch), so the command line refuses a typo or an unwritable output in a fraction of a second.
"""

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


def check_output(path: str | os.PathLike, make_folders: bool = False) -> None:
    """Refuse an output path that could not be written, before any work: a folder, a missing or read-only folder,
    a read-only file. Creates, changes and deletes nothing; a symbolic link is followed (its target is written).

    Args:
        make_folders: the writer creates missing folders, so the nearest existing one must allow it.

    Example:
        >>> check_output(tmp_path / "missing" / "report.json")
        Traceback (most recent call last):
        FileNotFoundError: .../missing/report.json: the folder .../missing does not exist; create it first.
    """
    name = os.fsdecode(path)
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise IsADirectoryError(f"{name} is a folder; pass a file path.")
    existing = target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{name}: {existing} is a file, not a folder; pass another path.")
    if existing != target.parent and not make_folders:
        raise FileNotFoundError(f"{name}: the folder {target.parent} does not exist; create it first.")
    if target.exists() and not os.access(target, os.W_OK):
        raise PermissionError(f"{name} is read-only; pass another path or make it writable.")
    if not target.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}: cannot create files in {existing}; pass another path.")
