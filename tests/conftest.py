import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY_SPEC = FIXTURES / "tiny" / "tiny.yaml"


def run_cli(*args, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m <args>` (builder or client) as a user would; capture its output."""
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT)


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES
