"""The JSONL results file of `vq-reward score` (and the scores file of `vq-reward eval`): a rerun resumes it, and
nothing scored is lost, written twice or mixed. Light (no torch), so the command line checks a file before it
loads a model; `vq_reward.batch.job` fills it.

Every line is one image, a JSON object (strict JSON: no NaN, no Infinity), in the order images were scored:

    {"path": "/abs/a.png", "score": 3.8071, "std": 0.74, "digit_mass": 0.98, "probs": [p1, .., p5], "dot_mass": [..]}
    {"path": "/abs/b.png", "error": "/abs/b.png: not an image (cannot identify image file); ..."}
    {"path": "/abs/c.png", "score": 4.0, "raw_score": "4.00", "reasoning": "...", "text": "..."}   (--thinking)

`path` is absolute and resolved (`os.fsencode(path)` gives back the bytes of any file name); `score` is a finite
number in [1, 5] with every digit of the float32 value (a model that gives NaN gets an error line instead), `null`
in thinking mode when the answer held no number. A `--retry-errors` rerun appends a new line for a failed image:
the last line of a path wins. To read one:

    pandas.read_json("results.jsonl", lines=True).drop_duplicates("path", keep="last")
    jq -r 'select(.score != null) | "\\(.score)\\t\\(.path)"' results.jsonl
    duckdb -c "SELECT path, score FROM read_json_auto('results.jsonl') WHERE score IS NOT NULL ORDER BY score"

The run that wrote the file is described beside it, in `results.jsonl.run.json` (`{"vq_reward_results": 1, "run":
{...}}`: the model, a fingerprint of its weights, the pixel budget, a digest of the prompt, the mode, the readout);
keep the two together. A run appends a chunk of lines at a time and syncs them to disk; a run killed mid-write
leaves at most a torn last line, which the next run drops. A results file is refused, untouched, when:

- it is not one (it is not empty and no run file lies beside it): a notes file or a model's weights are never
  overwritten; a vq-reward 0.2 file (its first line the run's header) is refused with the command that converts it;
- it was written by another run (other weights at the same path, another pixel budget, prompt, readout or mode);
- another run is writing it right now (an exclusive lock held while a run appends).

A symbolic link given as the file is followed: its target is the results file, and the link is left as it is.
"""

import errno
import fcntl
import json
import math
import os
import shlex
from pathlib import Path
from typing import IO, Any

from vq_reward.batch.files import check_output


RUN_KEY = "vq_reward_results"
RUN_VERSION = 1


