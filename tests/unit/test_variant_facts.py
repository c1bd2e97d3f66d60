"""Every variant module declares what the build would otherwise guess from its name: its stage, the precision of
the weights it leaves, whether it trains, whether it buys size only. A new technique fails here until it does."""

import pytest

from builder.pipeline.variants import PRECISIONS, STAGES, TRAINING, VARIANTS, facts


@pytest.mark.parametrize("module", sorted({s.module for steps in VARIANTS.values() for s in steps},
                                          key=lambda m: m.__name__), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_each_module_declares_its_facts(module):
    assert module.STAGE in STAGES
    assert module.PRECISION in PRECISIONS
    assert module.TRAINS in TRAINING
    assert module.SIZE_ONLY in (True, False)


def test_a_combined_variant_takes_its_facts_from_its_steps():
    assert facts("distilled+int8").precision == "int8" and facts("distilled+int8").trains is True
    assert facts("qat").precision == "int8"  # qat's own int8 step
    assert facts("fp16").precision == "fp16" and facts("fp16").compute_precision == "fp32"
    assert facts("int8").trains is False and facts("fp32").trains == "option"
    assert facts("clustered").size_only and not facts("clustered+int8").size_only
