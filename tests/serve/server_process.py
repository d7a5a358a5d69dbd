"""`bertforge serve` as a user runs it, for the tests: the command in a subprocess on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m bertforge serve CHECKPOINT --port P ...` until stopped; its log in a file.
    Returns once the server is ready (`wait="ready"`) or only live (`wait="live"`: the model may
    still be loading); `env`: more environment variables for it; `python_path`: directories its
    Python imports from before this checkout's src/."""

    def __init__(self, checkpoint: Path, log: Path, *flags: str, wait: str = "ready",
                 env: dict[str, str] | None = None, python_path: tuple[Path, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        path = os.pathsep.join(p for p in (*map(str, python_path), str(REPO / "src"), os.environ.get("PYTHONPATH", ""))
                               if p)
        environment = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(env or {})}
        with log.open("w") as f:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bertforge", "serve", str(checkpoint), "--port", str(self.port),
                 "--device", "cpu", *flags], stdout=f, stderr=subprocess.STDOUT, env=environment)
        probe = f"{self.url}/v2/health/{wait}"
        deadline = time.monotonic() + 180
        while True:
            assert self.process.poll() is None, f"server exited:\n{log.read_text()}"
            try:
                if httpx.get(probe, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not {wait} after 180 s:\n{log.read_text()}"
            time.sleep(0.05 if wait == "live" else 0.3)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)
