"""The public API a user model imports: listed in builder/api.py, and old documented paths still work, with a warning
that names the new one."""

import subprocess
import sys

import pytest

import builder.api
from builder.core.data import Split
from tests.conftest import ROOT


def test_the_released_readme_import_works_and_names_the_new_path():
    with pytest.warns(DeprecationWarning, match=r"builder\.data\.Split moved to builder\.core\.data\.Split"):
        from builder.data import Split as Old
    assert Old is Split


def test_it_warns_at_every_import_not_only_the_first():
    for _ in range(2):
        with pytest.warns(DeprecationWarning):
            from builder.data import Split  # noqa: F401


def test_a_user_module_sees_the_warning_in_a_fresh_process(tmp_path):
    """As a user's spec module would meet it: a fresh interpreter, the warning pointing at the user's own line."""
    (tmp_path / "user_model.py").write_text("from builder.data import Split\n")
    result = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-c", "import user_model"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60,
                            env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert "user_model.py:1: DeprecationWarning: builder.data.Split moved to builder.core.data.Split" in result.stderr


def test_moved_functions_still_import():
    with pytest.warns(DeprecationWarning, match="builder.core.artifacts.load_splits"):
        from builder.data import load_splits
    from builder.core.artifacts import load_splits as new
    assert load_splits is new


def test_an_unknown_name_is_still_an_import_error():
    with pytest.raises(ImportError):
        from builder.data import NoSuchThing  # noqa: F401


def test_the_public_api_is_listed_in_one_place():
    for name in builder.api.__all__:
        assert getattr(builder.api, name) is not None
        assert f"  {name} " in builder.api.__doc__  # each listed with where it lives
    assert builder.api.Split is Split
    assert "builder/api.py" in (ROOT / "docs" / "own-model.md").read_text()
