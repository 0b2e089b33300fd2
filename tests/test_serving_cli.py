"""`vq-reward serve MODEL --engine ray` as a user runs it: start-up failures are one line and a non-zero exit
(before any Ray starts); SIGTERM, SIGINT and SIGHUP stop everything it started, and SIGKILL leaves nothing behind
either (slow: a real local Ray each)."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def serve(*args: str, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "vq_reward.cli", "serve", *args, "--engine", "ray"]
    return subprocess.Popen(command, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line_failure(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_a_missing_model_is_one_line(tmp_path):
    line = one_line_failure(serve(str(tmp_path / "no-such-model"), "--port", str(free_port())))
    assert "no-such-model" in line and "no such checkpoint folder" in line


def test_a_port_in_use_is_one_line(tiny_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_failure(serve(str(tiny_path), "--port", str(port)))
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line


def test_ray_not_installed_is_one_line(tiny_path, tmp_path):
    stand_in = tmp_path / "ray"  # an import of ray that fails, as on a machine without the serve extra
    stand_in.mkdir()
    (stand_in / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**ENV, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ENV.get('PYTHONPATH', '')}"}
    line = one_line_failure(serve(str(tiny_path), "--port", str(free_port()), env=env))
    assert "pip install 'vq-reward[serve]'" in line


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (read from /proc while the tree is whole)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (zombies waiting for init count as gone)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.add(pid)
    return running


@pytest.mark.slow
@pytest.mark.parametrize(
    "number, when",
    [("SIGTERM", "ready"), ("SIGHUP", "ready"), ("SIGKILL", "ready"), ("SIGINT", "starting"), ("SIGKILL", "starting")],
)
def test_a_signal_stops_everything_it_started(tiny_path, number, when):
    """Once ready, or while starting (Ray's processes up, the replicas not ready): nothing outlives the launcher,
    and its Ray folder is gone."""
    folders = set(Path(tempfile.gettempdir()).glob("vqr-ray-*"))
    port = free_port()
    process = serve(str(tiny_path), "--port", str(port))
    seen: set[int] = set()
    line, deadline = "", time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        seen |= descendants(process.pid)
        if when == "starting" and len(seen) >= 5:  # the watchdog, Ray's GCS, raylet and agents
            break
        if when == "ready":
            line = process.stdout.readline()
            if "serves" in line:
                break
        time.sleep(0.1)
    seen |= descendants(process.pid)
    assert process.poll() is None, process.stderr.read()
    assert when == "starting" or f"http://127.0.0.1:{port} serves" in line
    started = time.monotonic()
    process.send_signal(getattr(signal, number))
    process.wait(timeout=60)
    if number != "SIGKILL":
        assert process.returncode == 0, process.stderr.read()
    exited = time.monotonic()
    assert exited - started < 60, f"the launcher took {exited - started:.0f} s to stop"
    while alive(seen) and time.monotonic() - exited < 15:  # Ray's own agents alone linger a minute or more
        time.sleep(0.5)
    assert not alive(seen), f"left running 15 s after the launcher exited on {number}: {alive(seen)}"
    assert set(Path(tempfile.gettempdir()).glob("vqr-ray-*")) <= folders
