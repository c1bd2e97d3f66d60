"""Optimized variants really are what their names say, pass or fail their gates as they should, and every one of
them is served by the embedded Triton server with the accuracy measured in-process. Small training budgets keep
this within CI time; the full-size numbers come from `builder build --variant all`."""

import dataclasses
import shutil

import onnx
import pytest

from builder.pipeline.build import Gates, build_variant
from builder.core.artifacts import load_splits
from builder.demo import compare_accuracy
from builder.core.names import model_name
from builder.serving.repository import latest_model_file
from builder.serving.server import EmbeddedServer, free_port
from client import TritonClient

pytestmark = pytest.mark.e2e

DIGITS_VARIANTS = ["int8", "int8-static", "fp16", "qat", "pruned", "svd", "distilled", "pruned+int8"]
MINILM_VARIANTS = ["int8", "pruned", "svd", "distilled+int8", "tinybert+int8"]
# Test budgets, in steps (a few seconds each here); the time caps are only there to end a hung run
QUICK_TEXT_TRAINING = {"steps": 12, "batch_size": 16, "lr": 0.0001, "max_seconds": 300}
QUICK_IMAGE_TRAINING = {"steps": 100, "batch_size": 64, "lr": 0.001, "max_seconds": 300}


def int_ops(path) -> dict:
    ops = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type in ("MatMulInteger", "ConvInteger", "QuantizeLinear", "DequantizeLinear",
                            "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul"):
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def weights(path) -> dict:
    return {i.name: list(i.dims) for i in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def variants(built, tmp_path_factory):
    """Every test variant built (forced into the repository whatever its gates say): {(model, variant): entry}."""
    repository = tmp_path_factory.mktemp("variants") / "model_repository"
    digits = quick_variants(dataclasses.replace(built["specs"]["digits"], training=QUICK_IMAGE_TRAINING))
    minilm = quick_variants(dataclasses.replace(built["specs"]["minilm"], training=QUICK_TEXT_TRAINING))
    entries = {}
    for spec, names in ((digits, DIGITS_VARIANTS), (minilm, MINILM_VARIANTS)):
        shutil.copytree(built["repository"] / f"{spec.name}_fp32", repository / f"{spec.name}_fp32")
        for variant in names:
            entries[(spec.name, variant)] = build_variant(spec, variant, repository, built["artifacts"],
                                                          command="tests", gates=Gates(force=True), eval_limit=300)
    return {"repository": repository, "entries": entries, "specs": {"digits": digits, "minilm": minilm}}


def quick_variants(spec):
    """The spec's own per-variant budgets would override the quick training section (fp32's are the teacher's own:
    kept, so the session's teacher is reused)."""
    budgets = ("train_seconds", "train_epochs", "train_steps")
    quick = {name: options if name == "fp32" else {k: v for k, v in options.items() if k not in budgets}
             for name, options in spec.variants.items()}
    return dataclasses.replace(spec, variants=quick)


def onnx_file(variants, model, variant):
    return latest_model_file(variants["repository"], model_name(model, variant))


def test_int8_graphs_hold_integer_ops_and_are_smaller(variants):
    fp32_bytes = {m: onnx_file(variants, m, "fp32").stat().st_size for m in ("digits", "minilm")}
    dynamic = int_ops(onnx_file(variants, "minilm", "int8"))
    assert dynamic.get("MatMulInteger", 0) >= 36  # 6 layers x (q, k, v, out, ffn in, ffn out)
    assert variants["entries"][("minilm", "int8")]["notes"]["int8_method"] == "dynamic"
    static = int_ops(onnx_file(variants, "digits", "int8"))
    assert static.get("QuantizeLinear", 0) >= 5 and static.get("DequantizeLinear", 0) >= 5  # QDQ around every conv
    assert variants["entries"][("digits", "int8")]["notes"]["int8_method"] == "static"
    assert onnx_file(variants, "minilm", "int8").stat().st_size < 0.7 * fp32_bytes["minilm"]
    assert onnx_file(variants, "digits", "int8").stat().st_size < 0.35 * fp32_bytes["digits"]


def test_fp16_keeps_float32_inputs_and_outputs(variants):
    model = onnx.load(str(onnx_file(variants, "digits", "fp16")))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def test_pruned_graphs_have_fewer_channels_and_heads(variants):
    def conv_channels(path):
        return sorted(d[0] for d in weights(path).values() if len(d) == 4)

    assert conv_channels(onnx_file(variants, "digits", "pruned")) == [16, 32, 64]  # was 32, 64, 128
    entry = variants["entries"][("minilm", "pruned")]
    # the demo's recipe: 40 % of the heads and FFN units, ranked by Taylor importance
    assert variants["specs"]["minilm"].variants["pruned"]["ratio"] == 0.4
    assert set(entry["notes"]["pruned_heads"].values()) == {7}  # 12 heads per layer before
    two_d = [d for d in weights(onnx_file(variants, "minilm", "pruned")).values() if len(d) == 2]
    assert [384, 224] in two_d and [384, 921] in two_d  # q/k/v: 7 heads x 32; FFN: 921 of 1536 neurons
    assert [384, 1536] not in two_d and [384, 384] not in two_d
    assert entry["macs"] < 0.65 * variants["entries"][("minilm", "int8")]["macs"]
    # its checkpoint is chosen on validation: at the quick budget, only the end is scored
    run = entry["training"]["pruned fine-tune"]
    assert run["selected_step"] == run["steps"] and list(run["validation_by_step"]) == [str(run["steps"])]


def test_svd_layers_have_the_expected_rank_and_fewer_macs(variants):
    entry = variants["entries"][("digits", "svd")]
    factored = entry["notes"]["svd_factored"]
    assert factored == {"net.fc_layers.0": {"shape": [256, 1152], "rank": int(0.5 * 256 * 1152 / (256 + 1152))}}
    dims = list(weights(onnx_file(variants, "digits", "svd")).values())
    assert [104, 1152] in dims or [1152, 104] in dims
    text = variants["entries"][("minilm", "svd")]
    assert text["macs"] < variants["entries"][("minilm", "int8")]["macs"]
    assert all(f["rank"] < f["shape"][0] * f["shape"][1] / sum(f["shape"]) for f in text["notes"]["svd_factored"].values())


def test_distilled_students_are_smaller_and_beat_themselves_untrained(variants):
    text = variants["entries"][("minilm", "distilled+int8")]["notes"]["distilled"]
    assert text["student"] == "layers" and len(text["kept_layers"]) == 3 and text["teacher_layers"] == 6
    image = variants["entries"][("digits", "distilled")]
    info = image["notes"]["distilled"]
    assert info["student"] == "depthwise-separable" and len(info["separable_convs"]) == 2
    assert info["student_validation_accuracy"] > info["student_untrained_validation_accuracy"] + 0.3
    assert image["macs"] < 0.5 * variants["entries"][("digits", "int8")]["macs"]


def test_the_narrow_student_is_narrow_and_keeps_the_served_shapes(variants):
    entry = variants["entries"][("minilm", "tinybert+int8")]
    assert entry["notes"]["tinybert"]["student_shape"] == [256, 1024, 3]
    dims = weights(onnx_file(variants, "minilm", "tinybert+int8")).values()
    assert [256, 1024] in dims or [1024, 256] in dims  # the narrow FFN
    assert [384, 1536] not in dims and [1536, 384] not in dims
    assert int_ops(onnx_file(variants, "minilm", "tinybert+int8")).get("MatMulInteger", 0) >= 18  # 3 layers x 6
    assert entry["macs"] < 0.3 * variants["entries"][("minilm", "int8")]["macs"]


def test_qat_matches_or_beats_static_int8_on_the_cnn(variants):
    entries = variants["entries"]
    assert entries[("digits", "qat")]["accuracy"]["test"] >= entries[("digits", "int8-static")]["accuracy"]["test"]
    assert int_ops(onnx_file(variants, "digits", "qat")).get("QuantizeLinear", 0) >= 5


def test_the_accuracy_gate_fires_and_keeps_the_variant_out_of_the_repository(built, tmp_path):
    spec = built["specs"]["digits"]  # one step of training: its own budget would override training's
    starved = dataclasses.replace(spec, training={"steps": 1, "lr": 0.001},
                                  variants={**spec.variants, "distilled": {"train_steps": 1}})
    entry = build_variant(starved, "distilled", tmp_path / "repo", built["artifacts"], command="tests", eval_limit=200)
    assert entry["gates_failed"] and "accuracy drop" in entry["gates_failed"][0]
    assert entry["version_dir"] is None and not (tmp_path / "repo" / "digits_distilled").exists()
    forced = build_variant(starved, "distilled", tmp_path / "repo", built["artifacts"], command="tests",
                           gates=Gates(force=True), eval_limit=200)
    assert forced["gates_failed"] and (tmp_path / "repo" / "digits_distilled" / "1" / "model.onnx").is_file()


def test_every_variant_is_served_with_its_in_process_accuracy(variants, built):
    with EmbeddedServer(variants["repository"], free_port(), free_port(), free_port()) as server:
        states = {m.name: m.state for m in server.models()}
        assert all(state == "READY" for state in states.values()), states
        with TritonClient(server.grpc_url) as client:
            for (model, variant) in variants["entries"]:
                spec = variants["specs"][model]
                split = load_splits(spec, built["artifacts"] / model)["test"].spread(150)
                name = model_name(model, variant)
                result = compare_accuracy(client, name, spec, split, onnx_file(variants, model, variant))
                assert result["served"] == result["in_process"], name
        # over HTTP too, for the combined variants: their served names hold `-`, not `+` (which tritonclient
        # percent-encodes in the URL path and Triton 2.51 does not decode: every call answered "not found")
        with TritonClient(server.http_url) as client:
            for (model, variant) in (k for k in variants["entries"] if "+" in k[1]):
                name = model_name(model, variant)
                assert "+" not in name and client.is_model_ready(name), name
                spec = variants["specs"][model]
                split = load_splits(spec, built["artifacts"] / model)["test"].spread(50)
                result = compare_accuracy(client, name, spec, split, onnx_file(variants, model, variant))
                assert result["served"] == result["in_process"], name
