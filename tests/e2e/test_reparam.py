"""The reparam variant builds end to end: the served graph is one Conv per block and no BatchNorm, and the record
compares it with the branched student it was folded from. A small training budget keeps this short; the full-size
numbers come from `builder build --model digits --variant reparam`."""

import dataclasses

import onnx
import pytest

from builder.pipeline.build import Gates, build_variant
from builder.serving.repository import latest_model_file

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def reparam_build(built, tmp_path_factory) -> dict:
    spec = built["specs"]["digits"]
    quick = dataclasses.replace(spec, variants={**spec.variants, "reparam": {"train_steps": 60, "train_lr": 0.003}})
    repository = tmp_path_factory.mktemp("reparam") / "model_repository"
    entry = build_variant(quick, "reparam", repository, built["artifacts"], command="tests", gates=Gates(force=True),
                          eval_limit=300)
    return {"entry": entry, "onnx": latest_model_file(repository, "digits_reparam")}


def test_the_served_graph_has_one_conv_per_block_and_no_batchnorm(reparam_build):
    ops = [n.op_type for n in onnx.load(str(reparam_build["onnx"])).graph.node]
    info = reparam_build["entry"]["notes"]["reparam"]
    assert "BatchNormalization" not in ops
    assert ops.count("Conv") == info["blocks"] == 4
    assert info["onnx_ops"]["folded"]["Conv"] == 4
    assert info["onnx_ops"]["branched"]["Conv"] == 8  # a 3x3 and a 1x1 per block before folding


def test_the_record_compares_branched_and_folded(reparam_build):
    entry = reparam_build["entry"]
    info = entry["notes"]["reparam"]
    assert info["equivalence"]["max_abs_diff"] <= info["equivalence"]["tolerance"]
    assert info["branches_per_block"] == [2, 2, 2, 3]
    assert info["macs"]["folded"] < info["macs"]["branched"] and info["macs"]["folded"] < info["macs"]["teacher"]
    assert info["params"]["folded"] < info["params"]["branched"] and entry["macs"] == info["macs"]["folded"]
    for model in ("branched", "folded"):
        assert set(info["latency_p50_ms"][model]) == {"b1_t1", "b32_t1"}
        assert all(ms > 0 for ms in info["latency_p50_ms"][model].values())
        assert info["memory"][model]["process_peak_mib"] > info["memory"][model]["session_peak_mib"] >= 0


def test_the_student_beats_itself_untrained(reparam_build):
    info = reparam_build["entry"]["notes"]["reparam"]
    assert info["student_validation_accuracy"] > info["student_untrained_validation_accuracy"] + 0.1
