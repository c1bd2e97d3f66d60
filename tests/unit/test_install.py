"""`pip install .[client]` in a fresh virtual environment gives a working `python -m client`, and no torch."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_client_installs_without_torch(tmp_path):
    source = tmp_path / "source"  # a copy: building writes *.egg-info beside pyproject.toml
    for part in ("builder", "client", "loadtests"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{source}[client]"], capture_output=True,
                             text=True, timeout=800)
    assert install.returncode == 0, install.stdout + install.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed copy, not this checkout
    run = lambda *args: subprocess.run([str(python), *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                                       timeout=120)
    absent = run("-c", "import importlib.util as u, client; "
                       "print(client.__file__); print([m for m in ('torch', 'deepspeed', 'locust', 'onnxruntime') "
                       "if u.find_spec(m)])")
    assert absent.returncode == 0, absent.stderr
    assert str(venv) in absent.stdout and "[]" in absent.stdout
    usage = run("-m", "client", "--help")
    assert usage.returncode == 0 and "infer" in usage.stdout
    unreachable = run("-m", "client", "models", "--url", "http://127.0.0.1:9")  # nothing listens on port 9
    assert unreachable.returncode == 2 and "error: Triton server not reachable" in unreachable.stderr
