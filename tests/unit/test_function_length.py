"""No function in the product code is over 60 lines (issue: a house a newcomer can extend): a longer one is split
into named steps before it lands."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("builder", "client", "loadtests")
LIMIT = 60


def long_functions(root: pathlib.Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > LIMIT:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_60_lines():
    assert long_functions(ROOT) == []


def test_the_check_finds_a_long_function(tmp_path):
    (tmp_path / "builder").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "builder" / "long.py").write_text(f"def long():\n{body}\n")
    assert long_functions(tmp_path) == [f"builder/long.py:1 long ({LIMIT + 1} lines)"]
