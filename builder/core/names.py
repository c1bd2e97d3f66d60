"""Triton model names: the one mapping from (model, variant) to the name a model is served under.

The CLI, the spec and the build record write a combined variant `distilled+int8`; Triton serves it as
`minilm_distilled-int8`. A served name holds only letters, digits and `_ - .` and is at most 63 characters: what a
Kubernetes label value accepts and what every client sends unchanged in a URL path (stock `tritonclient.http`
percent-encodes `+` as `%2B`, and Triton 2.51 does not decode paths, so a `+` name answered "not found").

The mapping writes `+` as `-`. The model part is everything before the last `_` (variant names never hold `_`).
Reading the variant back needs the variant registry (registry variant names may hold `-`, `int8-static`): that
inverse is builder/pipeline/names.py, beside the registry; tests/unit/test_names.py proves over the whole registry that no
two variants map to one name, that every name maps back, and that MAX_MODEL_NAME keeps every derived name within
MAX_NAME.
"""

from __future__ import annotations

import re

MAX_NAME = 63  # a Kubernetes label value
SERVED_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
COMBINE, SERVED_COMBINE = "+", "-"
# The longest name the kit derives from a model name: the raw-text ensemble `<model>_<variant>_text`.
TEXT_SUFFIX = "_text"
# The longest `<model>` part: with the registry's longest variant name and TEXT_SUFFIX it stays within MAX_NAME
# (held against the registry by tests/unit/test_names.py)
MAX_MODEL_NAME = 28


def model_name(model: str, variant: str) -> str:
    """The Triton model name of `variant` (as the CLI writes it: `distilled+int8`) of model `model`."""
    return f"{model}_{variant.replace(COMBINE, SERVED_COMBINE)}"


def source_of(name: str) -> str:
    """The model part of a served name: `minilm_distilled-int8` -> `minilm`."""
    return name.rpartition("_")[0] or name


def legacy_name(model: str, variant: str) -> str:
    """The name the builder gave a combined variant before names became URL-safe (`minilm_pruned+int8`)."""
    return f"{model}_{variant}"
