"""The compression benchmark's record columns, on hand-made record entries."""

from builder.core.record import BuildEntry, upgrade
from builder.speedbench import record_columns


def typed(entry: dict) -> BuildEntry:
    return BuildEntry.of("v", upgrade({"model": "m", "variants": {"v": entry}})["variants"]["v"])


def test_a_refused_variant_shows_its_drop_agreement_and_reason():
    entry = {"accuracy_drop_points": 1.88, "accuracy_drop_se_points": 0.68, "agreement_with_fp32": {"top1": 0.912},
             "build_seconds": 212.4, "gates_failed": ["accuracy drop 1.88 > 1.0 points"]}
    line = record_columns(typed(entry))
    assert "1.88 +- 0.68" in line and "0.912" in line and "212" in line
    assert line.endswith("refused: accuracy drop 1.88 > 1.0 points")


def test_a_passing_variant_and_a_missing_one():
    assert record_columns(typed({"accuracy_drop_points": 0.2, "accuracy_drop_se_points": 0.3,
                                 "agreement_with_fp32": {"top1": 0.97}, "build_seconds": 5, "gates_failed": []})
                          ).endswith("passes")
    assert record_columns(None).endswith("not in the record")
