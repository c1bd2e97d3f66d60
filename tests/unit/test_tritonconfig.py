import pytest
from google.protobuf import json_format, text_format

from builder.core.errors import ConfigError, RepositoryError
from builder.pipeline.models import resolve_spec
from builder.serving.server import cpu_fallback_config
from builder.serving.tritonconfig import ServingConfig, build_config, parse_text, to_text


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


def test_instances_come_from_the_command_else_the_spec_else_one(monkeypatch):
    # minilm's spec asks for 2 instances (Triton's batcher idles a request 500 ms now and then with one); digits
    # keeps 1; an explicit count wins; the threads split the cores either way
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    minilm, digits = resolve_spec("minilm"), resolve_spec("digits")
    assert minilm.instances == 2 and digits.instances is None

    def instances_and_threads(spec, serving):
        config = parse_text(to_text(build_config("m", spec, serving)))
        return config.instance_group[0].count, config.parameters["intra_op_thread_count"].string_value

    assert instances_and_threads(minilm, ServingConfig()) == (2, "1")
    assert instances_and_threads(digits, ServingConfig()) == (1, "2")
    assert instances_and_threads(minilm, ServingConfig(instances=1)) == (1, "2")
    assert ServingConfig().for_spec(minilm).instances == 2 and ServingConfig().for_spec(digits).instances == 1


