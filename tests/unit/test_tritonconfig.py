import pytest
from google.protobuf import text_format

from builder.errors import RepositoryError
from builder.models import resolve_spec
from builder.tritonconfig import ServingConfig, build_config, parse_text, to_text


def test_config_round_trips_through_the_2_51_schema():
    spec = resolve_spec("minilm")
    config = parse_text(to_text(build_config("minilm_fp32", spec, ServingConfig(instances=2, intra_op_threads=1))))
    assert config.backend == "onnxruntime" and config.max_batch_size == spec.max_batch_size
    assert [(i.name, list(i.dims)) for i in config.input] == [("input_ids", [-1]), ("attention_mask", [-1])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [2]), ("embedding", [384])]
    assert config.instance_group[0].count == 2
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert config.HasField("dynamic_batching")
    warmup = config.model_warmup[0]
    assert list(warmup.inputs["input_ids"].dims) == [32] and warmup.inputs["input_ids"].zero_data


def test_default_threads_never_oversubscribe(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert ServingConfig(instances=3).threads() == 2
    assert ServingConfig(instances=16).threads() == 1


def test_a_field_only_newer_protos_know_is_rejected():
    # tritonclient's own (newer) proto accepts `model_metrics`; server 2.51 fails on it at load time.
    from tritonclient.grpc import model_config_pb2

    text = 'name: "m"\nbackend: "onnxruntime"\nmodel_metrics {}\n'
    if "model_metrics" in model_config_pb2.ModelConfig.DESCRIPTOR.fields_by_name:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    with pytest.raises(RepositoryError, match="has no field named \"model_metrics\""):
        parse_text(text)


def test_unknown_field_in_a_built_dict_is_rejected():
    with pytest.raises(RepositoryError, match="not valid for Triton 2.51"):
        to_text({"name": "m", "backend": "onnxruntime", "max_batch_sise": 4})


def test_parse_error_says_line_and_column():
    with pytest.raises(RepositoryError, match=r"3:\d+"):
        parse_text('name: "m"\nmax_batch_size: 4\ninput { nme: "x" }\n')
