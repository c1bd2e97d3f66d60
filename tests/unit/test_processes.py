"""The rank rules of a build (builder/pipeline/processes.py): each stage runs under one rule, applied by the stage
runner at the stage's boundary. The stages' own code never asks which rank it is: only processes.py applies
is_main, decide and main_first. Several real ranks: tests/e2e/test_distributed_training.py."""

import ast
import pathlib

import pytest

from builder.pipeline import processes

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULE_PRIMITIVES = {"is_main", "decide", "main_first"}  # what `stage` applies; nothing else may call them


@pytest.fixture
def alone(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)


def test_alone_every_rule_runs_the_stage_once(alone):
    for rule in processes.RULES:
        runs = []
        assert processes.stage(rule, lambda: runs.append(rule) or rule) == rule
        assert runs == [rule]


def test_a_main_stage_is_skipped_on_another_rank_which_gets_otherwise(alone, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    runs = []
    assert processes.stage(processes.MAIN, lambda: runs.append(1), otherwise="model") == "model"
    assert processes.stage(processes.EVERY, lambda: runs.append(2) or "trained") == "trained"
    assert runs == [2]
    said = []
    processes.main_only(said.append)("a progress line")
    assert said == []


def test_an_unknown_rule_is_refused(alone):
    with pytest.raises(ValueError, match="unknown rank rule 'rank 1 only'"):
        processes.stage("rank 1 only", lambda: None)


def rule_calls(root: pathlib.Path) -> list[str]:
    """`module.primitive` calls and imports of a rank-rule primitive outside processes.py."""
    found = []
    for path in sorted((root / "builder").rglob("*.py")):
        if path.name == "processes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Attribute) and node.attr in RULE_PRIMITIVES and \
                    isinstance(node.value, ast.Name) and node.value.id == "processes":
                names = [node.attr]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").endswith("processes"):
                names = [a.name for a in node.names if a.name in RULE_PRIMITIVES]
            found += [f"{path.relative_to(root)}:{node.lineno} {name}" for name in names]
    return found


def test_only_the_stage_runner_applies_the_rank_rules():
    assert rule_calls(ROOT) == []


def test_the_check_finds_a_stage_that_asks_its_rank(tmp_path):
    (tmp_path / "builder").mkdir()
    (tmp_path / "builder" / "step.py").write_text(
        "from .processes import decide\n\ndef apply(model):\n    if processes.is_main():\n        return model\n")
    assert rule_calls(tmp_path) == ["builder/step.py:1 decide", "builder/step.py:4 is_main"]
