"""The registry of variants: one module per technique, one name used in the CLI, YAML, module and Triton model name.

Each module has `STAGE` ("torch": transforms the nn.Module before export, or "onnx": transforms the exported file)
and `apply(...)`. Combinations are written `a+b` and run torch-level steps first, in the order written.
"""

from ..errors import VariantError, unknown_name
from . import fp32

VARIANTS = {
    "fp32": fp32,
}


def steps(variant: str) -> list:
    """The modules of a (possibly combined) variant name, in order. Raises VariantError for unknown names."""
    modules = []
    for part in variant.split("+"):
        if part not in VARIANTS:
            raise unknown_name("variant", part, VARIANTS, error=VariantError)
        modules.append(VARIANTS[part])
    return modules
