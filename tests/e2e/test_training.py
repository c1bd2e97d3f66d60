"""Training as the build does it: the fine-tuned teacher beats the frozen baseline it replaces, budgets in steps
give the same record twice, the teacher is trained once per recipe, and a run cut short by the time cap says so
loudly. The tiny model keeps the repeated builds to seconds."""

import json
import shutil

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import yaml

from builder.pipeline.build import Gates, build_variant
from builder.core.spec import load_spec
from tests.conftest import TINY_SPEC, run_cli
from tests.e2e.conftest import TEST_TEACHER_STEPS

pytestmark = pytest.mark.e2e

# The tiny model's fp32 fine-tuned end to end, and a QAT variant: both trained, both seeded; budgets in steps
TINY_TRAINED = {"fp32": {"fine_tune": True, "train_steps": 30, "train_lr": 0.05}, "qat": {"train_steps": 20}}
TINY_TRAINING = {"batch_size": 16, "lr": 0.05}


def tiny_spec(folder, variants=TINY_TRAINED, training=TINY_TRAINING):
    """The tiny fixture's spec with `variants` and `training`, written beside a copy of its model module."""
    raw = yaml.safe_load(TINY_SPEC.read_text())
    raw.update(variants=variants, training=training)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY_SPEC.parent / "tiny_model.py", folder / "tiny_model.py")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(raw))
    return folder / "tiny.yaml"


def initializers(path) -> dict:
    return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_the_fine_tuned_teacher_beats_the_frozen_baseline_on_validation(built):
    entry = built["records"]["minilm_fp32"]
    baseline = entry["baseline"]
    assert baseline["fine_tuned"] and baseline["validation_split"] == "validation"
    assert baseline["fine_tuned_validation_accuracy"] > baseline["frozen_accuracy"]["validation"]
    run = entry["training"]["teacher fine-tune"]
    assert run["steps"] == run["planned_steps"] == TEST_TEACHER_STEPS and not run["stopped_by_time_cap"]
    assert set(baseline["frozen_accuracy"]) == {"validation", "test"}


def test_the_same_build_twice_gives_identical_records(tmp_path):
    spec = load_spec(tiny_spec(tmp_path / "spec"))
    entries = []
    for attempt in ("a", "b"):  # fresh artifacts each time: the teacher is trained again too
        artifacts, repository = tmp_path / attempt / "artifacts", tmp_path / attempt / "repo"
        fp32 = build_variant(spec, "fp32", repository, artifacts, command="tests")
        qat = build_variant(spec, "qat", repository, artifacts, command="tests", gates=Gates(force=True))
        entries.append((fp32, qat, artifacts))
    (fp32_a, qat_a, art_a), (fp32_b, qat_b, art_b) = entries
    assert fp32_a["baseline"]["teacher_key"] == fp32_b["baseline"]["teacher_key"]
    for a, b in ((fp32_a, fp32_b), (qat_a, qat_b)):
        assert a["accuracy"] == b["accuracy"] and a["agreement_with_fp32"] == b["agreement_with_fp32"]
        assert {k: r["steps"] for k, r in a["training"].items()} == {k: r["steps"] for k, r in b["training"].items()}
        assert all(not r["stopped_by_time_cap"] for r in a["training"].values())
    assert qat_a["training"]["quantization-aware training"]["steps"] == 20
    for variant, file in (("fp32", "model.onnx"), ("qat", "model.int8.onnx")):
        first, second = initializers(art_a / "tiny" / variant / file), initializers(art_b / "tiny" / variant / file)
        assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
    # the teacher really trained (its weights differ from the factory's), and the fine-tune is what fp32 serves
    assert fp32_a["baseline"]["fine_tuned_validation_accuracy"] != fp32_a["baseline"]["frozen_accuracy"]["validation"]


def test_the_teacher_is_trained_once_per_recipe(tmp_path):
    artifacts, repository = tmp_path / "artifacts", tmp_path / "repo"
    spec = load_spec(tiny_spec(tmp_path / "spec"))
    messages = []
    build_variant(spec, "fp32", repository, artifacts, command="tests", progress=messages.append)
    assert any("teacher fine-tune: 30/30 steps" in m for m in messages)
    messages.clear()
    qat = build_variant(spec, "qat", repository, artifacts, command="tests", gates=Gates(force=True),
                        progress=messages.append)
    assert any("reusing" in m and "same recipe" in m for m in messages)
    assert not any("teacher fine-tune:" in m for m in messages)
    changed = load_spec(tiny_spec(tmp_path / "spec2", {**TINY_TRAINED, "fp32": {**TINY_TRAINED["fp32"], "train_steps": 31}}))
    messages.clear()
    fp32 = build_variant(changed, "fp32", repository, artifacts, command="tests", progress=messages.append)
    assert any("teacher fine-tune: 31/31 steps" in m for m in messages)
    assert fp32["baseline"]["teacher_key"] != qat["baseline"]["teacher_key"]
    assert len(list((artifacts / "tiny" / "teacher").glob("*.pt"))) == 2


def test_a_run_cut_by_the_time_cap_is_flagged_in_record_and_summary(tmp_path):
    spec = tiny_spec(tmp_path / "spec", {"qat": {"train_steps": 100000, "train_seconds": 0.5}})
    artifacts = tmp_path / "artifacts"
    result = run_cli("builder", "build", "--config", spec, "--variant", "fp32,qat", "--artifacts", artifacts,
                     "--repository", tmp_path / "repo", "--force")
    assert result.returncode == 0, result.stderr
    assert "CUT `quantization-aware training` SHORT" in result.stdout
    entry = json.loads((artifacts / "tiny" / "record.json").read_text())["variants"]["qat"]
    run = entry["training"]["quantization-aware training"]
    assert entry["training_cut_by_time_cap"] == ["quantization-aware training"]
    assert run["stopped_by_time_cap"] and 0 < run["steps"] < run["planned_steps"] == 100000


def test_the_agreement_gate_keeps_a_disagreeing_variant_out(tmp_path):
    spec = tiny_spec(tmp_path / "spec", {"qat": {"train_steps": 40, "train_lr": 0.5}})
    artifacts, repository = tmp_path / "artifacts", tmp_path / "repo"
    result = run_cli("builder", "build", "--config", spec, "--variant", "fp32,qat", "--artifacts", artifacts,
                     "--repository", repository, "--min-agreement", "1.0", "--max-accuracy-drop", "100")
    entry = json.loads((artifacts / "tiny" / "record.json").read_text())["variants"]["qat"]
    assert entry["agreement_with_fp32"]["top1"] < 1.0  # the premise: this qat disagrees with fp32 somewhere
    # (the tiny model's int8 may also be slower than fp32: that gate can fail beside it)
    assert f"top-1 agreement with fp32 {entry['agreement_with_fp32']['top1']:.3f} < 1.0" in entry["gates_failed"]
    assert entry["version_dir"] is None and not (repository / "tiny_qat").exists()
    assert "top-1 agreement with fp32" in result.stdout and (repository / "tiny_fp32").is_dir()
