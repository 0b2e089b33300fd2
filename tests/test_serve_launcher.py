"""`vq-reward serve` leaves nothing running, however it ends: killed (SIGKILL), hung up (SIGHUP) or stopped
(SIGTERM), at several moments of start-up and after. vLLM is played by a stand-in "python" (`--python`) that starts
slowly, ignores SIGTERM while it starts (as vLLM's API server does) and has a child of its own that always ignores
SIGTERM (the engine), so this runs without vLLM; tests/test_vllm.py does the same to the real server under -m vllm.

What survives is found by an environment variable only this test's launcher carries, inherited by everything it
starts: after the launcher is gone, no live process may carry it.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import free_port


FAKE_VLLM = """\
#!{python}
import http.server, os, signal, subprocess, sys, time

if sys.argv[1] == "-c":  # the launcher's "can it import vllm" check
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as vLLM's API server while it starts
engine = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                           "time.sleep(3600)"])
with open(os.path.join(os.environ["VQ_REWARD_TEST_MARK"], "started"), "w") as marker:
    marker.write(f"{{os.getpid()}} {{engine.pid}}")
time.sleep(float(os.environ["FAKE_VLLM_STARTUP_S"]))
signal.signal(signal.SIGTERM, signal.SIG_DFL)  # ready: stops on SIGTERM, its engine does not


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Health).serve_forever()
"""


def marked(mark: str) -> list[int]:
    """Live (not zombie) processes whose environment holds VQ_REWARD_TEST_MARK=mark: what a launcher started
    with that variable started, whoever their parent is now."""
    found = []
    needle = f"VQ_REWARD_TEST_MARK={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or not ours
            continue
        if needle in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


class Launcher:
    """`vq-reward serve tiny --python FAKE` in a session of its own, its output in a log."""

    def __init__(self, folder: Path, tiny_path: Path, startup_s: float) -> None:
        fake = folder / "python"
        fake.write_text(textwrap.dedent(FAKE_VLLM.format(python=sys.executable)))
        fake.chmod(0o755)
        self.folder, self.log = folder, folder / "serve.log"
        env = {**os.environ, "VQ_REWARD_TEST_MARK": str(folder), "FAKE_VLLM_STARTUP_S": str(startup_s)}
        command = [sys.executable, "-m", "vq_reward.cli", "serve", str(tiny_path), "--python", str(fake), "--port",
                   str(free_port()), "--shutdown-timeout", "0", "--device", "cpu"]  # fmt: skip
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)  # fmt: skip

    def wait_for(self, what: str, timeout: float = 120) -> None:
        """Until `what` happened: "starting" (the launcher is about to start vLLM), "started" (vLLM and its
        engine exist, still starting) or "ready" (the URL line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if {
                "starting": "starting vLLM for" in text,
                "started": (self.folder / "started").exists(),
                "ready": "vLLM pid" in text,
            }[what]:
                return
            assert self.process.poll() is None, text
            time.sleep(0.05)
        raise AssertionError(f"not {what} after {timeout} s:\n{self.log.read_text()}")


MOMENTS = [
    pytest.param("SIGKILL", "starting", 600, id="SIGKILL-starting"),  # vLLM may or may not exist yet
    pytest.param("SIGKILL", "started", 600, id="SIGKILL-started"),  # vLLM and its engine exist, deaf to SIGTERM
    pytest.param("SIGHUP", "started", 600, id="SIGHUP-started"),  # a closed terminal during start-up
    pytest.param("SIGKILL", "ready", 1, id="SIGKILL-ready", marks=pytest.mark.slow),  # serving
    pytest.param("SIGTERM", "ready", 1, id="SIGTERM-ready", marks=pytest.mark.slow),  # the operator's stop
]


@pytest.mark.parametrize(("name", "moment", "startup_s"), MOMENTS)
def test_nothing_the_launcher_started_outlives_it(tmp_path, tiny_path, name, moment, startup_s):
    launcher = Launcher(tmp_path, tiny_path, startup_s)
    try:
        launcher.wait_for(moment)
        if moment == "started":
            time.sleep(0.5)  # the watchdog's pipe has vLLM's group, the engine runs
        os.kill(launcher.process.pid, getattr(signal, name))
        code = launcher.process.wait(60)
        deadline = time.monotonic() + 5 + 10  # the watchdog's grace (--shutdown-timeout 0 + 5 s) and slack
        while marked(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marked(str(tmp_path)) == [], launcher.log.read_text()
        if name != "SIGKILL":  # stopped, not killed: a clean exit, whatever the moment
            assert code == 0 and "stopping the vLLM server" in launcher.log.read_text(), launcher.log.read_text()
    finally:
        for pid in marked(str(tmp_path)):  # never leave a stray process behind, even when the test fails
            os.kill(pid, signal.SIGKILL)


FAKE_EXITING = """\
#!{python}
import json, os, sys

if sys.argv[1] == "-c":
    sys.exit(0)
with open(os.path.join(os.path.dirname(sys.argv[0]), "seen.json"), "w") as out:
    json.dump({{"argv": sys.argv, "key": os.environ.get("VLLM_API_KEY")}}, out)
sys.exit(3)
"""


def serve_once(folder: Path, tiny_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`vq-reward serve` with a stand-in vLLM that records its command line and key, then exits 3."""
    fake = folder / "python"
    fake.write_text(FAKE_EXITING.format(python=sys.executable))
    fake.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key not in ("VQ_REWARD_API_KEY", "VLLM_API_KEY")}
    command = [sys.executable, "-m", "vq_reward.cli", "serve", str(tiny_path), "--python", str(fake), "--host",
               "0.0.0.0", "--port", str(free_port()), *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and "exited before answering /health (exit code 3)" in done.stderr, done.stderr
    return done, json.loads((folder / "seen.json").read_text())


def test_a_public_host_without_a_key_is_warned_about(tmp_path, tiny_path):
    done, seen = serve_once(tmp_path, tiny_path)
    assert "--host 0.0.0.0 exposes vLLM's whole OpenAI API" in done.stderr and "--api-key KEY" in done.stderr
    assert seen["key"] is None


def test_the_api_key_reaches_vllm_off_its_command_line(tmp_path, tiny_path):
    done, seen = serve_once(tmp_path, tiny_path, "--api-key", "s3cret")
    assert "exposes" not in done.stderr
    assert seen["key"] == "s3cret" and not any("s3cret" in arg for arg in seen["argv"])  # `ps` does not show it
    names = seen["argv"][seen["argv"].index("--served-model-name") + 1 :][:2]
    assert names[0] == str(tiny_path) and re.fullmatch(re.escape(str(tiny_path)) + "@[0-9a-f]{16}", names[1])
