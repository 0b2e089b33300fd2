"""The JSONL results file of `vq-reward score`: a rerun resumes it, and nothing scored is lost, written twice or
mixed. Light (no torch), so the command line checks a file before it loads a model; `results` fills it.

The file's first line is a header that names what produced it (the model, a fingerprint of its weights, the pixel
budget, the prompt, the readout, the mode); every later line is one image: its score (standard deviation, digit
probabilities and mass), its reasoning in thinking mode, or an error. A run appends a chunk of lines at a time and
syncs them to disk; a run killed mid-write leaves at most a torn last line, which the next run drops.

A results file is refused, untouched, when:
- it is not one (its first line is not a vq_reward header): a notes file or a model's weights are never overwritten;
- it was produced by another run (other weights at the same path, another pixel budget, prompt, readout or mode);
- another run is writing it right now (an exclusive lock held while a run appends).

Paths are compared resolved, so `a.png` and `/abs/a.png` are one image; every name the filesystem can hold is kept
exactly (JSON escapes what is not UTF-8, and `os.fsencode(line["path"])` gives back the bytes).
"""

import fcntl
import json
import os
from pathlib import Path
from typing import Any


HEADER_KEY = "vq_reward_results"
FORMAT_VERSION = 1


class ResultsFileError(ValueError):
    """A results file that this run may not write to. The message names the file and the fix."""


class ResultsFile:
    """One run's hold on a results file: locked, checked and repaired on `open`, appended to by `append`.

    Example:
        >>> with ResultsFile(tmp_path / "r.jsonl") as results:
        ...     results.start({"model": "tiny"})
        ...     results.append([{"path": "/a.png", "score": 3.5}])
        >>> with ResultsFile(tmp_path / "r.jsonl") as results:
        ...     results.start({"model": "tiny"})
        ...     sorted(results.done())
        ['/a.png']
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = None
        self._created = False
        self._header: dict | None = None
        self._lines: list[dict] = []

    def __enter__(self) -> "ResultsFile":
        if not self.path.parent.is_dir():
            raise ResultsFileError(f"{self.path}: the folder {self.path.parent} does not exist; create it first.")
        self._created = not self.path.exists()
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held open for the lock and the appends
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise ResultsFileError(
                f"{self.path} is being written by another vq-reward run; wait for it to finish, or pass another "
                "--output."
            ) from None
        self._read()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._created and self.path.stat().st_size == 0:  # a run that failed before writing leaves nothing behind
            self.path.unlink()
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()

    def start(self, identity: dict[str, Any]) -> None:
        """Check that the file belongs to this run (`identity`), or write the header of a new file."""
        if self._header is None:
            self._write([{HEADER_KEY: FORMAT_VERSION, "run": identity}])
            self._header = {"run": identity}
            return
        recorded = self._header["run"]
        differences = [key for key in sorted(set(recorded) | set(identity)) if recorded.get(key) != identity.get(key)]
        if differences:
            details = "; ".join(
                f"{key}: {recorded.get(key)!r} in the file, {identity.get(key)!r} now" for key in differences
            )
            raise ResultsFileError(
                f"{self.path} holds results of another run ({details}); pass a new --output, or the same --model and "
                "settings to resume."
            )

    def done(self, retry_errors: bool = False) -> set[str]:
        """Paths the file already answers for (error lines too, unless `retry_errors`)."""
        answered: set[str] = set()
        for line in self._lines:
            if "error" in line and retry_errors:
                answered.discard(line["path"])
            else:
                answered.add(line["path"])
        return answered

    def scores(self) -> dict[str, float]:
        """The score of every path the file holds one for (the latest line of a path wins)."""
        return {line["path"]: line["score"] for line in self._lines if line.get("score") is not None}

    def append(self, lines: list[dict]) -> None:
        """Append result lines and sync them to disk."""
        self._write(lines)
        self._lines.extend(lines)

    def _write(self, lines: list[dict]) -> None:
        # ensure_ascii: a file name that is not UTF-8 (a lone surrogate in Python) is escaped, never an error.
        self._file.write("".join(json.dumps(line) + "\n" for line in lines).encode("ascii"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def _read(self) -> None:
        self._file.seek(0)
        raw = self._file.read()
        if not raw:
            return
        first = raw.split(b"\n", 1)[0]
        if not _is_header(first):
            raise ResultsFileError(
                f"{self.path} is not a vq_reward results file (its first line is not a results header), so it is left "
                "untouched; pass a new --output."
            )
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):  # a torn last line from a killed run: drop it
            self._file.truncate(len(complete))
        lines = complete.decode("utf-8").splitlines()
        self._header = json.loads(lines[0])
        for number, text in enumerate(lines[1:], start=2):
            try:
                self._lines.append(json.loads(text))
            except json.JSONDecodeError as error:
                raise ResultsFileError(
                    f"{self.path}:{number} is not valid JSON ({error}); fix or delete that line."
                ) from None


def _is_header(line: bytes) -> bool:
    try:
        header = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (
        isinstance(header, dict) and header.get(HEADER_KEY) == FORMAT_VERSION and isinstance(header.get("run"), dict)
    )