@pytest.mark.parametrize("bad", [0, -1, "two", True])
def test_a_spec_with_a_bad_instance_count_is_refused(bad):
    from builder.core.spec import parse_spec

    raw = {"name": "m", "factory": "a.b:c", "data": "a.b:d", "metric": {"output": "y"}, "instances": bad,
           "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
           "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}]}
    with pytest.raises(ConfigError, match="instances must be a positive integer"):
        parse_spec(raw, where="m.yaml")


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


def test_gpu_config_has_gpu_instances_and_no_accelerator_unless_asked():
    spec = resolve_spec("digits")
    config = parse_text(to_text(build_config("digits_fp32", spec, ServingConfig(device="gpu", instances=2))))
    assert [(g.kind, g.count) for g in config.instance_group] == [(config.instance_group[0].KIND_GPU, 2)]
    assert not config.HasField("optimization")
    cpu = parse_text(to_text(build_config("digits_fp32", spec, ServingConfig())))
    assert cpu.instance_group[0].kind == cpu.instance_group[0].KIND_CPU


def test_tensorrt_is_fp16_with_an_engine_cache_per_model_file(tmp_path):
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(b"first build")
    serving = ServingConfig(device="gpu", tensorrt=True)

    def accelerator():
        config = parse_text(to_text(build_config("minilm_fp16", resolve_spec("minilm"), serving, model_file)))
        (found,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        return found.name, dict(found.parameters)

    name, parameters = accelerator()
    cache = parameters.pop("trt_engine_cache_path")
    assert name == "tensorrt" and parameters == {"precision_mode": "FP16", "trt_engine_cache_enable": "1"}
    # ONNX Runtime creates one directory level only, and keys engines by graph structure, not weights
    assert cache.startswith("/tmp/") and cache.count("/") == 2 and "minilm_fp16" in cache
    model_file.write_bytes(b"a rebuild with other weights")
    assert accelerator()[1]["trt_engine_cache_path"] != cache


def test_serving_config_refuses_tensorrt_without_gpu_and_unknown_devices():
    with pytest.raises(ConfigError, match="TensorRT needs --device gpu"):
        ServingConfig(tensorrt=True)
    with pytest.raises(ConfigError, match="unknown device `tpu`") as info:
        ServingConfig(device="tpu")
    assert "cpu, gpu" in info.value.hint


def test_the_embedded_servers_cpu_fallback_keeps_everything_but_the_instance_kind(tmp_path):
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(b"x")
    text = to_text(build_config("digits_fp32", resolve_spec("digits"),
                                ServingConfig(device="gpu", tensorrt=True, instances=2), model_file))
    (tmp_path / "config.pbtxt").write_text(text)
    fallback = cpu_fallback_config(tmp_path / "config.pbtxt")
    assert [(g["kind"], g["count"]) for g in fallback["instance_group"]] == [("KIND_CPU", 2)]
    assert "KIND_GPU instances with tensorrt" in fallback["parameters"]["embedded_cpu_fallback"]["string_value"]
    # the rest is the file's: the backend still sees (and reports) the accelerator
    assert fallback["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0]["name"] == "tensorrt"
    assert fallback["input"] == json_format.MessageToDict(parse_text(text), preserving_proto_field_name=True)["input"]


def test_the_queue_policy_is_derived_from_the_latency_budget():
    # half the budget may be spent waiting in the queue; the queue holds a full next batch per instance and one more
    minilm, digits = resolve_spec("minilm"), resolve_spec("digits")
    policy = parse_text(to_text(build_config("m", minilm, ServingConfig(slo_p99_ms=80)))).dynamic_batching \
        .default_queue_policy
    assert policy.default_timeout_microseconds == 40_000
    assert policy.max_queue_size == 2 * minilm.max_batch_size * 2  # minilm: 2 instances
    assert policy.timeout_action == 0 and policy.allow_timeout_override  # 0 is REJECT (not DELAY)
    default = parse_text(to_text(build_config("d", digits, ServingConfig()))).dynamic_batching.default_queue_policy
    assert default.default_timeout_microseconds == 25_000  # the 50 ms budget `loadtests run` judges by
    assert default.max_queue_size == 2 * digits.max_batch_size
    # a request the batcher holds for company is not late: the delay is added, or every lone request would time out
    delayed = parse_text(to_text(build_config("d", digits, ServingConfig(max_queue_delay_us=200_000,
                                                                          slo_p99_ms=1000)))) \
        .dynamic_batching.default_queue_policy
    assert delayed.default_timeout_microseconds == 700_000


@pytest.mark.parametrize("delay_us, budget_ms", [(50_000, None), (200_000, 50), (200_000, 200)])
def test_a_batching_delay_that_spends_the_latency_budget_is_refused(delay_us, budget_ms):
    # a lone request waits out the whole delay: with nothing of the budget left every such request misses it, and
    # its queue timeout (half the budget past the delay) gives a busy machine's stalls no room
    with pytest.raises(ConfigError, match="leaves nothing of the p99 latency budget") as refused:
        ServingConfig(max_queue_delay_us=delay_us, slo_p99_ms=budget_ms).for_spec(resolve_spec("digits"))
    assert "--max-queue-delay-us" in refused.value.hint
    assert ServingConfig(max_queue_delay_us=49_999).for_spec(resolve_spec("digits")).max_queue_delay_us == 49_999


def test_the_latency_budget_comes_from_the_command_else_the_spec_else_50_ms():
    import dataclasses

    digits = resolve_spec("digits")
    assert ServingConfig().for_spec(digits).slo_p99_ms == 50
    assert ServingConfig().for_spec(dataclasses.replace(digits, slo_p99_ms=20)).slo_p99_ms == 20
    assert ServingConfig(slo_p99_ms=10).for_spec(dataclasses.replace(digits, slo_p99_ms=20)).slo_p99_ms == 10
    with pytest.raises(ConfigError, match="must be positive"):
        ServingConfig(slo_p99_ms=0)


def test_no_queue_policy_writes_triton_defaults():
    config = parse_text(to_text(build_config("d", resolve_spec("digits"), ServingConfig(queue_policy=False))))
    assert config.HasField("dynamic_batching") and not config.dynamic_batching.HasField("default_queue_policy")


@pytest.mark.parametrize("bad", [0, -5, "fast", True])
def test_a_spec_with_a_bad_latency_budget_is_refused(bad):
    from builder.core.spec import parse_spec

    raw = {"name": "m", "factory": "a.b:c", "data": "a.b:d", "metric": {"output": "y"}, "slo_p99_ms": bad,
           "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 2]}],
           "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}]}
    with pytest.raises(ConfigError, match="slo_p99_ms must be a positive number"):
        parse_spec(raw, where="m.yaml")


def test_a_tuned_point_gets_the_queue_policy_derived_again():
    from loadtests.tune import with_point

    digits = resolve_spec("digits")
    built = parse_text(to_text(build_config("d", digits, ServingConfig(slo_p99_ms=40))))
    point = {"instances": 2, "threads": 1, "max_queue_delay_us": 500, "max_batch_size": 8}
    policy = with_point(built, point, slo_p99_ms=40).dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (2 * 8 * 2, 20_000 + 500)
    # a config without a policy stays without one
    bare = parse_text(to_text(build_config("d", digits, ServingConfig(queue_policy=False))))
    assert not with_point(bare, point, slo_p99_ms=40).dynamic_batching.HasField("default_queue_policy")


def test_tune_searches_queue_timeouts_and_sizes_from_the_builds_own():
    from loadtests.tune import queue_grid, with_point

    digits = resolve_spec("digits")
    built = parse_text(to_text(build_config("d", digits, ServingConfig(slo_p99_ms=40))))
    point = {"instances": 2, "threads": 1, "max_queue_delay_us": 500, "max_batch_size": 8}
    grid = queue_grid(point)
    assert len(grid) == 9 and (grid[0]["queue_timeout_share"], grid[0]["queue_size_factor"]) == (0.5, 2)
    policies = {(c["queue_timeout_share"], c["queue_size_factor"]):
                with_point(built, c, slo_p99_ms=40).dynamic_batching.default_queue_policy for c in grid}
    assert (policies[0.25, 1].max_queue_size, policies[0.25, 1].default_timeout_microseconds) == (16, 10_000 + 500)
    assert (policies[0.75, 4].max_queue_size, policies[0.75, 4].default_timeout_microseconds) == (64, 30_000 + 500)
