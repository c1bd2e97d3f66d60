"""The layers declared in pyproject.toml ([tool.importlinter]) hold: no upward import, no circle, a thin client."""

import os
import shutil
import subprocess
import sys

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


def test_an_upward_import_breaks_them(tmp_path):
    """The check can fail: the core importing the embedded server (serving, a layer above it) is refused."""
    for part in ("builder", "client", "loadtests"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "builder" / "core" / "data.py", "a") as f:
        f.write("\nfrom ..serving import server  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "builder.core.data -> builder.serving.server" in result.stdout
