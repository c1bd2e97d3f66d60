"""`builder build --onnx-model FILE --data NPZ` without a server: what is read off the graph, and what is refused."""

import numpy as np
import pytest

from builder.cli import main
from builder.core.errors import ConfigError
from builder.pipeline.measure import count_onnx_macs
from builder.pipeline.sources.onnxfile import read_graph


def matmul_model(batch):
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((6, 3), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_inputs_and_outputs_are_read_off_the_graph(tmp_path):
    import onnx

    onnx.save_model(matmul_model("N"), str(tmp_path / "m.onnx"))
    inputs, outputs = read_graph(tmp_path / "m.onnx")
    assert inputs == [{"name": "x", "dtype": "float32", "shape": ["batch", 6]}]  # initializers are not inputs
    assert outputs == [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}]


def test_a_fixed_batch_axis_is_refused(tmp_path):
    import onnx

    onnx.save_model(matmul_model(1), str(tmp_path / "m.onnx"))
    with pytest.raises(ConfigError, match=r"input `x` has shape \[1, 6\]: its first axis must be a dynamic batch"):
        read_graph(tmp_path / "m.onnx")


def test_macs_are_counted_from_the_graph_shapes():
    assert count_onnx_macs(matmul_model("N"), {"x": np.zeros((4, 6), dtype=np.float32)}) == 4 * 6 * 3


def test_text_columns_do_not_apply_to_an_onnx_model(capsys):
    assert main(["build", "--onnx-model", "m.onnx", "--data", "d.npz", "--text-column", "t"]) == 2
    assert "--text-column and --label-column apply to --hf-model" in capsys.readouterr().err
