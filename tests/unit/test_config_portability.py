"""Every kind of config.pbtxt the builder writes parses with server 2.51's schema and uses only fields and parameters
that the serving side honours: the native ONNX Runtime backend of the 24.10 image, the Python backend (the kit's own
tokenizer model) or Triton's ensemble scheduler. A field outside these lists might parse yet be ignored silently on
the image; adding one to a list means checking that the image really reads it."""

import pytest

from builder.pipeline.models import resolve_spec
from builder.core.names import model_name
from builder.serving.repository import write_model
from builder.core.spec import load_spec
from builder.serving.text_endpoint import write_text_endpoint
from builder.serving.tritonconfig import ServingConfig, build_config, parse_text, to_text
from tests.conftest import FIXTURES

# Top-level ModelConfig fields the kit writes, per backend / platform.
FIELDS = {
    "onnxruntime": {"name", "backend", "max_batch_size", "input", "output", "instance_group", "dynamic_batching",
                    "parameters", "model_warmup", "optimization"},
    "python": {"name", "backend", "max_batch_size", "input", "output", "instance_group", "dynamic_batching",
               "parameters"},
    "ensemble": {"name", "platform", "max_batch_size", "input", "output", "ensemble_scheduling"},
}
# The native ONNX Runtime backend's session parameters (onnxruntime_backend README, "Model Config Options"); it
# ignores other keys without a word.
ORT_PARAMETERS = {"intra_op_thread_count", "inter_op_thread_count", "execution_mode", "enable_mem_arena",
                  "enable_mem_pattern"}
# Parameters only the kit's embedded backend reads (builder/serving/limits.py: the input checks). Harmless on the image: its
# native backend reads each model parameter by its key (onnxruntime_backend src/onnxruntime.cc, ModelState's
# constructor and LoadModel: params.Find / TryParseModelStringParameter of the keys it knows) and never walks the
# map, so another key is ignored; `input_limits` is none of its keys. (Its accelerators' parameter maps are
# walked, and unknown keys there are errors: the kit writes nothing of its own there.)
KIT_PARAMETERS = {"input_limits"}
# Its TensorRT accelerator's keys (same README, "ONNX Runtime with TensorRT optimization"), those the kit may use.
TENSORRT_PARAMETERS = {"precision_mode", "max_workspace_size_bytes", "trt_engine_cache_enable",
                       "trt_engine_cache_path"}
# What builder/serving/text_endpoint/tokenizer_model.py reads.
TOKENIZER_PARAMETERS = {"ids_output", "mask_output", "max_length", "length_buckets"}
SERVINGS = [ServingConfig(), ServingConfig(instances=2, intra_op_threads=1, max_queue_delay_us=500),
            ServingConfig(device="gpu"), ServingConfig(device="gpu", tensorrt=True)]


def check_config(text: str, where: str, repository=None) -> None:
    """Raise AssertionError naming `where` for anything outside the lists above (RepositoryError if not 2.51)."""
    config = parse_text(text, where=where)
    kind = config.platform or config.backend
    assert kind in FIELDS, f"{where}: unexpected backend/platform {kind!r}"
    fields = {f.name for f, _ in config.ListFields()}
    assert fields <= FIELDS[kind], f"{where}: fields {fields - FIELDS[kind]} are not honoured by {kind}"
    parameters = set(config.parameters)
    if kind == "onnxruntime":
        known = ORT_PARAMETERS | KIT_PARAMETERS
        assert parameters <= known, f"{where}: parameters {parameters - known} are ignored"
        optimization = {f.name for f, _ in config.optimization.ListFields()}
        assert optimization <= {"execution_accelerators", "graph"}, f"{where}: optimization {optimization}"
        accelerators = config.optimization.execution_accelerators
        assert not accelerators.cpu_execution_accelerator, f"{where}: the 24.10 image has no CPU accelerator here"
        for accelerator in accelerators.gpu_execution_accelerator:
            assert accelerator.name == "tensorrt", f"{where}: accelerator {accelerator.name}"
            assert set(accelerator.parameters) <= TENSORRT_PARAMETERS, f"{where}: {set(accelerator.parameters)}"
    elif kind == "python":
        assert parameters == TOKENIZER_PARAMETERS, f"{where}: parameters {parameters}"
    else:
        for step in config.ensemble_scheduling.step:
            assert repository is None or (repository / step.model_name / "config.pbtxt").is_file(), \
                f"{where}: step model {step.model_name} is not in the repository"


def test_check_config_catches_what_the_image_would_ignore():
    text = to_text(build_config("m", resolve_spec("digits"), ServingConfig())) + \
        'parameters { key: "intra_op_threads" value { string_value: "2" } }\n'
    with pytest.raises(AssertionError, match="intra_op_threads"):
        check_config(text, "m")


@pytest.mark.parametrize("serving", SERVINGS, ids=["cpu", "cpu-tuned", "gpu", "gpu-tensorrt"])
@pytest.mark.parametrize("spec_name", ["digits", "minilm", "tiny", "tiny_text"])
def test_every_encoder_config(spec_name, serving, tmp_path):
    spec = load_spec(FIXTURES / spec_name / f"{spec_name}.yaml") if spec_name.startswith("tiny") \
        else resolve_spec(spec_name)
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(b"stand-in")
    limits = {"inputs": {t.name: {"min": 0, "max": 1} for t in spec.inputs}, "dims": {}}
    for variant in ("fp32", "int8", "fp16", "distilled+int8"):
        name = model_name(spec.name, variant)
        check_config(to_text(build_config(name, spec, serving, model_file, limits)), name)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_every_text_endpoint_config(device, tmp_path):
    from builder.pipeline.sources.minilm import tokenizer

    spec = resolve_spec("minilm")
    repository, artifacts = tmp_path / "repo", tmp_path / "artifacts"
    (artifacts / "minilm").mkdir(parents=True)
    tokenizer().save(str(artifacts / "minilm" / "tokenizer.json"))
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(b"stand-in")
    serving = ServingConfig(device=device, tensorrt=device == "gpu")
    write_model(repository, "minilm_int8", to_text(build_config("minilm_int8", spec, serving, model_file)), model_file)
    written = write_text_endpoint(spec, "int8", repository, artifacts)
    for name in ("minilm_int8", written["tokenizer"], written["postprocess"], written["model"]):
        check_config((repository / name / "config.pbtxt").read_text(), name, repository)