class ResultsFileError(ValueError):
    """A results file that this run may not (or could not) write to. The message names the file and the fix."""


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
        >>> (tmp_path / "r.jsonl").read_text()
        '{"path": "/a.png", "score": 3.5}\\n'
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)  # as the user named it, for messages
        self.target = Path(os.path.realpath(path))  # what is written: a link is followed, never replaced
        self.run_path = self.target.with_name(self.target.name + ".run.json")
        self._file: IO[bytes] | None = None
        self._run: dict | None = None
        self._lines: list[dict] = []

    @classmethod
    def check(cls, path: str | os.PathLike, make_folders: bool = False) -> None:
        """Refuse, before a model loads, a file this run could not append to: not a results file, being written,
        unwritable, a line that cannot be read. Creates, changes and deletes nothing."""
        check_output(path, make_folders)
        results = cls(path)
        if results.target.exists():
            with open(results.target, "rb") as file:
                results._lock(file, fcntl.LOCK_SH)  # shared: a read-only file may not take an exclusive lock on NFS
                results._read(file, repair=False)

    def __enter__(self) -> "ResultsFile":
        check_output(self.path)
        self._file = open(self.target, "a+b")  # noqa: SIM115 - held open for the lock and the appends
        try:
            self._lock(self._file, fcntl.LOCK_EX)
            self._read(self._file, repair=True)
        except BaseException:
            self._file.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()  # releases the lock

    def start(self, identity: dict[str, Any]) -> None:
        """Check that the file belongs to this run (`identity`), or record the run beside a new (or empty) file."""
        if self._run is None:
            # Written before the first line: a run file is only ever replaced while the results file is empty.
            text = json.dumps({RUN_KEY: RUN_VERSION, "run": identity}, allow_nan=False) + "\n"
            with open(self.run_path, "wb") as file:
                _write_synced(file, text.encode("ascii"), self.run_path)
            self._run = identity
            return
        recorded = self._run
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
        """Append result lines (strict JSON: a non-finite number is a `ValueError`) and sync them to disk."""
        # ensure_ascii: a file name that is not UTF-8 (a lone surrogate in Python) is escaped, never an error.
        text = "".join(json.dumps(line, allow_nan=False) + "\n" for line in lines)
        assert self._file is not None, "append() needs the file open: use `with ResultsFile(path) as results`"
        _write_synced(self._file, text.encode("ascii"), self.path)
        self._lines.extend(lines)

    def _lock(self, file: IO[bytes], kind: int) -> None:
        try:
            fcntl.flock(file.fileno(), kind | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResultsFileError(
                f"{self.path} is being written by another vq-reward run; wait for it to finish, or pass another "
                "--output."
            ) from None

    def _read(self, file: IO[bytes], repair: bool) -> None:
        file.seek(0)
        raw = file.read()
        if not raw:  # a new file, or one whose run wrote nothing: its run file (if any) is replaced by `start`
            return
        self._run = self._recorded_run()
        if self._run is None:
            raise ResultsFileError(self._not_ours(raw.split(b"\n", 1)[0]))
        complete = raw[: raw.rfind(b"\n") + 1]
        if repair and len(complete) != len(raw):  # a torn last line from a killed run: drop it
            file.truncate(len(complete))
        self._lines = [self._record(line, number) for number, line in enumerate(complete.split(b"\n")[:-1], 1)]

    def _recorded_run(self) -> dict | None:
        try:
            recorded = json.loads(self.run_path.read_bytes())
        except (OSError, ValueError):
            return None
        return recorded["run"] if _is_run(recorded) else None

    def _not_ours(self, first_line: bytes) -> str:
        try:
            legacy = _is_run(json.loads(first_line))
        except ValueError:
            legacy = False
        if legacy:
            results, run = shlex.quote(str(self.target)), shlex.quote(str(self.run_path))
            return (
                f"{self.path} was written by vq-reward 0.2 (its first line is the run's header); convert it once, "
                f"then rerun: head -n 1 {results} > {run} && tail -n +2 {results} > {results}.new && mv "
                f"{results}.new {results}"
            )
        return (
            f"{self.path} is not a vq_reward results file (it is not empty and {self.run_path.name} is not beside "
            "it), so it is left untouched; pass a new --output."
        )

    def _record(self, line: bytes, number: int) -> dict:
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            problem = "is not UTF-8 text"
        except json.JSONDecodeError as error:
            problem = f"is not valid JSON ({error})"
        else:
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                return record if is_finite(record) else non_finite_line(record["path"])  # NaN from vq-reward 0.2
            problem = 'is not a results line (a JSON object with a "path")'
        raise ResultsFileError(f"{self.path}:{number} {problem}; fix or delete that line, then rerun.")


def is_finite(value: Any) -> bool:
    """Whether every number in a results line (nested lists and dicts too) is finite.

    Example:
        >>> is_finite({"score": 3.5, "probs": [0.5, 0.5]}), is_finite({"score": float("nan")})
        (True, False)
    """
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(is_finite(item) for item in value.values())
    if isinstance(value, list):
        return all(is_finite(item) for item in value)
    return True


def non_finite_line(path: str) -> dict:
    """The error line of an image whose score is not a finite number (a broken model, or a server answering NaN)."""
    error = (
        f"{path}: the model gave a score that is not a finite number (NaN or infinity), so none is recorded; check "
        "the model's weights (or the server), then rerun with --retry-errors."
    )
    return {"path": path, "error": error}


def _is_run(record: Any) -> bool:
    return isinstance(record, dict) and record.get(RUN_KEY) == RUN_VERSION and isinstance(record.get("run"), dict)


def _write_synced(file: IO[bytes], data: bytes, name: Path) -> None:
    try:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    except OSError as error:
        reason = "the disk is full" if error.errno == errno.ENOSPC else error.strerror or str(error)
        raise ResultsFileError(
            f"{name}: could not write ({reason}, errno {error.errno}); fix that, then rerun the same command to "
            "resume."
        ) from error
