"""The embedded Triton server: the real `tritonserver` 2.51 binary from the nvidia-pytriton wheel, no Docker.

Triton serves models with `backend: "onnxruntime"` through the kit's Python-based backend
(builder/serving/backends/onnxruntime/model.py). A backend directory is assembled per server in a temporary folder:
`python/` (the Python backend library, its utils and the stub for this Python version, all from the wheel) and
`onnxruntime/model.py`. The stub ignores PYTHONPATH and finds this virtual environment through `python3` on
PATH, so the interpreter's folder goes first on PATH; the server needs LD_LIBRARY_PATH to the wheel's libs.

Models built with `--device gpu` (KIND_GPU instance groups): Triton refuses them on a machine without GPUs ("has
kind KIND_GPU but no GPUs are available"). With explicit model control the server then loads each such model again
with its config.pbtxt's instance groups turned into KIND_CPU ones (the file is not changed) and says so loudly: in
`cpu_fallbacks`, on `builder serve`'s output and in Triton's log (the backend's warning). Ensembles that failed
because such a model was missing are loaded again after it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

from ..core.errors import ServeError
from .tritonconfig import parse_text

BACKEND_SOURCE = pathlib.Path(__file__).parent / "backends" / "onnxruntime"
SHM_DIR = pathlib.Path("/dev/shm")
NO_GPU = "has kind KIND_GPU but no GPUs are available"  # Triton 2.51's reason for refusing a KIND_GPU model
FALLBACK_PARAMETER = "embedded_cpu_fallback"  # read by backends/onnxruntime/model.py


@dataclass(frozen=True)
class ModelState:
    name: str
    version: str
    state: str  # READY, UNAVAILABLE, LOADING, ...
    reason: str


def triton_paths() -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """(tritonserver binary, the wheel's shared libraries, the tritonserver folder) of the installed wheel."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServeError("the embedded Triton server is not installed (package nvidia-pytriton)", hint="run `make install`")
    root = pathlib.Path(spec.submodule_search_locations[0]) / "tritonserver"
    return root / "bin" / "tritonserver", root.parent.parent / "nvidia_pytriton.libs", root


def check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            raise ServeError(f"port {port} ({what}) is already in use: {e.strerror}",
                             hint=f"pass another --{what.lower()}-port, or stop what listens there (`ss -ltnp 'sport = :{port}'`)") from e


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """Start, query and stop one tritonserver process. Use as a context manager.

    model_control: "explicit" loads every model at start (`--load-model=*`) and allows load/unload through the
    API later; "none" loads everything once; "poll" rescans the repository.
    """

    def __init__(self, repository: str | pathlib.Path, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, model_control: str = "explicit", log_verbose: int = 0,
                 log_file: str | pathlib.Path | None = None):
        self.repository = pathlib.Path(repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.model_control = model_control
        self.log_verbose = log_verbose
        self.log_file = pathlib.Path(log_file) if log_file else None
        self.process: subprocess.Popen | None = None
        self.workdir: pathlib.Path | None = None
        self.cpu_fallbacks: dict[str, str] = {}  # model -> what it asked for and got instead (see the module doc)
        self.shm_prefix = f"tritonkit_{os.getpid()}_{uuid.uuid4().hex[:8]}_"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def __enter__(self) -> "EmbeddedServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        """Start the server and wait until every model in the repository has finished loading (or failed)."""
        if not self.repository.is_dir():
            raise ServeError(f"model repository {self.repository} does not exist",
                             hint="build a model first: `builder build --model digits --variant fp32`")
        for port, what in ((self.http_port, "HTTP"), (self.grpc_port, "GRPC"), (self.metrics_port, "METRICS")):
            check_port_free(port, what)
        binary, libs, root = triton_paths()
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="tritonkit-server-"))
        backends = self.workdir / "backends"
        python_backend = backends / "python"
        python_backend.mkdir(parents=True)
        # copies, not symlinks: Triton resolves links and refuses a backend library that "escapes" its directory
        for item in (root / "backends" / "python").iterdir():
            if item.is_file():
                shutil.copy2(item, python_backend / item.name)
        stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServeError(f"the Triton wheel has no Python backend stub for Python {sys.version_info[:2]}")
        shutil.copy2(stub, python_backend / "triton_python_backend_stub")
        shutil.copytree(BACKEND_SOURCE, backends / "onnxruntime", ignore=shutil.ignore_patterns("__pycache__"))

        env = dict(os.environ)
        env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = f"{libs}{os.pathsep}{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else str(libs)
        command = [
            str(binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false", "--exit-on-error=false", "--strict-readiness=false",
            f"--model-control-mode={self.model_control}", f"--log-verbose={self.log_verbose}", "--exit-timeout-secs=10",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.model_control == "explicit":
            command.append("--load-model=*")
        if self.log_file is None:  # kept after stop, for a post-mortem
            handle, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(handle)
            self.log_file = pathlib.Path(name)
        self.log_path = self.log_file
        self._log = open(self.log_path, "ab")
        # its own session: Ctrl-C in a terminal reaches us, and we stop the server and its stubs in order
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(timeout)
            if self.model_control == "explicit":
                self._load_gpu_models_on_cpu()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(f"tritonserver exited with code {self.process.returncode} while starting: "
                                 f"{self.log_tail()}", hint=f"full log: {self.log_path}")
            try:
                if self._get("/v2/health/live", 1.0) == 200:
                    if all(m.state not in ("LOADING", "UNLOADING") for m in self.models()):
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        raise ServeError(f"tritonserver did not become ready within {timeout:.0f} s", hint=f"see its log: {self.log_path}")

    def _load_gpu_models_on_cpu(self) -> None:
        refused = [m.name for m in self.models() if m.state == "UNAVAILABLE" and NO_GPU in m.reason]
        for name in refused:
            config = cpu_fallback_config(self.repository / name / "config.pbtxt")
            if self._load(name, config):
                self.cpu_fallbacks[name] = config["parameters"][FALLBACK_PARAMETER]["string_value"]
        if refused:  # ensembles over a refused model failed with it; a failed load keeps its reason in models()
            for m in self.models():
                if m.state == "UNAVAILABLE" and m.name not in refused and any(r in m.reason for r in refused):
                    self._load(m.name)

    def _load(self, name: str, config: dict | None = None) -> bool:
        """Load `name` (explicit model control), with `config` instead of its config.pbtxt if given; whether it
        loaded. A model that fails to load is left UNAVAILABLE with Triton's reason, as at start."""
        body = {"parameters": {"config": json.dumps(config)}} if config is not None else {}
        request = urllib.request.Request(f"{self.http_url}/v2/repository/models/{name}/load",
                                         data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=300):
                return True
        except urllib.error.HTTPError:
            return False

    def _get(self, path: str, timeout: float = 5.0) -> int:
        with urllib.request.urlopen(self.http_url + path, timeout=timeout) as response:
            return response.status

    def models(self) -> list[ModelState]:
        """Every model in the repository with its state and, for a failed one, the reason."""
        request = urllib.request.Request(self.http_url + "/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            index = json.loads(response.read())
        return [ModelState(m["name"], m.get("version", ""), m.get("state", ""), m.get("reason", "")) for m in index]

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        interesting = [l for l in text if l.startswith("E") or "error" in l.lower()] or text
        return " | ".join(interesting[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (SIGINT: Triton unloads models and ends its stubs), then by force; clean up."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if process is not None:
            try:  # anything left in the server's session (a stuck stub) goes too
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None
        for leftover in SHM_DIR.glob(f"{self.shm_prefix}*"):
            leftover.unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def cpu_fallback_config(config_file: pathlib.Path) -> dict:
    """The model's config.pbtxt as Triton's JSON, its KIND_GPU instance groups made KIND_CPU (same count), and the
    backend told why (FALLBACK_PARAMETER)."""
    from google.protobuf import json_format

    config = json_format.MessageToDict(parse_text(config_file.read_text(), where=str(config_file)),
                                       preserving_proto_field_name=True)
    for group in config.get("instance_group", []):
        if group.get("kind") == "KIND_GPU":
            group["kind"] = "KIND_CPU"
            group.pop("gpus", None)
    accelerators = [a.get("name") for a in config.get("optimization", {}).get("execution_accelerators", {})
                    .get("gpu_execution_accelerator", [])]
    reason = ("config.pbtxt asks for KIND_GPU instances" + (f" with {', '.join(accelerators)}" if accelerators else "")
              + " and this machine has no GPU (Triton refuses KIND_GPU here)")
    config.setdefault("parameters", {})[FALLBACK_PARAMETER] = {"string_value": reason}
    return config
