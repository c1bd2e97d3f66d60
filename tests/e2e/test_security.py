"""Nobody can take the server over: it listens on loopback unless told, and the administrative APIs answer only
the admin key. Raw HTTP (urllib) and the stock tritonclient gRPC client, as an outsider would send them."""

import base64
import ipaddress
import json
import pathlib
import shutil
import signal
import stat
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from builder.serving.server import EmbeddedServer, free_port
from client.admin import ADMIN_HEADER, GRPC_ADMIN_HEADER, key_file_for
from tests.conftest import run_cli
from tests.e2e.test_serve_cli import start_serve

pytestmark = pytest.mark.e2e

TOKENS = [[0, 1, 2, 3, 4, 5]]
RESTRICTED = "This API is restricted, expecting header 'tritonkit-admin-key'"
GRPC_RESTRICTED = "This protocol is restricted, expecting header 'triton-grpc-protocol-tritonkit-admin-key'"


def intruder_load_body(marker: pathlib.Path) -> dict:
    """What an attacker sends: a Python-backend model whose model.py writes `marker` when the server runs it."""
    code = f"""
class TritonPythonModel:
    def initialize(self, args):
        open({str(marker)!r}, "w").write("ran")

    def execute(self, requests):
        return []
"""
    config = {"name": "intruder", "backend": "python", "max_batch_size": 0,
              "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
              "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}]}
    return {"parameters": {"config": json.dumps(config), "file:1/model.py": base64.b64encode(code.encode()).decode()}}


def call(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    """(status, body) of a POST (with `body`) or a GET."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def listeners(ports) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets listening on `ports` on this machine, IPv4 and IPv6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and int(port, 16) in ports:  # 0A: LISTEN
                # the kernel writes each 32-bit word of the address in host (little-endian) order
                raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
                ip = ipaddress.ip_address(raw)
                ip = getattr(ip, "ipv4_mapped", None) or ip  # gRPC listens on ::ffff:127.0.0.1 for 127.0.0.1
                found.add((str(ip), int(port, 16)))
    return found


@pytest.fixture(scope="module")
def locked(built, tmp_path_factory):
    """A server on a repository of tiny_fp32, its key from a private file."""
    root = tmp_path_factory.mktemp("locked")
    shutil.copytree(built["repository"] / "tiny_fp32", root / "repo" / "tiny_fp32")
    key_file = root / "admin.key"
    key_file.write_text("correct-horse-battery-staple\n")
    key_file.chmod(0o600)
    with EmbeddedServer(root / "repo", free_port(), free_port(), free_port(), admin_key_file=key_file) as server:
        yield server


def infer_body() -> dict:
    return {"inputs": [{"name": "tokens", "shape": [1, 6], "datatype": "INT64", "data": TOKENS[0]}]}


def test_every_listener_is_on_loopback(locked):
    ports = {locked.http_port, locked.grpc_port, locked.metrics_port}
    assert listeners(ports) == {("127.0.0.1", p) for p in ports}


def test_the_key_comes_from_the_file_and_no_other_key_file_is_written(locked):
    assert locked.admin_key == "correct-horse-battery-staple"
    assert not key_file_for(locked.http_port).exists() and not key_file_for(locked.grpc_port).exists()


def test_unauthenticated_admin_calls_over_http_are_refused_with_403(locked, tmp_path):
    marker = tmp_path / "ran"
    base = locked.http_url
    assert call(f"{base}/v2/repository/models/intruder/load", intruder_load_body(marker)) == (403, json.dumps(
        {"error": RESTRICTED}, separators=(",", ":")))
    assert not marker.exists()  # the attacker's model.py never ran
    assert call(f"{base}/v2/repository/models/tiny_fp32/unload", {})[0] == 403
    assert call(f"{base}/v2/repository/index", {})[0] == 403
    assert call(f"{base}/v2/repository/models/tiny_fp32/unload", {}, {ADMIN_HEADER: "a wrong key"})[0] == 403
    assert call(f"{base}/v2/logging", {"log_file": str(tmp_path / "log")})[0] == 403
    assert call(f"{base}/v2/trace/setting", {"trace_file": str(tmp_path / "trace")})[0] == 403
    assert call(f"{base}/v2/systemsharedmemory/region/r/register", {"key": "/x", "offset": 0, "byte_size": 8})[0] == 403
    assert call(f"{base}/v2/models/tiny_fp32/infer", infer_body())[0] == 200  # still loaded and serving


def test_with_the_key_the_same_http_calls_work(locked, tmp_path):
    marker = tmp_path / "ran"
    key = {ADMIN_HEADER: locked.admin_key}
    base = locked.http_url
    # the lock is all that stands between a caller and running code on the server: with the key, it runs
    assert call(f"{base}/v2/repository/models/intruder/load", intruder_load_body(marker), key)[0] == 200
    assert marker.read_text() == "ran"
    assert call(f"{base}/v2/repository/models/intruder/unload", {}, key)[0] == 200
    assert call(f"{base}/v2/repository/models/tiny_fp32/unload", {}, key)[0] == 200
    assert call(f"{base}/v2/models/tiny_fp32/ready")[0] == 400  # unloaded
    assert call(f"{base}/v2/repository/models/tiny_fp32/load", {}, key)[0] == 200
    assert call(f"{base}/v2/models/tiny_fp32/infer", infer_body())[0] == 200


def test_the_stock_grpc_client_is_refused_without_the_key_and_served_with_it(locked, tmp_path):
    marker = tmp_path / "ran"
    body = intruder_load_body(marker)["parameters"]
    files = {"file:1/model.py": base64.b64decode(body["file:1/model.py"])}
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{locked.grpc_port}")
    for attempt in (lambda h: client.load_model("intruder", headers=h, config=body["config"], files=files),
                    lambda h: client.unload_model("tiny_fp32", headers=h),
                    lambda h: client.get_model_repository_index(headers=h)):
        for headers in (None, {ADMIN_HEADER: locked.admin_key}, {GRPC_ADMIN_HEADER: "a wrong key"}):
            with pytest.raises(InferenceServerException) as refused:
                attempt(headers)
            # Triton 2.51 answers UNAVAILABLE (not PERMISSION_DENIED); the HTTP header name is not enough over gRPC
            assert refused.value.status() == "StatusCode.UNAVAILABLE" and refused.value.message() == GRPC_RESTRICTED
    assert not marker.exists()
    assert client.is_model_ready("tiny_fp32")
    key = {GRPC_ADMIN_HEADER: locked.admin_key}
    client.load_model("intruder", headers=key, config=body["config"], files=files)
    assert marker.read_text() == "ran"
    client.unload_model("intruder", headers=key)
    client.unload_model("tiny_fp32", headers=key)
    assert not client.is_model_ready("tiny_fp32")
    client.load_model("tiny_fp32", headers=key)
    assert client.is_model_ready("tiny_fp32")
    client.close()


def test_inference_health_metadata_config_and_statistics_stay_open(locked):
    base = locked.http_url
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/tiny_fp32", "/v2/models/tiny_fp32/ready",
                 "/v2/models/tiny_fp32/config", "/v2/models/tiny_fp32/stats"):
        assert call(base + path)[0] == 200, path
    status, answer = call(f"{base}/v2/models/tiny_fp32/infer", infer_body())
    assert status == 200 and json.loads(answer)["outputs"][0]["shape"] == [1, 3]
    assert urllib.request.urlopen(locked.metrics_url, timeout=10).status == 200
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{locked.grpc_port}")
    assert client.is_server_live() and client.get_model_metadata("tiny_fp32").name == "tiny_fp32"
    tokens = grpcclient.InferInput("tokens", [1, 6], "INT64")
    tokens.set_data_from_numpy(np.array(TOKENS, dtype=np.int64))
    assert client.infer("tiny_fp32", [tokens]).as_numpy("logits").shape == (1, 3)
    client.close()


def test_serve_with_host_0000_says_what_is_reachable_and_its_key_is_private(built, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(built["repository"] / "tiny_fp32", repository / "tiny_fp32")
    process, lines, ports = start_serve(repository, "--host", "0.0.0.0")
    try:
        output = "\n".join(lines)
        assert f"HTTP 0.0.0.0:{ports['http']}, gRPC 0.0.0.0:{ports['grpc']} (IPv6 too), metrics " \
               f"0.0.0.0:{ports['metrics']}: REACHABLE FROM THE NETWORK" in output
        assert "open to anyone who reaches them: inference, health, metadata, model-config, statistics" in output
        assert "locked (header tritonkit-admin-key: the admin key): model-repository, shared-memory, trace, logging" \
               in output
        # gRPC takes 0.0.0.0 as every interface, IPv6 included
        assert listeners(set(ports.values())) == {("0.0.0.0", ports["http"]), ("::", ports["grpc"]),
                                                  ("0.0.0.0", ports["metrics"])}
        key_file = key_file_for(ports["http"])
        assert f"admin key: generated for this run, in {key_file}" in output
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
        assert key_file.read_text() == key_file_for(ports["grpc"]).read_text()
        # the kit's own commands find the generated key; an outsider's request does not have it
        listed = run_cli("client", "models", "--url", f"http://127.0.0.1:{ports['http']}", timeout=60)
        assert listed.returncode == 0 and "tiny_fp32" in listed.stdout and "READY" in listed.stdout
        assert call(f"http://127.0.0.1:{ports['http']}/v2/repository/index", {})[0] == 403
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0
    assert not key_file.exists() and not key_file_for(ports["grpc"]).exists()  # removed with its server
