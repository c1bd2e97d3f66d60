"""Triton model names: the one mapping from (model, variant) to the name a model is served under, and back.

The CLI, the spec and the build record write a combined variant `distilled+int8`; Triton serves it as
`minilm_distilled-int8`. A served name holds only letters, digits and `_ - .` and is at most 63 characters: what a
Kubernetes label value accepts and what every client sends unchanged in a URL path (stock `tritonclient.http`
percent-encodes `+` as `%2B`, and Triton 2.51 does not decode paths, so a `+` name answered "not found").

The mapping writes `+` as `-`. Registry variant names may themselves hold `-` (`int8-static`), so the inverse
splits the variant part at every `-` and regroups the pieces into registry names; tests/unit/test_names.py proves
over the whole registry (every variant and every valid two-step combination) that no two variants map to one name
and that every name maps back. The model part is everything before the last `_` (variant names never hold `_`).
"""

from __future__ import annotations

import functools
import re

from .errors import ConfigError
from .variants import VARIANTS, steps

MAX_NAME = 63  # a Kubernetes label value
SERVED_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
COMBINE, SERVED_COMBINE = "+", "-"
# The longest name the kit derives from a model name: the raw-text ensemble `<model>_<variant>_text`.
TEXT_SUFFIX = "_text"


def model_name(model: str, variant: str) -> str:
    """The Triton model name of `variant` (as the CLI writes it: `distilled+int8`) of model `model`."""
    return f"{model}_{variant.replace(COMBINE, SERVED_COMBINE)}"


def split_model_name(name: str) -> tuple[str, str]:
    """(model, variant as the CLI writes it) of a served name: `minilm_distilled-int8` -> (`minilm`,
    `distilled+int8`). Raises ConfigError for a name that no registry variant maps to."""
    model, sep, served = name.rpartition("_")
    variant = _regroup(tuple(served.split(SERVED_COMBINE))) if sep else None
    if not model or variant is None:
        raise ConfigError(f"`{name}` is not a name the builder gives a model (`<model>_<variant>`)",
                          hint=f"variants: {', '.join(VARIANTS)}; combinations are served with `-`: "
                               f"{model_name('minilm', 'distilled+int8')}")
    return model, variant


@functools.cache
def _regroup(pieces: tuple[str, ...]) -> str | None:
    """The one way to read `pieces` (a variant part split at `-`) as registry names joined by `+`, or None."""
    readings = []
    for end in range(1, len(pieces) + 1):
        head = SERVED_COMBINE.join(pieces[:end])
        if head not in VARIANTS:
            continue
        rest = pieces[end:]
        tail = _regroup(rest) if rest else ""
        if tail is not None:
            readings.append(head + (COMBINE + tail if tail else ""))
    valid = [r for r in readings if _is_valid(r)]
    return valid[0] if len(valid) == 1 else None


def _is_valid(variant: str) -> bool:
    from .errors import VariantError

    try:
        steps(variant)
    except VariantError:
        return False
    return True


def max_model_name_length() -> int:
    """The longest `<model>` part that keeps every name derived from it (the text ensemble of the longest
    registry variant or two-step combination) within MAX_NAME."""
    longest = max(len(model_name("", v)) for v in registry_variants())
    return MAX_NAME - longest - len(TEXT_SUFFIX)


@functools.cache
def registry_variants() -> tuple[str, ...]:
    """Every single variant and every valid two-step combination of the registry, as the CLI writes them."""
    combined = [f"{a}{COMBINE}{b}" for a in VARIANTS for b in VARIANTS if a != b and _is_valid(f"{a}{COMBINE}{b}")]
    return tuple(VARIANTS) + tuple(combined)
