"""Where the time goes: ONNX Runtime's operator profile of a real exported model, and MACs by layer type against
sequence length on a tiny transformer whose counts are known by hand."""

import math

import numpy as np
import pytest
import torch

from builder.core.data import Split
from builder.pipeline.measure import fixed_batch
from builder.pipeline.profile import (CATEGORIES, category, macs_by_length, operator_profile, profile_table,
                             summarise_trace)
from builder.core.spec import parse_spec
from builder.pipeline.torch2onnx import export

D, FFN, LAYERS, VOCAB = 32, 64, 2, 50

SPEC = parse_spec({
    "name": "tiny", "factory": "x:y", "data": "x:y",
    "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}],
    "metric": {"name": "accuracy", "output": "logits"},
    "example_sizes": {"seq": 8},
}, where="test")


class Layer(torch.nn.Module):
    def __init__(self, sdpa: bool):
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(D, 3 * D), torch.nn.Linear(D, D)
        self.up, self.down = torch.nn.Linear(D, FFN), torch.nn.Linear(FFN, D)
        self.norm1, self.norm2 = torch.nn.LayerNorm(D), torch.nn.LayerNorm(D)
        self.sdpa = sdpa

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.sdpa:
            attended = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:  # eager attention, as Hugging Face's "eager" implementation writes it
            attended = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), dim=-1) @ v
        x = self.norm1(x + self.out(attended))
        return self.norm2(x + self.down(torch.nn.functional.gelu(self.up(x))))


class TinyTransformer(torch.nn.Module):
    """One head of width D per layer; per example and token n: linear MACs 4*D^2 + 2*D*FFN per layer, attention
    2*n*D per layer (QK^T and AV), plus the head's 2*D once."""

    def __init__(self, sdpa: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, D)
        self.layers = torch.nn.ModuleList(Layer(sdpa) for _ in range(LAYERS))
        self.head = torch.nn.Linear(D, 2)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(dim=1))


def split(examples=40, length=20):
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(examples, length)).astype(np.int64)
    return Split({"input_ids": ids}, np.zeros(examples, dtype=np.int64))


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    export(TinyTransformer().eval(), SPEC, {"input_ids": np.ones((2, 8), dtype=np.int64)}, path)
    return path


def test_operator_profile_holds_the_models_real_operators(onnx_file):
    profile = operator_profile(onnx_file, fixed_batch(SPEC, split(), 4), min_seconds=0.05)
    assert profile["kernel_ms_per_run"] > 0 and profile["runs"] >= 1 and profile["threads"] == 1
    assert {"MatMul", "Gemm", "FusedMatMul"} & set(profile["by_op_type"])
    assert list(profile["by_category"]) == list(CATEGORIES)
    assert sum(profile["by_category"].values()) == pytest.approx(100, abs=0.5)
    assert sum(profile["by_op_type"].values()) == pytest.approx(100, abs=0.5)
    assert profile["by_category"]["matmul/gemm/conv"] > 0 and profile["by_category"]["softmax"] > 0


def test_profile_table_profiles_batch_1_and_32(onnx_file):
    table = profile_table(onnx_file, SPEC, split())
    assert set(table) == {"b1", "b32"}
    assert all(p["kernel_ms_per_run"] > 0 for p in table.values())


def kernel(op, ts, dur):
    return {"cat": "Node", "name": f"node_{op}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_warm_up_runs_are_excluded_and_unknown_operators_count_as_other():
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              kernel("MatMul", 10, 1000),  # warm-up: left out
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
              kernel("MatMul", 210, 60), kernel("MyCustomOp", 220, 20), kernel("Softmax", 230, 20),
              {"cat": "Node", "name": "node_MatMul_fence_before", "ts": 240, "dur": 500, "args": {"op_name": "MatMul"}},
              {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100},
              kernel("MatMul", 410, 60), kernel("MyCustomOp", 420, 20), kernel("Softmax", 430, 20)]
    profile = summarise_trace(events, skip_runs=1)
    assert profile["runs"] == 2
    assert profile["kernel_ms_per_run"] == pytest.approx(0.1)
    assert profile["by_op_type"] == {"MatMul": 60.0, "MyCustomOp": 20.0, "Softmax": 20.0}
    assert profile["by_category"]["other"] == 20.0 and profile["by_category"]["matmul/gemm/conv"] == 60.0


def test_operator_categories():
    assert category("MatMulInteger") == category("FusedMatMul") == "matmul/gemm/conv"
    assert category("DynamicQuantizeLinear") == "quantize/dequantize"
    assert category("SkipLayerNormalization") == "normalisation"
    assert category("Transpose") == category("Cast") == "reshape/layout"
    assert category("Gelu") == category("Where") == "element-wise"
    assert category("ReduceMean") == "pooling/reduce"
    assert category("NotAnOnnxOp") == "other"


@pytest.mark.parametrize("sdpa", [False, True], ids=["eager-matmul", "sdpa"])
def test_macs_by_length_match_the_architecture(sdpa):
    result = macs_by_length(TinyTransformer(sdpa).eval(), SPEC, split())
    rows = result["per_length"]
    assert [r["length"] for r in rows] == [16, 64, 256]
    shares = [r["attention_percent"] for r in rows]
    assert shares == sorted(shares) and len(set(shares)) == 3  # strictly increasing
    per_token = LAYERS * (4 * D * D + 2 * D * FFN)
    for r in rows:
        n = r["length"]
        assert r["linear"] == per_token * n + 2 * D  # linear in n (+ the head, once per example)
        assert r["attention"] == LAYERS * 2 * n * n * D
    # a*n^2 >= b*n + c first at n = 129: 128*n^2 vs 16384*n + 64
    assert result["crossover_length"] == 129 and not result["crossover_extrapolated"]
    assert result["fit"]["max_relative_error"] < 1e-6
    assert "129" in result["crossover_text"]


def test_macs_by_length_is_skipped_without_a_sequence_axis():
    image = parse_spec({"name": "img", "factory": "x:y", "data": "x:y",
                        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
                        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}],
                        "metric": {"name": "accuracy", "output": "logits"}}, where="test")
    assert macs_by_length(torch.nn.Linear(4, 2), image, None) is None


class ShortPositions(TinyTransformer):
    """Learned positions for 64 tokens only: longer inputs fail, as in BERT-style models beyond their limit."""

    def __init__(self):
        super().__init__()
        self.positions = torch.nn.Embedding(64, D)

    def forward(self, input_ids):
        positions = self.positions(torch.arange(input_ids.shape[1]))
        x = self.embed(input_ids) + positions
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(dim=1))


def test_a_length_the_model_refuses_is_listed_not_raised():
    result = macs_by_length(ShortPositions().eval(), SPEC, split())
    assert [r["length"] for r in result["per_length"]] == [16, 64]
    assert list(result["failed_lengths"]) == [256]
    assert result["crossover_length"] == 129 and result["crossover_extrapolated"]
