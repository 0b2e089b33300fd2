"""Stops a local Ray instance whose launcher is gone, however it went (SIGKILL included), and removes its folder.

The launcher starts this process first, in a session of its own, with a pipe on its stdin. When the pipe closes
(the launcher stopped, or died), this process kills every process of the Ray instance, the launcher excepted, and
removes the instance's temporary folder. A process belongs to the instance when its environment holds the mark the
launcher set before starting Ray (workers inherit it), or when it holds a file open inside the instance's folder
(Ray's agents, started with an environment of their own, keep their logs there). Ray's own parent-death handling
stops its core processes with the launcher, but its agents linger for a minute or more; this stops them at once.

    python -m vq_reward.serving.watchdog MARK TEMP_DIR   (Linux: it reads /proc)
"""

import os
import shutil
import signal
import sys
import time


MARK_VARIABLE = "VQ_REWARD_RAY_INSTANCE"


def instance_processes(mark: str, folder: str, spare: set[int]) -> list[int]:
    """The instance's processes (see the module docstring), except those in `spare`."""
    needle = f"{MARK_VARIABLE}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in spare and _belongs(entry, needle, folder + os.sep):
            found.append(int(entry))
    return found


def _belongs(pid: str, needle: bytes, folder: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            if needle in file.read().split(b"\0"):
                return True
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(folder) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # gone meanwhile, or not ours to read
        return False


def stop_instance(mark: str, folder: str, spare: set[int], grace: float = 5.0) -> None:
    """SIGTERM to every process of the instance, then SIGKILL to those still alive after `grace` seconds."""
    for number in (signal.SIGTERM, signal.SIGKILL):
        for pid in instance_processes(mark, folder, spare):
            try:
                os.kill(pid, number)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and instance_processes(mark, folder, spare):
            time.sleep(0.2)


def main() -> None:
    mark, temp_dir = sys.argv[1], sys.argv[2]
    launcher = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns when the launcher closes the pipe or dies
    stop_instance(mark, temp_dir, {os.getpid(), launcher})
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
