"""A variant the build refused is not trained again while its recipe and inputs are unchanged: its verdict comes
from the build record, as the teacher comes from its cache. The tiny fixture's QAT keeps each build to seconds."""

import json
import shutil

import pytest
import yaml

import builder.pipeline.build
from builder.pipeline.build import Gates, build_variant
from builder.cli import main
from builder.core.spec import load_spec
from tests.conftest import TINY_SPEC

REFUSE_ALL = -100.0  # an accuracy budget no variant meets: a deterministic refusal


def tiny_spec(folder, qat_steps=20):
    raw = yaml.safe_load(TINY_SPEC.read_text())
    raw.update(variants={"qat": {"train_steps": qat_steps}}, training={"batch_size": 16, "lr": 0.05})
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY_SPEC.parent / "tiny_model.py", folder / "tiny_model.py")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(raw))
    return folder / "tiny.yaml"


@pytest.fixture
def trained(monkeypatch):
    """Counts the torch-level transformations (QAT's training) that builds run."""
    calls = []
    transform = builder.pipeline.build.transform_torch
    monkeypatch.setattr(builder.pipeline.build, "transform_torch", lambda *a, **k: calls.append(1) or transform(*a, **k))
    return calls


def build(spec_path, tmp_path, drop=REFUSE_ALL, rebuild=False, force=False):
    messages = []
    entry = build_variant(load_spec(spec_path), "qat", tmp_path / "repo", tmp_path / "art",
                          gates=Gates(drop, force=force), progress=messages.append, rebuild=rebuild)
    return entry, messages


def test_a_refused_variant_keeps_its_verdict_until_its_recipe_or_budget_changes(tmp_path, trained):
    spec = tiny_spec(tmp_path / "spec")
    build_variant(load_spec(spec), "fp32", tmp_path / "repo", tmp_path / "art", progress=lambda m: None)
    first, _ = build(spec, tmp_path)
    assert first["gates_failed"] and first["version_dir"] is None and first["recipe_key"]
    assert len(trained) == 2  # fp32's export, then QAT

    again, messages = build(spec, tmp_path)
    assert len(trained) == 2  # not trained again
    assert again["verdict_reused"] and again["gates_failed"] == first["gates_failed"]
    assert again["built_at"] == first["built_at"] and again["version_dir"] is None
    assert any("Verdict reused, not retrained; --rebuild trains and measures it again" in m for m in messages)
    assert not (tmp_path / "repo" / "tiny_qat").exists()

    build(spec, tmp_path, drop=REFUSE_ALL / 2)  # another budget: another verdict
    assert len(trained) == 3
    changed, _ = build(tiny_spec(tmp_path / "spec", qat_steps=21), tmp_path, drop=REFUSE_ALL / 2)  # another recipe
    assert len(trained) == 4 and not changed.get("verdict_reused")
    build(tiny_spec(tmp_path / "spec", qat_steps=21), tmp_path, drop=REFUSE_ALL / 2, rebuild=True)
    assert len(trained) == 5
    forced, _ = build(tiny_spec(tmp_path / "spec", qat_steps=21), tmp_path, drop=REFUSE_ALL / 2, force=True)
    assert len(trained) == 6 and forced["version_dir"]  # --force writes it: nothing to reuse


def test_builder_build_says_the_verdict_was_reused_and_how_to_rebuild(tmp_path, trained, capsys):
    spec = tiny_spec(tmp_path / "spec")
    args = ["build", "--config", str(spec), "--artifacts", str(tmp_path / "art"), "--repository",
            str(tmp_path / "repo")]
    assert main(args + ["--variant", "fp32"]) == 0
    assert main(args + ["--variant", "qat", "--max-accuracy-drop", str(REFUSE_ALL)]) == 0
    capsys.readouterr()
    assert main(args + ["--variant", "qat", "--max-accuracy-drop", str(REFUSE_ALL)]) == 0
    out = capsys.readouterr().out
    assert len(trained) == 2
    row = next(line for line in out.splitlines() if line.startswith("tiny_qat "))
    assert "accuracy drop" in row and "(not written)" in row and "reused: same recipe and inputs" in row
    assert "--rebuild trains and measures it again" in out
    record = json.loads((tmp_path / "art" / "tiny" / "record.json").read_text())
    assert "verdict_reused" not in record["variants"]["qat"]  # the record keeps the build that measured it
