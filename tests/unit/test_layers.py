"""The layers declared in pyproject.toml ([tool.importlinter]) hold: no upward import, no circle, a thin client."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint_imports(root) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT_IMPORTS, "--config", str(root / "pyproject.toml")], capture_output=True, text=True,
                          cwd=root, env=env, timeout=300)


def test_the_layers_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    # the core importing the embedded server (serving, a layer above it)
    ("builder/core/data.py", "from ..serving import server", "builder.core.data -> builder.serving.server"),
    # inside the pipeline: measurement importing the build stage above it
    ("builder/pipeline/measure.py", "from . import build", "builder.pipeline.measure -> builder.pipeline.build"),
], ids=["core-to-serving", "inside-the-pipeline"])
def test_an_upward_import_breaks_them(tmp_path, module, line, broken):
    """Each layered contract can fail: an import that runs up is refused, and named."""
    copy_project(ROOT, tmp_path)
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert broken in result.stdout


def copy_project(root, to) -> None:
    for part in ("builder", "client", "loadtests"):
        shutil.copytree(root / part, to / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "pyproject.toml", to)


def layered(root, contract: str = "layers") -> list[str]:
    """The modules and packages a `layers` contract names (a package names every module under it), with its
    container's name in front."""
    import tomllib

    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    chosen = next(c for c in config if c["id"] == contract)
    prefix = "".join(f"{c}." for c in chosen.get("containers", []))
    return [prefix + name.strip() for layer in chosen["layers"] for name in layer.replace("|", ":").split(":")]


def unlayered(root, contract: str = "layers", parts=("builder", "client", "loadtests")) -> list[str]:
    names = layered(root, contract)
    found = []
    for part in parts:
        for path in sorted((root / part).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            if module.endswith(".__init__"):
                continue  # a package marker: its package is what a layer names
            if not any(module == n or module.startswith(n + ".") for n in names):
                found.append(module)
    return found


def test_every_module_is_in_a_layer(tmp_path):
    assert unlayered(ROOT) == []
    (tmp_path / "builder").mkdir()
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "builder" / "stray.py").write_text("")
    assert unlayered(tmp_path) == ["builder.stray"]  # the check can fail


def test_every_pipeline_module_is_in_a_pipeline_layer():
    assert unlayered(ROOT, "pipeline", parts=("builder/pipeline",)) == []
