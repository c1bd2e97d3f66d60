"""The accuracy gate holds on every evaluation split (builder/pipeline/build.py: score_variant, check_gates): a variant
that keeps the first split's accuracy but loses another's is refused with the split named, and a baseline built
before every split's outputs were saved gets the missing ones computed once from its model file."""

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper

from builder.pipeline.build import BuildContext, Gates, check_gates, score_variant
from builder.core.data import Split
from builder.core.spec import load_spec
from builder.serving.tritonconfig import ServingConfig

SPEC = """name: twosplits
factory: nowhere:load_model
data: nowhere:load_data
inputs:
  - {name: x, dtype: float32, shape: [batch, 3]}
outputs:
  - {name: logits, dtype: float32, shape: [batch, 3]}
metric: {name: accuracy, output: logits}
evaluate: [test, shifted]
max_batch_size: 8
"""


def scaling_model(path: pathlib.Path, scale: list[float]) -> pathlib.Path:
    """logits = x * scale: with scale [1, 1, -1] the answer changes only where class 2 wins."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["logits"])], "scaling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [3], scale)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def one_hot_split(classes: list[int]) -> Split:
    x = np.full((len(classes), 3), -1.0, dtype=np.float32)
    x[np.arange(len(classes)), classes] = 1.0
    return Split({"x": x}, np.array(classes, dtype=np.int64))


def world(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    spec = load_spec(tmp_path / "spec.yaml")
    # test: classes 0 and 1 only (the variant is exact there); shifted: half of it class 2 (the variant fails it)
    splits = {"test": one_hot_split([0, 1] * 20), "shifted": one_hot_split([0, 1, 2, 2] * 10)}
    workdir = tmp_path / "work"

    def context(variant):
        return BuildContext(spec, workdir, splits, workdir / variant, progress=lambda m: None)
    return spec, splits, workdir, context


def test_a_variant_that_loses_only_another_split_is_refused_naming_it(tmp_path):
    spec, splits, workdir, context = world(tmp_path)
    fp32 = scaling_model(workdir / "fp32" / "model.onnx", [1, 1, 1])
    score_variant(fp32, "fp32", context("fp32"), None)
    assert (workdir / "fp32" / "outputs.npz").is_file() and (workdir / "fp32" / "outputs_shifted.npz").is_file()
    variant = scaling_model(workdir / "int8" / "model.onnx", [1, 1, -1])
    scores = score_variant(variant, "int8", context("int8"), None)
    assert scores["drop"] == 0.0 and scores["drop_by_split"]["test"][0] == 0.0
    assert scores["drop_by_split"]["shifted"][0] == 50.0
    latency = {"speedup": {"b1": 1.0}}
    failed = check_gates("int8", [], scores, latency, ServingConfig(), Gates(max_accuracy_drop=1.0), context("int8"))
    assert failed == [f"accuracy drop on shifted 50.00 ± {scores['drop_by_split']['shifted'][1]:.2f} points > 1.0"]
    # within a budget wide enough for it, the same variant passes
    assert check_gates("int8", [], scores, latency, ServingConfig(), Gates(max_accuracy_drop=60.0),
                       context("int8")) == []


def test_a_baseline_without_the_other_splits_outputs_gets_them_computed_once(tmp_path):
    spec, splits, workdir, context = world(tmp_path)
    fp32 = scaling_model(workdir / "fp32" / "model.onnx", [1, 1, 1])
    score_variant(fp32, "fp32", context("fp32"), None)
    saved = workdir / "fp32" / "outputs_shifted.npz"
    expected = np.load(saved)["logits"]
    saved.unlink()  # as an fp32 built by the previous kit left it
    said = []
    ctx = BuildContext(spec, workdir, splits, workdir / "same", progress=said.append)
    scores = score_variant(scaling_model(workdir / "same" / "model.onnx", [1, 1, 1]), "same", ctx, None)
    assert scores["drop_by_split"] == {"test": [0.0, 0.0], "shifted": [0.0, 0.0]}
    assert np.array_equal(np.load(saved)["logits"], expected)
    assert len([m for m in said if "computing fp32's outputs on `shifted`" in m]) == 1
