"""The raw-text endpoint's models are written only when they can load, and the postprocess graph computes what the
ensemble promises. Serving them is tested in tests/e2e/test_text_endpoint.py."""

import json
import shutil

import numpy as np
import pytest
from google.protobuf import json_format

from builder.core.errors import ConfigError, RepositoryError
from builder.pipeline.models import resolve_spec
from builder.serving.repository import list_models, write_model
from builder.core.spec import load_spec
from builder.serving.text_endpoint import max_tokens, postprocess_onnx, write_text_endpoint
from builder.serving.tritonconfig import ServingConfig, build_config, parse_text, to_text
from tests.conftest import FIXTURES


@pytest.fixture
def minilm_workspace(tmp_path):
    """A repository holding the encoder `minilm_fp32` (config only) and artifacts with minilm's tokenizer.json."""
    from builder.pipeline.sources.minilm import tokenizer

    spec = resolve_spec("minilm")
    repository, artifacts = tmp_path / "repo", tmp_path / "artifacts"
    (artifacts / "minilm").mkdir(parents=True)
    tokenizer().save(str(artifacts / "minilm" / "tokenizer.json"))
    onnx_stand_in = tmp_path / "model.onnx"
    onnx_stand_in.write_bytes(b"not read here")
    write_model(repository, "minilm_fp32", to_text(build_config("minilm_fp32", spec, ServingConfig())), onnx_stand_in)
    return spec, repository, artifacts


def test_writes_tokenizer_postprocess_and_ensemble(minilm_workspace):
    spec, repository, artifacts = minilm_workspace
    written = write_text_endpoint(spec, "fp32", repository, artifacts)
    assert written == {"model": "minilm_fp32_text", "tokenizer": "minilm_tokenizer",
                       "postprocess": "minilm_postprocess", "max_tokens": 256}
    assert list_models(repository) == ["minilm_fp32", "minilm_fp32_text", "minilm_postprocess", "minilm_tokenizer"]
    tokenizer_dir = repository / "minilm_tokenizer" / "1"
    assert sorted(p.name for p in tokenizer_dir.iterdir()) == ["model.py", "tokenizer.json"]
    ensemble = parse_text((repository / "minilm_fp32_text" / "config.pbtxt").read_text())
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == spec.max_batch_size
    assert [json_format.MessageToDict(i) for i in ensemble.input] == [
        {"name": "TEXT", "dataType": "TYPE_STRING", "dims": ["1"]}]
    assert [(o.name, list(o.dims)) for o in ensemble.output] == [("label", [1]), ("probabilities", [2]),
                                                                   ("embedding", [384])]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "minilm_tokenizer", "minilm_fp32", "minilm_postprocess"]
    tokenizer = parse_text((repository / "minilm_tokenizer" / "config.pbtxt").read_text())
    assert tokenizer.backend == "python" and tokenizer.parameters["max_length"].string_value == "256"
    assert tokenizer.instance_group[0].kind == tokenizer.instance_group[0].KIND_CPU


def test_gpu_encoder_keeps_tokenizer_and_postprocess_on_cpu(minilm_workspace, tmp_path):
    spec, repository, artifacts = minilm_workspace
    model_file = tmp_path / "model.onnx"
    write_model(repository, "minilm_fp32", to_text(build_config("minilm_fp32", spec, ServingConfig(
        device="gpu", tensorrt=True), model_file)), model_file)
    write_text_endpoint(spec, "fp32", repository, artifacts)
    for name in ("minilm_tokenizer", "minilm_postprocess"):
        group = parse_text((repository / name / "config.pbtxt").read_text()).instance_group[0]
        assert group.kind == group.KIND_CPU


def test_refuses_an_ensemble_whose_encoder_is_missing(minilm_workspace):
    spec, repository, artifacts = minilm_workspace
    with pytest.raises(RepositoryError, match="encoder model `minilm_int8` is not in") as info:
        write_text_endpoint(spec, "int8", repository, artifacts)
    assert "--variant int8 --text-endpoint" in info.value.hint
    assert list_models(repository) == ["minilm_fp32"]  # nothing written


def test_refuses_a_model_that_is_not_a_text_model(tmp_path):
    with pytest.raises(ConfigError, match="tiny is not a text model: its spec has no sequence_mask"):
        write_text_endpoint(load_spec(FIXTURES / "tiny" / "tiny.yaml"), "fp32", tmp_path, tmp_path)


def test_refuses_a_tokenizer_without_a_truncation_length(minilm_workspace):
    spec, repository, artifacts = minilm_workspace
    path = artifacts / "minilm" / "tokenizer.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "truncation": None}))
    with pytest.raises(ConfigError, match="sets no truncation length"):
        max_tokens(path)
    shutil.rmtree(artifacts / "minilm")
    with pytest.raises(ConfigError, match="no tokenizer.json in"):
        write_text_endpoint(spec, "fp32", repository, artifacts)


def test_postprocess_graph_is_softmax_and_argmax(tmp_path):
    import onnxruntime as ort

    path = postprocess_onnx("logits", 3, tmp_path / "postprocess.onnx")
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 3.5, 0.0]], dtype=np.float32)
    label, probabilities = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["label", "probabilities"], {"logits": logits})
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities, expected / expected.sum(axis=1, keepdims=True), rtol=1e-6)
    assert label.dtype == np.int64 and label.tolist() == [[1], [1]]
