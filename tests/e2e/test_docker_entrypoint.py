"""docker/'s entrypoint and probe against the real server: the embedded tritonserver 2.51 (the release of the
official 24.10 image) started the way the image starts it, with the image's own flags (docker/Dockerfile CMD).

What differs from the image, and why: a stand-in `tritonserver` on PATH runs the embedded binary with the kit's
Python-based `onnxruntime` backend (the image has the native one), its own shared-memory prefix, and loopback
addresses (tests listen on 127.0.0.1 only). Ports are free ones instead of 8000-8002.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from builder.pipeline.build import build_variant
from builder.serving.server import BACKEND_SOURCE, FRONT_SCRIPT, free_port, triton_paths
from builder.core.spec import load_spec
from builder.serving.tritonconfig import ServingConfig
from tests.conftest import TINY_SPEC
from tests.unit.test_deployment import ADMIN_HEADER, ENTRYPOINT, PROBE, image_args

pytestmark = pytest.mark.e2e

KEY = "e2e-admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("docker")
    artifacts = pathlib.Path(os.environ.get("KIT_TEST_ARTIFACTS") or root / "artifacts")
    build_variant(load_spec(TINY_SPEC), "fp32", root / "model_repository", artifacts, ServingConfig(), command="tests")
    return root / "model_repository"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> pathlib.Path:
    """A folder whose `tritonserver` runs the embedded binary as the image's would run (see the module doc)."""
    binary, libs, root = triton_paths()
    folder = tmp_path_factory.mktemp("stand-in")
    python_backend = folder / "backends" / "python"
    python_backend.mkdir(parents=True)
    # as EmbeddedServer.start lays it out: copies (Triton refuses a backend library that "escapes" its folder)
    for item in (root / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python_backend / item.name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(root / "python_backend_stubs" / version / "triton_python_backend_stub", python_backend)
    shutil.copytree(BACKEND_SOURCE, folder / "backends" / "onnxruntime", ignore=shutil.ignore_patterns("__pycache__"))
    script = folder / "bin" / "tritonserver"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f"export LD_LIBRARY_PATH={libs}\n"
        f"export PATH={pathlib.Path(sys.executable).parent}:$PATH\n"   # the stub finds the venv's python3 here
        f'exec {binary} --backend-directory={folder / "backends"} '
        '--backend-config=python,shm-region-prefix-name="$TEST_SHM_PREFIX" '
        '--http-address=127.0.0.1 --grpc-address=127.0.0.1 --metrics-address=127.0.0.1 "$@"\n')
    script.chmod(0o755)
    return script.parent


