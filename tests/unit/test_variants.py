import pytest

from builder.core.errors import VariantError
from builder.pipeline.variants import VARIANTS, steps


def test_registry_steps_are_well_formed():
    for name, plan in VARIANTS.items():
        assert plan, name
        for step in plan:
            assert step.stage in ("torch", "onnx")
            step.config({})  # every Config builds from defaults


def test_int8_names_fix_the_method():
    assert steps("int8-dynamic")[0].config({}).method == "dynamic"
    assert steps("int8-static")[0].config({"int8": {"method": "dynamic"}}).method == "static"
    assert steps("int8")[0].config({"int8": {"calibration": "entropy"}}).calibration == "entropy"


def test_qat_ends_with_static_quantization():
    assert [(s.name, s.stage) for s in steps("qat")] == [("qat", "torch"), ("int8", "onnx")]


def test_combinations_run_in_the_order_written():
    assert [s.name for s in steps("distilled+int8")] == ["distilled", "int8"]
    assert [s.name for s in steps("pruned+svd+fp16")] == ["pruned", "svd", "fp16"]


def test_unknown_variant_lists_known_and_suggests():
    with pytest.raises(VariantError) as info:
        steps("prunned")
    assert "did you mean `pruned`" in info.value.hint and "fp32" in info.value.hint


def test_onnx_level_before_torch_level_is_impossible():
    with pytest.raises(VariantError, match="impossible order") as info:
        steps("int8+pruned")
    assert "pruned+int8" in info.value.hint


def test_two_precisions_do_not_combine():
    with pytest.raises(VariantError, match="choose one"):
        steps("fp16+int8")


def test_unknown_option_suggests():
    with pytest.raises(VariantError) as info:
        steps("pruned")[0].config({"pruned": {"ratoi": 0.3}})
    assert "did you mean `ratio`" in info.value.hint


def test_the_accuracy_drop_carries_its_paired_standard_error():
    import numpy as np

    from builder.core.evaluate import paired_drop_se
    from builder.pipeline.models import resolve_spec

    spec = resolve_spec("digits")
    labels = np.zeros(1000, dtype=np.int64)
    right, wrong = np.eye(10)[0], np.eye(10)[1]
    same = {"logits": np.tile(right, (1000, 1))}
    assert paired_drop_se(spec.metric, same, same, labels) == 0.0  # identical predictions: no uncertainty
    # 75 examples only fp32 gets right, 75 only the variant: drop 0, se sqrt(0.15 / 1000) = 1.22 points
    ref = np.tile(right, (1000, 1)); ref[:75] = wrong
    var = np.tile(right, (1000, 1)); var[75:150] = wrong
    assert paired_drop_se(spec.metric, {"logits": ref}, {"logits": var}, labels) == pytest.approx(1.22, abs=0.02)


def test_build_refuses_a_bad_option_before_building_anything(tmp_path, capsys):
    """A bad value in a spec's variants section fails when the Config is made: before fp32 (or data) is touched."""
    import yaml

    from builder.cli import main
    from tests.conftest import TINY_SPEC

    raw = yaml.safe_load(TINY_SPEC.read_text())
    raw["factory"] = raw["data"] = "no_such_module:never_called"  # building anything would fail differently
    raw["variants"] = {"pruned": {"train_steps": 0}}
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(raw))
    artifacts = tmp_path / "artifacts"
    assert main(["build", "--config", str(spec), "--variant", "pruned", "--artifacts", str(artifacts),
                 "--repository", str(tmp_path / "repo")]) == 2
    assert "error: pruned: train_steps must be a positive integer, got 0" in capsys.readouterr().err
    assert not artifacts.exists()
    raw["variants"] = {}
    raw["training"] = {"step": 5}
    spec.write_text(yaml.safe_dump(raw))
    assert main(["build", "--config", str(spec), "--variant", "pruned", "--artifacts", str(artifacts)]) == 2
    err = capsys.readouterr().err
    assert "unknown training option `step`" in err and "did you mean `steps`" in err
    assert not artifacts.exists()


def test_the_agreement_gate_is_a_fraction(tmp_path, capsys):
    from builder.cli import main
    from tests.conftest import TINY_SPEC

    assert main(["build", "--config", str(TINY_SPEC), "--min-agreement", "95", "--artifacts", str(tmp_path)]) == 2
    assert "--min-agreement is a fraction" in capsys.readouterr().err
