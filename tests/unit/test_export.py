import numpy as np
import onnx
import pytest
import torch

from builder.core.errors import ExportError
from builder.core.spec import parse_spec
from builder.pipeline.torch2onnx import MAX_IR_VERSION, MAX_OPSET, export, verify

SPEC = parse_spec({
    "name": "mlp", "factory": "x:y", "data": "x:y",
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 3]},
                {"name": "hidden", "dtype": "float32", "shape": ["batch", 8]}],
    "metric": {"name": "accuracy", "output": "logits"},
}, where="test")


class MLP(torch.nn.Module):
    def __init__(self, noise: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3)
        self.noise = noise

    def forward(self, x):
        hidden = torch.relu(self.hidden(x))
        if self.noise:  # eager and exported graph draw different numbers
            hidden = hidden + torch.rand_like(hidden)
        return self.out(hidden), hidden


def example(batch=2):
    return {"x": np.random.default_rng(0).normal(size=(batch, 4)).astype(np.float32)}


def test_export_is_one_file_that_onnx_runtime_1_19_reads(tmp_path):
    path = tmp_path / "model.onnx"
    export(MLP(), SPEC, example(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no external .data file
    model = onnx.load(str(path))
    assert model.ir_version <= MAX_IR_VERSION
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= MAX_OPSET
    assert [o.name for o in model.graph.output] == ["logits", "hidden"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is dynamic


def test_exported_model_matches_pytorch_at_another_batch_size(tmp_path):
    path = tmp_path / "model.onnx"
    export(MLP(), SPEC, example(), path)
    assert verify(MLP(), SPEC, path, example(batch=7)) < 1e-5


def test_a_model_that_exports_differently_fails_verification(tmp_path):
    path = tmp_path / "model.onnx"
    export(MLP(noise=True), SPEC, example(), path)
    with pytest.raises(ExportError, match="ONNX Runtime and PyTorch disagree on `logits`"):
        verify(MLP(noise=True), SPEC, path, example())


def test_output_count_must_match_the_spec(tmp_path):
    class OneOutput(MLP):
        def forward(self, x):
            return self.out(torch.relu(self.hidden(x)))

    with pytest.raises(ExportError, match="returns 1 outputs, the spec declares 2"):
        export(OneOutput(), SPEC, example(), tmp_path / "model.onnx")
