"""`builder build --device gpu [--tensorrt]` on a machine without GPU, served by the embedded server.

What happens, measured on Triton 2.51: Triton itself refuses a KIND_GPU instance group without GPUs ("instance
group ... has kind KIND_GPU but no GPUs are available"), before any backend sees the model. With explicit model
control (the default of `builder serve`) the embedded server then loads the model again with KIND_CPU instances and
says so on `builder serve`'s output and, once, in Triton's log; with other model control modes the model stays
UNAVAILABLE with Triton's reason.
"""

import json

import numpy as np
import pytest

from builder.core.evaluate import onnx_predictor, onnx_session
from builder.serving.repository import latest_model_file, write_model
from builder.serving.server import EmbeddedServer, free_port
from builder.serving.text_endpoint import write_text_endpoint
from builder.serving.tritonconfig import ServingConfig, build_config, parse_text, to_text
from client import TritonClient
from builder.core.artifacts import text_inputs
from tests.conftest import FIXTURES, run_cli
from tests.e2e.test_serve_cli import start_serve

pytestmark = pytest.mark.e2e

LOUD = "NOT SERVED AS CONFIGURED - the embedded onnxruntime backend RUNS ON CPU ONLY"


@pytest.fixture(scope="module")
def gpu_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    repository, artifacts = root / "model_repository", root / "artifacts"
    result = run_cli("builder", "build", "--config", FIXTURES / "tiny" / "tiny.yaml", "--device", "gpu", "--tensorrt",
                     "--instances", "2", "--repository", repository, "--artifacts", artifacts)
    assert result.returncode == 0, result.stderr
    return {"repository": repository, "artifacts": artifacts, "output": result.stdout}


def test_build_writes_gpu_instances_with_tensorrt_and_records_the_device(gpu_build):
    config = parse_text((gpu_build["repository"] / "tiny_fp32" / "config.pbtxt").read_text())
    assert [(g.kind, g.count) for g in config.instance_group] == [(config.instance_group[0].KIND_GPU, 2)]
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    entry = json.loads((gpu_build["artifacts"] / "tiny" / "record.json").read_text())["variants"]["fp32"]
    assert entry["serving"]["device"] == "gpu" and entry["serving"]["tensorrt"] is True
    assert "--device gpu --tensorrt" in entry["command"]
    assert "the embedded server has no GPU support and serves it on CPU, with a warning" in gpu_build["output"]


def test_embedded_server_serves_it_on_cpu_and_says_so_once(gpu_build, tmp_path):
    with EmbeddedServer(gpu_build["repository"], free_port(), free_port(), free_port(),
                        log_file=tmp_path / "triton.log") as server:
        assert {m.name: m.state for m in server.models()} == {"tiny_fp32": "READY"}
        reason = server.cpu_fallbacks["tiny_fp32"]
        assert "asks for KIND_GPU instances with tensorrt and this machine has no GPU" in reason
        tokens = np.arange(12, dtype=np.int64).reshape(2, 6)
        with TritonClient(server.grpc_url) as client:
            served = client.infer("tiny_fp32", {"tokens": tokens})["logits"]
            groups = client.config("tiny_fp32")["instance_group"]
    assert [(g["kind"], int(g["count"])) for g in groups] == [("KIND_CPU", 2)]
    local = onnx_predictor(onnx_session(latest_model_file(gpu_build["repository"], "tiny_fp32")))({"tokens": tokens})
    np.testing.assert_allclose(served, local["logits"], rtol=1e-6, atol=1e-6)
    log = (tmp_path / "triton.log").read_text()
    assert "has kind KIND_GPU but no GPUs are available" in log  # Triton's own refusal, first
    warnings = [line for line in log.splitlines() if LOUD in line]
    assert len(warnings) == 1 and warnings[0].startswith("W"), warnings  # once for two instances, as a warning
    assert "gpu_execution_accelerator `tensorrt` is not supported" in warnings[0]
    assert "KIND_GPU" in (gpu_build["repository"] / "tiny_fp32" / "config.pbtxt").read_text()  # file unchanged


def test_builder_serve_prints_the_fallback(gpu_build):
    process, lines, _ = start_serve(gpu_build["repository"])
    try:
        assert any(line.startswith("WARNING: tiny_fp32: config.pbtxt asks for KIND_GPU") and "SERVED ON CPU" in line
                   for line in lines), lines
        assert any("tiny_fp32" in line and "READY" in line for line in lines), lines
    finally:
        process.terminate()
        process.wait(60)


def test_without_explicit_model_control_triton_refuses_it(gpu_build):
    with EmbeddedServer(gpu_build["repository"], free_port(), free_port(), free_port(), model_control="none") as server:
        (state,) = server.models()
        assert server.cpu_fallbacks == {}
    assert state.state == "UNAVAILABLE" and "has kind KIND_GPU but no GPUs are available" in state.reason


def test_text_ensemble_over_a_gpu_encoder_is_served(built, tmp_path):
    spec = built["specs"]["minilm"]
    repository = tmp_path / "model_repository"
    onnx_file = latest_model_file(built["repository"], "minilm_fp32")
    write_model(repository, "minilm_fp32", to_text(build_config(
        "minilm_fp32", spec, ServingConfig(device="gpu", tensorrt=True), onnx_file)), onnx_file)
    write_text_endpoint(spec, "fp32", repository, built["artifacts"])
    sentence = "a gripping, beautifully shot film"
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as server:
        # the ensemble failed with its encoder at start and was loaded again after it
        assert {m.state for m in server.models()} == {"READY"} and list(server.cpu_fallbacks) == ["minilm_fp32"]
        with TritonClient(server.http_url) as client:
            served = client.infer("minilm_fp32_text", {"TEXT": np.array([[sentence.encode()]], dtype=np.object_)})
    local = onnx_predictor(onnx_session(onnx_file))(text_inputs(built["artifacts"] / "minilm", sentence))
    np.testing.assert_allclose(served["embedding"], local["embedding"], atol=1e-5, rtol=0)
    assert served["label"].tolist() == [[int(np.argmax(local["logits"]))]]
