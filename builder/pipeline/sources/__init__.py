"""The demo models, registered by YAML exactly as a user's model is (see builder/core/spec.py)."""

import pathlib

from ...core.errors import ConfigError

_HERE = pathlib.Path(__file__).parent

DEMO_SPECS = {
    "digits": _HERE / "digits.yaml",
    "minilm": _HERE / "minilm.yaml",
}


def package_dir(name: str) -> pathlib.Path:
    """The folder of an installed package, found without importing it (some demo packages fail on import)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package `{name}` is not installed", hint="run `make install` (demo data packages are installed --no-deps)")
    return pathlib.Path(spec.submodule_search_locations[0])
