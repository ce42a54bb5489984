"""Fixtures for the app tests: the real `app.py` served in a subprocess, and the engine it wraps.

`tests/conftest.py` loads this file with `pytest_plugins = ["fixtures_app"]`: registered once as a
plugin, the session-scoped fixtures are shared, so the API and browser tests use one server.
(Importing the fixtures into each module instead would start one server per module.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mmchat.serving.engine import ChatEngine

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 90  # importing torch + gradio and loading the tiny model takes ~10 s on 2 cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll `url` until it answers; fail early, with the server's log, if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"app.py did not answer at {url} within {timeout_s} s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def engine(tiny_checkpoint: str) -> ChatEngine:
    """The same model the app serves, in this process: the reference answers come from it.

    fp32, here and in `running_app`: the tests compare answers token for token, and a random model's
    near-ties would follow bf16's rounding, which moves with a batch's shape."""
    return ChatEngine.from_pretrained(tiny_checkpoint, quantization="none", device="cpu", dtype="float32")


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a server process, killing it if it does not end within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serve_app(args: list[str], folder: Path, port: int | None = None, app_dir: Path = ROOT) -> Iterator[str]:
    """`python app.py ARGS` on `port` (a free one by default), its uploads and log in `folder`; yields its URL.

    The same port again is the same origin to a browser: its local storage (saved chats) carries over.
    `app_dir` holds the `app.py` to run, and is its working directory; another folder than this
    repository (a staged Space) runs without PYTHONPATH, so it imports only what it holds.
    """
    port = port or free_port()
    log = folder / "app.log"
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        # Uploads and overlays go to the test's temporary folder, not the shared /tmp/gradio.
        "GRADIO_TEMP_DIR": str(folder / "gradio"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MMCHAT_MODEL", None)  # the model is the test's choice, not the shell's
    if app_dir != ROOT:
        env.pop("PYTHONPATH", None)
    command = [sys.executable, str(app_dir / "app.py"), *args, "--port", str(port), "--device", "cpu"]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=app_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, process, log, START_TIMEOUT_S)
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def running_app(tiny_checkpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py` serving the tiny checkpoint on a free port; yields its URL."""
    with serve_app(["--model", tiny_checkpoint, "--dtype", "float32"], tmp_path_factory.mktemp("app")) as url:
        yield url
