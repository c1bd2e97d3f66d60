import pytest

from builder.errors import VariantError
from builder.variants import VARIANTS, steps


def test_registry_names_match_modules():
    for name, module in VARIANTS.items():
        assert module.__name__.rsplit(".", 1)[-1] == name
        assert module.STAGE in ("torch", "onnx")


def test_unknown_variant_lists_known_and_suggests():
    with pytest.raises(VariantError) as info:
        steps("fp23")
    assert "did you mean `fp32`" in info.value.hint and "fp32" in info.value.hint
