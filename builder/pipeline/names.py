"""Reading a served model name back: (model, variant as the CLI writes it), with the variant registry.

The mapping itself is builder/core/names.py. Registry variant names may hold `-` (`int8-static`), so the inverse
splits the variant part at every `-` and regroups the pieces into registry names; tests/unit/test_names.py proves
over the whole registry (every variant and every valid two-step combination) that no two variants map to one name
and that every name maps back.
"""

from __future__ import annotations

import functools

from ..core.errors import ConfigError, VariantError
from ..core.names import COMBINE, MAX_NAME, SERVED_COMBINE, TEXT_SUFFIX, model_name
from .variants import VARIANTS, steps


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
