"""Reading and writing JSON-lines files: one reader with `file:line` errors, one atomic writer.

Every data file of the project (training rows, label objects, distortion sets) goes through these two functions,
so an error always names the file and the line, and a file is either written whole or not at all.
"""

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


class DataFileError(ValueError):
    """A data file that cannot be used. The message names the file, the line and the fix."""


def read_objects(path: str | os.PathLike, hint: str = "") -> Iterator[tuple[int, dict]]:
    """`(line number, object)` for every non-blank line of a JSONL file, or every item of a JSON list.

    Args:
        hint: what to do when the file is missing (e.g. which command writes it).

    Example:
        >>> path = write_jsonl([{"a": 1}, {"a": 2}], tmp_path / "x.jsonl")
        >>> [(line, obj["a"]) for line, obj in read_objects(path)]
        [(1, 1), (2, 2)]
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file.{' ' + hint if hint else ''}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark is dropped, not a JSON error
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path}: not UTF-8 text ({error}); is it a JSON file?") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataFileError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from None
        for index, item in enumerate(items):
            yield index + 1, _object(item, path, f"item {index}")
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFileError(f"{path}:{number}: not valid JSON ({error.msg}).") from None
        yield number, _object(item, path, str(number))


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write one JSON object per line, atomically: a temporary file beside `path`, synced, then renamed over it.

    A full disk or a kill leaves the old file (or none), never a partial one. Parent folders are created.
    """
    path = Path(path)
    return write_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_jsonl_files(files: dict[Path, list[dict]]) -> list[Path]:
    """Write several JSONL files all or none: each goes to a synced temporary file first, and only when every one
    is written are they renamed into place (a full disk leaves no partial split behind)."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, rows in files.items():
            staged.append((_staged(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)), path))
    except BaseException:
        for temporary, _ in staged:
            Path(temporary).unlink(missing_ok=True)
        raise
    for temporary, path in staged:
        os.replace(temporary, path)
    return [path for _, path in staged]


def write_atomically(path: Path, text: str) -> Path:
    """Write `text` to `path` through a synced temporary file and a rename (see `write_jsonl`)."""
    os.replace(_staged(path, text), path)
    return path


def _staged(path: Path, text: str) -> str:
    """`text` in a synced temporary file beside `path` (parent folders created); its name. Removed again if writing
    fails, and an OS error (a full disk) names `path`."""
    if path.is_dir():
        raise DataFileError(f"{path} is a folder; name the file to write.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataFileError(
            f"cannot make the folder {path.parent}: a file is in the way; choose another folder."
        ) from None
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, _file_mode(path))  # mkstemp makes 0600 files; these are the user's, like any they write
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            raise OSError(error.errno, f"cannot write {path}: {error.strerror}") from error
        raise
    return temporary


def _object(item: object, path: Path, where: str) -> dict:
    if not isinstance(item, dict):
        raise DataFileError(f"{path}:{where}: expected a JSON object, got {type(item).__name__}.")
    return item


def _file_mode(path: Path) -> int:
    """The mode `path` keeps when it is replaced, or a new file's mode under the process umask (as `open` gives)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
