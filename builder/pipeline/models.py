"""Resolve what the user named (`--model digits` or `--config my.yaml`) to a ModelSpec."""

from __future__ import annotations

import pathlib

from ..core.errors import ConfigError, unknown_name
from ..core.spec import ModelSpec, load_spec
from .sources import DEMO_SPECS
from .variants import module_names


def resolve_spec(model: str | None = None, config: str | pathlib.Path | None = None) -> ModelSpec:
    if bool(model) == bool(config):
        raise ConfigError("name exactly one of --model (a demo model) or --config (your model's YAML spec)",
                          hint=f"demo models: {', '.join(DEMO_SPECS)}")
    if config:
        return load_spec(config, module_names())
    if model not in DEMO_SPECS:
        raise unknown_name("model", model, DEMO_SPECS, hint="or describe your own with --config my.yaml")
    return load_spec(DEMO_SPECS[model], module_names())
