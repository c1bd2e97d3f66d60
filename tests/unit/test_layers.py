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


def layered(root) -> list[str]:
    """The modules and packages the `layers` contract names (a package names every module under it)."""
    import tomllib

    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in config if c["id"] == "layers")["layers"]
    return [name.strip() for layer in layers for name in layer.replace("|", ":").split(":")]


def unlayered(root) -> list[str]:
    names = layered(root)
    found = []
    for part in ("builder", "client", "loadtests"):
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