class Server:
    """tritonserver started through `command` (the entrypoint, or the stand-in directly) on free ports."""

    def __init__(self, command: list[str], args: list[str], stand_in: pathlib.Path, log: pathlib.Path,
                 env: dict | None = None):
        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        args = [a for a in args if not a.startswith(("--http-port=", "--grpc-port=", "--metrics-port="))]
        args += [f"--{name}-port={port}" for name, port in self.ports.items()] + ["--http-address=127.0.0.1"]
        self.behind = free_port()  # Triton's own HTTP behind the entrypoint's front
        self.shm_prefix = f"tritonkit_e2e_{uuid.uuid4().hex[:8]}_"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRITONKIT_ADMIN_KEY")}
        full_env.update({"PATH": f"{stand_in}:{os.environ['PATH']}", "TEST_SHM_PREFIX": self.shm_prefix,
                         "TRITONKIT_ADMIN_KEY_FILE": "/nonexistent", "TRITONKIT_FRONT": str(FRONT_SCRIPT),
                         "TRITONKIT_TRITON_HTTP_PORT": str(self.behind), **(env or {})})
        self.log = log
        self.process = subprocess.Popen([*command, *args], env=full_env, stdout=open(log, "wb"),
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.ports['http']}"

    def wait_live(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited: {self.log.read_text()[-2000:]}"
            try:
                if http(self.url, "GET", "/v2/health/live")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"not live after {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        for leftover in pathlib.Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            leftover.unlink(missing_ok=True)


def http(url: str, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def image_server(repository, stand_in, tmp_path, env=None) -> Server:
    """The image's ENTRYPOINT (ours; NVIDIA's only prints a banner first) with the image's CMD."""
    args = [f"--model-repository={repository}" if a.startswith("--model-repository=") else a for a in image_args()]
    server = Server(["bash", str(ENTRYPOINT)], args, stand_in, tmp_path / "server.log", env)
    server.wait_live()
    return server


def test_image_flags_serve_every_model_and_lock_the_admin_apis(repository, stand_in, tmp_path):
    server = image_server(repository, stand_in, tmp_path, env={"TRITONKIT_ADMIN_KEY": KEY})
    try:
        smoke = probe("smoke", "--url", server.url, "--wait", "120")
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert "tiny_fp32" in smoke.stdout and "1 of 1 models answered" in smoke.stdout
        assert probe("ready", "--url", server.url).returncode == 0
        assert probe("live", "--url", server.url).returncode == 0

        # without the key: the administrative APIs refuse, including a load that carries code
        code_file = {"parameters": {"config": json.dumps({"name": "evil", "backend": "python"}),
                                    "file:1/model.py": "aW1wb3J0IG9zCg=="}}
        refused = [("POST", "/v2/repository/index", {}), ("POST", "/v2/repository/models/evil/load", code_file),
                   ("POST", "/v2/repository/models/tiny_fp32/unload", {}),
                   ("POST", "/v2/trace/setting", {"trace_file": str(tmp_path / "trace.json")}),
                   ("POST", "/v2/logging", {"log_file": str(tmp_path / "log.txt")}),
                   ("GET", "/v2/systemsharedmemory/status", None)]
        for method, path, body in refused:
            status, text = http(server.url, method, path, body)
            assert status == 403 and ADMIN_HEADER in text, f"{method} {path}: {status} {text}"
            status, _ = http(server.url, method, path, body, headers={ADMIN_HEADER: "wrong-key-0123456789"})
            assert status == 403, f"{method} {path} with a wrong key: {status}"
        # with the key: through the lock (model control `none` still refuses to load or unload anything)
        status, text = http(server.url, "POST", "/v2/repository/index", {}, headers={ADMIN_HEADER: KEY})
        assert status == 200 and json.loads(text)[0]["name"] == "tiny_fp32"
        status, text = http(server.url, "POST", "/v2/repository/models/evil/load", code_file,
                            headers={ADMIN_HEADER: KEY})
        assert status != 403 and status >= 400, text
        assert not (tmp_path / "trace.json").exists() and not (tmp_path / "log.txt").exists()
        assert http(server.url, "GET", "/v2/models/tiny_fp32/ready")[0] == 200   # still served

        # gRPC: the same APIs, the key as metadata with Triton's prefix
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports['grpc']}")
        for call in (client.get_model_repository_index, lambda **kw: client.unload_model("tiny_fp32", **kw)):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        index = client.get_model_repository_index(headers={f"triton-grpc-protocol-{ADMIN_HEADER}": KEY})
        assert [m.name for m in index.models] == ["tiny_fp32"]
        assert client.is_model_ready("tiny_fp32")   # inference-side APIs stay open
        client.close()
    finally:
        server.stop()


def test_without_a_key_the_admin_apis_are_locked_for_everyone(repository, stand_in, tmp_path):
    server = image_server(repository, stand_in, tmp_path)
    try:
        assert probe("smoke", "--url", server.url, "--wait", "120").returncode == 0
        for headers in ({}, {ADMIN_HEADER: ""}, {ADMIN_HEADER: KEY}):
            assert http(server.url, "POST", "/v2/repository/index", {}, headers=headers)[0] == 403
        assert "locked for everyone" in server.log.read_text()
    finally:
        server.stop()


def test_liveness_probe_notices_a_dead_stub_that_readiness_misses(repository, stand_in, tmp_path):
    server = image_server(repository, stand_in, tmp_path)
    try:
        assert probe("smoke", "--url", server.url, "--wait", "120").returncode == 0
        assert probe("live", "--url", server.url).returncode == 0
        stubs = [int(pid) for pid in subprocess.run(["pgrep", "-f", f"{server.shm_prefix}.*tiny_fp32"],
                                                    capture_output=True, text=True).stdout.split()]
        assert stubs, "no stub process found for tiny_fp32"
        for pid in stubs:
            os.kill(pid, signal.SIGKILL)   # as the OOM killer would
        deadline = time.monotonic() + 30
        live = probe("live", "--url", server.url)
        while live.returncode == 0 and time.monotonic() < deadline:
            live = probe("live", "--url", server.url)
        assert live.returncode == 1 and "tiny_fp32" in live.stderr, live.stderr
        # Triton 2.51 still calls the server and the model ready: readiness alone would keep sending traffic
        assert http(server.url, "GET", "/v2/health/ready")[0] == 200
        assert http(server.url, "GET", "/v2/models/tiny_fp32/ready")[0] == 200
        assert probe("ready", "--url", server.url).returncode == 0
    finally:
        server.stop()


def test_readiness_probe_refuses_a_server_with_no_model(stand_in, tmp_path):
    """What the entrypoint's empty-repository check is for, and why the probe checks it again (object stores):
    with strict readiness, Triton calls a server with zero models ready."""
    empty = tmp_path / "empty"
    empty.mkdir()
    server = Server([str(stand_in / "tritonserver")], [f"--model-repository={empty}", "--model-control-mode=none",
                                                       "--strict-readiness=true", "--exit-on-error=true"],
                    stand_in, tmp_path / "server.log")
    try:
        server.wait_live()
        assert http(server.url, "GET", "/v2/health/ready")[0] == 200
        ready = probe("ready", "--url", server.url)
        assert ready.returncode == 1 and "serves no model" in ready.stderr
        smoke = probe("smoke", "--url", server.url, "--wait", "1")
        assert smoke.returncode == 1 and smoke.stderr.count("error:") == 1
    finally:
        server.stop()


def test_the_images_http_port_is_the_front_and_tritons_own_answers_nobody_else(repository, stand_in, tmp_path):
    server = image_server(repository, stand_in, tmp_path)
    try:
        assert probe("smoke", "--url", server.url, "--wait", "120").returncode == 0
        huge = {"inputs": [{"name": "x", "shape": [1, 10**9], "datatype": "FP32", "data": [1]}]}
        status, text = http(server.url, "POST", "/v2/models/tiny_fp32/infer", huge)
        assert status == 400 and "declares shape [1, 1000000000]" in text
        behind = f"http://127.0.0.1:{server.behind}"
        status, text = http(behind, "POST", "/v2/models/tiny_fp32/infer", huge)
        assert status == 403 and "tritonkit-front-key" in text
        assert http(behind, "GET", "/v2/health/ready")[0] == 403
        assert http(server.url, "GET", "/v2/health/ready")[0] == 200
        assert "through the front" in server.log.read_text()
        # a stop reaches Triton through the entrypoint's trap, and the front goes with it
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(40) == 0
        with pytest.raises(OSError):
            http(server.url, "GET", "/v2/health/live")
    finally:
        server.stop()
