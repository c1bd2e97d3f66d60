"""`builder serve` as a user runs it: failed models named with their reason, clean stop, clear startup errors."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from builder.serving.server import free_port
from client import TritonClient
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.e2e


def start_serve(repository: pathlib.Path, *extra) -> tuple[subprocess.Popen, list[str], dict]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    process = subprocess.Popen(
        [sys.executable, "-m", "builder", "serve", "--repository", str(repository), "--http-port", str(ports["http"]),
         "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"]), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("serving;"):
            return process, lines, ports
    process.kill()
    raise AssertionError("builder serve did not come up:\n" + "\n".join(lines))


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and int(pid) != os.getpid():
                found.append(cmdline)
    return found


@pytest.fixture
def repository_with_a_corrupt_model(built, tmp_path):
    repository = tmp_path / "repo"
    repository.mkdir()
    shutil.copytree(built["repository"] / "digits_fp32", repository / "digits_fp32")
    broken = repository / "broken_fp32"
    shutil.copytree(built["repository"] / "digits_fp32", broken)
    (broken / "config.pbtxt").write_text((broken / "config.pbtxt").read_text().replace("digits_fp32", "broken_fp32"))
    for model in broken.glob("*/model.onnx"):
        model.write_bytes(b"this is not an ONNX file")
    return repository


def test_a_corrupt_model_is_reported_and_the_others_serve_then_sigterm_stops_cleanly(repository_with_a_corrupt_model):
    repository = repository_with_a_corrupt_model
    process, lines, ports = start_serve(repository)
    try:
        output = "\n".join(lines)
        assert "digits_fp32                      READY" in output
        broken = next(l for l in lines if "broken_fp32" in l)
        assert "UNAVAILABLE" in broken and "ONNX Runtime cannot load" in broken and "builder build" in broken
        assert "1 model(s) failed to load" in output
        with TritonClient(f"grpc://127.0.0.1:{ports['grpc']}") as client:
            assert client.infer("digits_fp32", {"image": np.zeros((1, 1, 28, 28), np.float32)})["logits"].shape == (1, 10)
        assert processes_mentioning(str(repository))  # server and stub are running
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert rest.strip().endswith("stopped")
    assert processes_mentioning(str(repository)) == []  # no orphaned server or stub
    assert not list(pathlib.Path("/dev/shm").glob(f"tritonkit_{process.pid}_*"))
    assert (repository / "broken_fp32" / "config.pbtxt").is_file()  # nothing on disk was touched


def test_port_in_use_is_a_clear_error(built):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("builder", "serve", "--repository", built["repository"], "--http-port", port,
                         "--grpc-port", free_port(), "--metrics-port", free_port(), timeout=60)
    assert result.returncode == 2
    assert f"error: port {port} (HTTP) is already in use" in result.stderr
    assert "hint: pass another --http-port" in result.stderr


def test_missing_repository_is_a_clear_error(tmp_path):
    result = run_cli("builder", "serve", "--repository", tmp_path / "nope", "--http-port", free_port(),
                     "--grpc-port", free_port(), "--metrics-port", free_port(), timeout=60)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "builder build" in result.stderr
