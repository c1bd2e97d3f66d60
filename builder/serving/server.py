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

Safe by default (docs/security.md): HTTP, gRPC and metrics bind 127.0.0.1 unless `host` says otherwise, and the
administrative APIs (RESTRICTED_APIS) answer only requests that carry the admin key (client/admin.py) in the header
ADMIN_HEADER. The HTTP port is the kit's front (builder/serving/front.py), which refuses a request whose declared
shapes its bytes do not cover before Triton allocates them; Triton's own HTTP listens on a loopback port of its own
and answers only the front (every API there needs the front's key). With explicit model control, a model whose backend stub process dies is reloaded by a watcher thread
(builder/serving/recovery.py).
"""

from __future__ import annotations

import errno
import ipaddress
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

from client.admin import ADMIN_HEADER, AdminKeyError, configured_key, key_file_for, new_key, write_key_file

from ..core.errors import ServeError
from .front import FRONT_HEADER, MAX_BODY_MB
from .tritonconfig import parse_text
from .recovery import StubWatcher

BACKEND_SOURCE = pathlib.Path(__file__).parent / "backends" / "onnxruntime"
FRONT_SCRIPT = pathlib.Path(__file__).parent / "front.py"  # stdlib only: the official image runs the same file
SHM_DIR = pathlib.Path("/dev/shm")
NO_GPU = "has kind KIND_GPU but no GPUs are available"  # Triton 2.51's reason for refusing a KIND_GPU model
FALLBACK_PARAMETER = "embedded_cpu_fallback"  # read by backends/onnxruntime/model.py
LOOPBACK = "127.0.0.1"
# Locked behind the admin key: model-repository (index, load, unload: a load may carry files, e.g. a model.py the
# Python backend runs), shared-memory (registering regions maps other processes' /dev/shm, the stubs' IPC
# included), trace and logging (their settings name files the server then writes). Left open, all read-only:
# health, metadata, inference, model-config (clients such as perf_analyzer read it to shape requests) and
# statistics (the counters /metrics publishes anyway, and /metrics cannot be locked).
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
OPEN_APIS = ("inference", "health", "metadata", "model-config", "statistics")
FRONT_READY_S = 10.0


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


def check_host(host: str) -> str:
    """`host` if it is an IPv4 address the server can bind (127.0.0.1, 0.0.0.0, one of this machine's); raises
    ServeError otherwise."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError as e:
        raise ServeError(f"--host must be an IPv4 address, got {host!r}",
                         hint="127.0.0.1 (default: this machine only) or 0.0.0.0 (every interface)") from e
    return host


def check_port_free(port: int, what: str, host: str = LOOPBACK) -> None:
    """Raise ServeError if `host:port` cannot be bound (a listener on 0.0.0.0 blocks every address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise ServeError(f"cannot listen on {host}:{port} ({what}): {e.strerror}",
                                 hint="--host takes an address of this machine: 127.0.0.1 or 0.0.0.0") from e
            raise ServeError(f"port {port} ({what}) is already in use: {e.strerror}",
                             hint=f"pass another --{what.lower()}-port, or stop what listens there (`ss -ltnp 'sport = :{port}'`)") from e


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_directory(root: pathlib.Path, backends: pathlib.Path) -> pathlib.Path:
    """`backends` filled for tritonserver: the wheel's Python backend with this Python's stub, and the kit's
    `onnxruntime` backend beside it."""
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
    return backends


class EmbeddedServer:
    """Start, query and stop one tritonserver process. Use as a context manager.

    model_control: "explicit" loads every model at start (`--load-model=*`) and allows load/unload through the
    API later (with the admin key); "none" loads everything once; "poll" rescans the repository.
    host: the address HTTP, gRPC and metrics listen on: 127.0.0.1 (this machine only) unless told otherwise.
    admin_key_file: where the admin key comes from if TRITONKIT_ADMIN_KEY is not set (client/admin.py); without
    either a key is generated and written to client.admin.key_file_for(port) (`admin_key_source` says which).
    recover: with explicit model control, reload a model whose backend stub process died (builder/serving/recovery.py);
    `on_event(line)` is told what happened, `recoveries` keeps it.
    max_body_mb: the largest HTTP request body the front accepts (inflated), in MiB.
    """

    def __init__(self, repository: str | pathlib.Path, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, model_control: str = "explicit", log_verbose: int = 0,
                 log_file: str | pathlib.Path | None = None, host: str = LOOPBACK,
                 admin_key_file: str | pathlib.Path | None = None, recover: bool = True, on_event=None,
                 max_body_mb: float = MAX_BODY_MB):
        self.repository = pathlib.Path(repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.host = check_host(host)
        self.admin_key_file = admin_key_file
        self.admin_key: str | None = None
        self.admin_key_source = ""
        self._key_files: list[pathlib.Path] = []  # generated here, removed at stop
        self.recover = recover
        self.on_event = on_event
        self._watcher: StubWatcher | None = None  # while running with recovery: `watcher`
        self.recoveries: list = []  # every crashed backend noticed, and what was done (builder/serving/recovery.py Recovery)
        self.model_control = model_control
        self.log_verbose = log_verbose
        self.log_file = pathlib.Path(log_file) if log_file else None
        self.process: subprocess.Popen | None = None
        self.front: subprocess.Popen | None = None  # the HTTP front on http_port
        self.triton_http_port: int | None = None  # Triton's own HTTP, loopback, behind the front
        self.max_body_mb = max_body_mb
        self.workdir: pathlib.Path | None = None
        self.cpu_fallbacks: dict[str, str] = {}  # model -> what it asked for and got instead (see the module doc)
        self.shm_prefix = f"tritonkit_{os.getpid()}_{uuid.uuid4().hex[:8]}_"

    @property
    def watcher(self) -> StubWatcher | None:
        return self._watcher

    @property
    def connect_host(self) -> str:
        """Where a client on this machine reaches the server: the bound address, 127.0.0.1 for 0.0.0.0."""
        return LOOPBACK if self.host == "0.0.0.0" else self.host

    @property
    def http_url(self) -> str:
        return f"http://{self.connect_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.connect_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.connect_host}:{self.metrics_port}/metrics"

    def exposure(self) -> list[str]:
        """Lines that say who can reach what: the bound address, the open and the locked APIs, the key."""
        # measured: given 0.0.0.0, Triton's gRPC listens on [::], i.e. on every IPv6 interface as well
        grpc_note = " (IPv6 too)" if self.host == "0.0.0.0" else ""
        ports = (f"HTTP {self.host}:{self.http_port}, gRPC {self.host}:{self.grpc_port}{grpc_note}, "
                 f"metrics {self.host}:{self.metrics_port}")
        if ipaddress.IPv4Address(self.host).is_loopback:
            where = f"{ports}: this machine only (`--host 0.0.0.0` exposes them)"
        else:
            where = f"{ports}: REACHABLE FROM THE NETWORK"
        return [where,
                f"open to anyone who reaches them: {', '.join(OPEN_APIS)}; metrics (read-only)",
                f"HTTP requests are checked by the kit's front first: bodies up to {self.max_body_mb:g} MiB, declared "
                f"shapes covered by the data that came (gRPC: by Triton itself)",
                f"locked (header {ADMIN_HEADER}: the admin key): {', '.join(RESTRICTED_APIS)}",
                f"admin key: {self.admin_key_source}"]

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
            check_port_free(port, what, self.host)
        self._set_admin_key()
        binary, libs, root = triton_paths()
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="tritonkit-server-"))
        backends = backend_directory(root, self.workdir / "backends")

        front_key = new_key()
        key_path = self.workdir / "front-key"
        write_key_file(key_path, front_key)
        self.triton_http_port = free_port()

        env = dict(os.environ)
        env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = f"{libs}{os.pathsep}{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else str(libs)
        command = [
            str(binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
            f"--http-address={LOOPBACK}", f"--grpc-address={self.host}", f"--metrics-address={self.host}",
            f"--http-port={self.triton_http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
            f"--http-restricted-api={','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={self.admin_key}",
            f"--http-restricted-api={','.join(OPEN_APIS)}:{FRONT_HEADER}={front_key}",
            f"--grpc-restricted-protocol={','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={self.admin_key}",
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
            self._start_front(key_path)
            self._wait_ready(timeout)
            if self.model_control == "explicit":
                self._load_gpu_models_on_cpu()
                if self.recover:
                    self._watcher = StubWatcher(self, on_event=self.on_event)
                    self._watcher.start()
        except BaseException:
            self.stop()
            raise

    def _start_front(self, key_path: pathlib.Path) -> None:
        ready = self.workdir / "front-ready"
        self.front = subprocess.Popen(
            [sys.executable, str(FRONT_SCRIPT), f"--listen={self.host}:{self.http_port}",
             f"--upstream={self.triton_http_port}", f"--key-file={key_path}", f"--max-body-mb={self.max_body_mb:g}",
             f"--ready-file={ready}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + FRONT_READY_S
        while not ready.exists():
            if self.front.poll() is not None or time.monotonic() > deadline:
                raise ServeError(f"the HTTP front did not start on {self.host}:{self.http_port}: {self.log_tail()}",
                                 hint=f"full log: {self.log_path}")
            time.sleep(0.02)

    def _set_admin_key(self) -> None:
        try:
            configured = configured_key(self.admin_key_file)
        except AdminKeyError as e:
            raise ServeError(str(e), hint=e.hint) from e
        if configured:
            self.admin_key, self.admin_key_source = configured
            return
        self.admin_key = new_key()
        self._key_files = [key_file_for(self.http_port), key_file_for(self.grpc_port)]
        for path in self._key_files:
            write_key_file(path, self.admin_key)
        self.admin_key_source = f"generated for this run, in {self._key_files[0]} (mode 0600; the kit's commands find it)"

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
            if self.load(name, config):
                self.cpu_fallbacks[name] = config["parameters"][FALLBACK_PARAMETER]["string_value"]
        if refused:  # ensembles over a refused model failed with it; a failed load keeps its reason in models()
            for m in self.models():
                if m.state == "UNAVAILABLE" and m.name not in refused and any(r in m.reason for r in refused):
                    self.load(m.name)

    def _admin_request(self, path: str, body: dict) -> urllib.request.Request:
        return urllib.request.Request(self.http_url + path, data=json.dumps(body).encode(), method="POST",
                                      headers={ADMIN_HEADER: self.admin_key})

    def load(self, name: str, config: dict | None = None) -> bool:
        """Load `name` (explicit model control), with `config` instead of its config.pbtxt if given; whether it
        loaded. A model that fails to load is left UNAVAILABLE with Triton's reason, as at start."""
        body = {"parameters": {"config": json.dumps(config)}} if config is not None else {}
        request = self._admin_request(f"/v2/repository/models/{name}/load", body)
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
        with urllib.request.urlopen(self._admin_request("/v2/repository/index", {}), timeout=10) as response:
            index = json.loads(response.read())
        return [ModelState(m["name"], m.get("version", ""), m.get("state", ""), m.get("reason", "")) for m in index]

    def model_config(self, name: str) -> dict:
        """The configuration the server uses for `name` now (Triton's JSON; overrides and fallbacks included)."""
        with urllib.request.urlopen(f"{self.http_url}/v2/models/{name}/config", timeout=10) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        interesting = [l for l in text if l.startswith("E") or "error" in l.lower()] or text
        return " | ".join(interesting[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (SIGINT: Triton unloads models and ends its stubs), then by force; clean up."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:  # first: the stubs that end now are not crashes
            watcher.stop()
        process, self.process = self.process, None
        front, self.front = self.front, None
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
        if front is not None:  # after Triton: it answers the requests Triton drained
            front.terminate()
            try:
                front.wait(5)
            except subprocess.TimeoutExpired:
                front.kill()
                front.wait()
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None
        for leftover in SHM_DIR.glob(f"{self.shm_prefix}*"):
            leftover.unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        for path in self._key_files:  # ours only: a later server on the port wrote its own
            try:
                if path.read_text().strip() == self.admin_key:
                    path.unlink()
            except OSError:
                pass
        self._key_files = []


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
