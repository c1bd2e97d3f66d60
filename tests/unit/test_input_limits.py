"""Input limits: derived from the exported model at build time (builder/serving/limits.py), and the embedded backend's checks
(builder/serving/backends/onnxruntime/model.py InputChecks) refuse every bad input with one line naming input and range."""

import importlib.util
import json
import re
import sys
import types

import numpy as np
import pytest
import torch

from builder.serving.limits import derive_limits
from builder.core.spec import load_spec, parse_spec
from builder.pipeline.torch2onnx import MAX_DYNAMIC_SIZE, export
from builder.serving.tritonconfig import ServingConfig, build_config, parse_text, to_text
from tests.conftest import FIXTURES, ROOT

POSITIONS = 10


class WithPositions(torch.nn.Module):
    """Token and position embeddings, as BERT has them: sequences beyond the position table cannot run."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tokens = torch.nn.Embedding(30, 4)
        self.positions = torch.nn.Embedding(POSITIONS, 4)
        self.register_buffer("position_ids", torch.arange(POSITIONS).unsqueeze(0), persistent=False)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        hidden = self.tokens(input_ids) + self.positions(self.position_ids[:, :input_ids.shape[1]])
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


TEXT_SPEC = parse_spec({
    "name": "positions", "factory": "x:y", "data": "x:y",
    "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
               {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}],
    "metric": {"output": "logits"}, "example_sizes": {"seq": 4}, "sequence_mask": "attention_mask",
}, where="test")
IMAGE_SPEC = parse_spec({
    "name": "pixels", "factory": "x:y", "data": "x:y",
    "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 4], "range": [0, 255]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}],
    "metric": {"output": "logits"},
}, where="test")


@pytest.fixture(scope="module")
def positions_limits(tmp_path_factory):
    path = tmp_path_factory.mktemp("positions") / "model.onnx"
    ones = np.ones((2, 4), dtype=np.int64)
    export(WithPositions().eval(), TEXT_SPEC, {"input_ids": ones, "attention_mask": ones}, path)
    return derive_limits(TEXT_SPEC, path)


def test_token_ids_are_limited_to_the_vocabulary_and_sequences_to_the_position_table(positions_limits):
    assert positions_limits["inputs"]["input_ids"] | {"why": ""} == {"min": 0, "max": 29, "why": ""}
    assert positions_limits["inputs"]["attention_mask"]["nonzero_rows"]
    assert (positions_limits["inputs"]["attention_mask"]["min"], positions_limits["inputs"]["attention_mask"]["max"]) == (0, 1)
    seq = positions_limits["dims"]["seq"]
    assert (seq["min"], seq["max"]) == (1, POSITIONS)
    assert seq["axes"] == [["input_ids", 1], ["attention_mask", 1]]


def test_a_model_without_a_position_table_runs_up_to_the_export_limit(tmp_path):
    sys.path.insert(0, str(FIXTURES / "tiny_text"))
    try:
        import tiny_text_model
    finally:
        sys.path.remove(str(FIXTURES / "tiny_text"))
    spec = load_spec(FIXTURES / "tiny_text" / "tiny_text.yaml")
    path = tmp_path / "model.onnx"
    ones = np.ones((2, 6), dtype=np.int64)
    export(tiny_text_model.BagOfWords().eval(), spec, {"input_ids": ones, "attention_mask": ones}, path)
    limits = derive_limits(spec, path)
    vocabulary = len(tiny_text_model.SPECIAL) + len(tiny_text_model.WORDS)
    assert limits["inputs"]["input_ids"]["max"] == vocabulary - 1
    assert limits["dims"]["seq"]["max"] == MAX_DYNAMIC_SIZE


def test_float_inputs_are_finite_and_keep_the_declared_range(tmp_path):
    path = tmp_path / "model.onnx"
    torch.manual_seed(0)

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def forward(self, image):
            return self.layer(image)

    export(Linear().eval(), IMAGE_SPEC, {"image": np.ones((2, 4), dtype=np.float32)}, path)
    limits = derive_limits(IMAGE_SPEC, path)
    assert limits["inputs"]["image"] | {"why": ""} == {"finite": True, "min": 0, "max": 255, "why": ""}
    assert limits["dims"] == {}


def test_limits_travel_in_config_pbtxt_as_one_parameter(positions_limits):
    config = parse_text(to_text(build_config("positions_fp32", TEXT_SPEC, ServingConfig(), limits=positions_limits)))
    assert json.loads(config.parameters["input_limits"].string_value) == positions_limits
    # the warm-up's mask is ones (an all-zero mask is refused), from a file write_model writes
    assert config.model_warmup[0].inputs["attention_mask"].input_data_file == "ones_int64_4"
    assert config.model_warmup[0].inputs["input_ids"].zero_data


@pytest.mark.parametrize("spec_input, message", [
    ({"range": [3, 1]}, "min <= max"), ({"range": "0..255"}, r"\[min, max\]"), ({"finite": "yes"}, "finite"),
])
def test_bad_limits_in_a_spec_are_refused(spec_input, message):
    from builder.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_spec({"name": "m", "factory": "x:y", "data": "x:y",
                    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4], **spec_input}],
                    "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
                    "metric": {"output": "y"}}, where="test")


# --- the backend's checks, with a stand-in for the Python backend's utils module (the checks do not use it)

@pytest.fixture(scope="module")
def input_checks():
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    source = ROOT / "builder" / "serving" / "backends" / "onnxruntime" / "model.py"
    spec = importlib.util.spec_from_file_location("kit_onnxruntime_backend", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.InputChecks


@pytest.fixture(scope="module")
def text_checks(input_checks, positions_limits):
    return input_checks(positions_limits, ["input_ids", "attention_mask"])


@pytest.mark.parametrize("ids, mask, message", [
    ([[1, 10**12, 2]], None, r"input `input_ids`: 1000000000000 at \[0, 1\] is outside the allowed 0\.\.29"),
    ([[1, -5, 2]], None, r"input `input_ids`: -5 at \[0, 1\] is outside the allowed 0\.\.29"),
    ([[1] * 11], None, r"input `input_ids`: `seq` \(axis 1\) is 11, allowed 1\.\.10"),
    (np.zeros((1, 0)), None, r"`seq` \(axis 1\) is 0, allowed 1\.\.10"),
    ([[1, 2, 3]], [[1, 1]], r"input `attention_mask` has shape \[1, 2\] but `input_ids` has \[1, 3\]"),
    ([[1, 2], [3, 4]], [[1, 1], [0, 0]], r"input `attention_mask`: example 1 of the batch is all zeros"),
    ([[1, 2]], [[1, 2]], r"input `attention_mask`: 2 at \[0, 1\] is outside the allowed 0\.\.1"),
])
def test_every_bad_text_input_gets_one_line(text_checks, ids, mask, message):
    ids = np.asarray(ids, dtype=np.int64)
    mask = np.ones_like(ids) if mask is None else np.asarray(mask, dtype=np.int64)
    problem = text_checks.problem([ids, mask])
    assert problem is not None and "\n" not in problem
    assert re.search(message, problem), problem


def test_good_text_inputs_pass(text_checks):
    ids = np.array([[0, 29, 5, 1, 1, 1, 1, 1, 1, 1]], dtype=np.int64)
    assert text_checks.problem([ids, np.ones_like(ids)]) is None
    assert text_checks.problem([ids[:, :1], np.ones_like(ids[:, :1])]) is None


@pytest.mark.parametrize("value, message", [
    (np.nan, r"input `image`: nan at \[0, 2\] is not a finite number"),
    (np.inf, r"input `image`: inf at \[0, 2\] is not a finite number"),
    (-np.inf, r"-inf at \[0, 2\] is not a finite number"),
    (300.0, r"input `image`: 300\.0 at \[0, 2\] is outside the allowed 0\.\.255"),
])
def test_bad_floats_are_named(input_checks, value, message):
    checks = input_checks({"inputs": {"image": {"finite": True, "min": 0, "max": 255}}, "dims": {}}, ["image"])
    image = np.full((1, 4), 7.0, dtype=np.float32)
    assert checks.problem([image]) is None
    image[0, 2] = value
    assert re.search(message, checks.problem([image]))


def test_limits_naming_an_input_the_model_lacks_are_refused_at_load(input_checks):
    with pytest.raises(ValueError, match="tokens"):
        input_checks({"inputs": {"tokens": {"min": 0}}, "dims": {}}, ["input_ids"])


def test_a_text_endpoint_whose_tokenizer_outruns_the_encoder_is_refused(tmp_path, positions_limits):
    from builder.core.errors import ConfigError
    from builder.serving.repository import write_model
    from builder.serving.text_endpoint import write_text_endpoint
    from tokenizers import Tokenizer, models

    repository, artifacts = tmp_path / "repo", tmp_path / "artifacts"
    stand_in = tmp_path / "model.onnx"
    stand_in.write_bytes(b"stand-in")
    write_model(repository, "positions_fp32",
                to_text(build_config("positions_fp32", TEXT_SPEC, ServingConfig(), limits=positions_limits)), stand_in)
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tokenizer.enable_truncation(max_length=POSITIONS + 1)
    (artifacts / "positions").mkdir(parents=True)
    tokenizer.save(str(artifacts / "positions" / "tokenizer.json"))
    with pytest.raises(ConfigError, match=f"truncates at {POSITIONS + 1} tokens, but `positions_fp32` runs at most "
                                          f"{POSITIONS}"):
        write_text_endpoint(TEXT_SPEC, "fp32", repository, artifacts)
