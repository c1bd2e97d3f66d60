"""ALBERT's two savings on the real MiniLM: `embed-factorized` shrinks the file by the embedding's saving and its
graph holds the two factors; `shared` shrinks the file by the shared layers' weights (each stored once) while the
graph keeps every layer position and the MACs stay fp32's. Tiny training budgets: correctness, not accuracy."""

import dataclasses
import shutil

import onnx
import pytest

from builder.pipeline.build import Gates, build_variant
from builder.serving.repository import latest_model_file

pytestmark = pytest.mark.e2e

QUICK_TEXT_TRAINING = {"steps": 6, "batch_size": 16, "lr": 0.0001}  # test budget: a few seconds here
FLOAT_BYTES = 4


@pytest.fixture(scope="module")
def albert(built, tmp_path_factory):
    """{"repository", "entries": {variant: record entry}}: both variants of minilm, forced into the repository."""
    repository = tmp_path_factory.mktemp("albert") / "model_repository"
    spec = built["specs"]["minilm"]
    # a variant's own budget overrides the training section's: set small ones here
    quick = {**spec.variants, "embed-factorized": {"train_steps": 6}, "shared": {"train_steps": 6}}
    spec = dataclasses.replace(spec, training=QUICK_TEXT_TRAINING, variants=quick)
    shutil.copytree(built["repository"] / "minilm_fp32", repository / "minilm_fp32")
    entries = {variant: build_variant(spec, variant, repository, built["artifacts"], command="tests",
                                      gates=Gates(force=True), eval_limit=100)
               for variant in ("embed-factorized", "shared")}
    return {"repository": repository, "entries": entries}


def graph(albert, variant):
    path = latest_model_file(albert["repository"], f"minilm_{variant}")
    return path, onnx.load(str(path)).graph


def op_count(g, op_type: str) -> int:
    return sum(node.op_type == op_type for node in g.node)


def test_embed_factorized_holds_the_factors_and_saves_their_bytes(albert):
    facts = albert["entries"]["embed-factorized"]["notes"]["embed-factorized"]
    vocab, width, rank = facts["vocab"], facts["width"], facts["rank"]
    assert (vocab, width) == (30522, 384) and rank < vocab * width / (vocab + width)
    fp32_path, fp32 = graph(albert, "fp32")
    path, g = graph(albert, "embed-factorized")
    shapes = {i.name: tuple(i.dims) for i in g.initializer}
    assert (vocab, width) not in shapes.values()
    table = next(name for name, dims in shapes.items() if dims == (vocab, rank))
    # the lookup is a Gather of rank-wide rows, projected by a MatMul with the r x d factor
    gather = next(n for n in g.node if n.op_type == "Gather" and n.input[0] == table)
    matmul = next(n for n in g.node if n.op_type == "MatMul" and gather.output[0] in n.input)
    assert shapes[next(i for i in matmul.input if i != gather.output[0])] == (rank, width)
    saving = FLOAT_BYTES * (facts["embedding_params_before"] - facts["embedding_params_after"])
    actual = fp32_path.stat().st_size - path.stat().st_size
    assert abs(actual - saving) < 0.01 * fp32_path.stat().st_size
    assert albert["entries"]["embed-factorized"]["params"] == facts["params_after"]


def test_shared_stores_each_shared_layer_once_and_keeps_depth_and_macs(albert, built):
    entry = albert["entries"]["shared"]
    info = entry["notes"]["shared"]
    fp32_path, fp32 = graph(albert, "fp32")
    path, g = graph(albert, "shared")
    assert op_count(g, "Softmax") == op_count(fp32, "Softmax") == 6  # one attention per layer position
    assert info["total_layers"] == 6 and info["unique_layers"] < 6
    assert entry["params"] == info["unique_params"] < info["teacher_params"]
    # the exporter must not duplicate a shared layer's weights: the file shrinks by every repeated position's bytes
    saving = FLOAT_BYTES * (info["teacher_params"] - info["unique_params"])
    actual = fp32_path.stat().st_size - path.stat().st_size
    assert abs(actual - saving) < 0.01 * fp32_path.stat().st_size
    assert len(g.initializer) < len(fp32.initializer)
    assert entry["macs"] == pytest.approx(built["records"]["minilm_fp32"]["macs"], rel=0.01)
