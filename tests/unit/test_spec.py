import pytest

from builder.core.errors import ConfigError
from builder.pipeline.models import resolve_spec
from builder.pipeline.sources import DEMO_SPECS
from builder.core.spec import load_spec, resolve_callable
from tests.conftest import FIXTURES, TINY_SPEC

BAD = FIXTURES / "bad_specs"


@pytest.mark.parametrize("name", sorted(DEMO_SPECS))
def test_demo_models_are_plain_specs(name):
    spec = resolve_spec(name)
    assert spec.name == name
    assert spec.inputs[0].shape[0] == "batch"
    assert spec.metric.output in {t.name for t in spec.outputs}


def test_minilm_spec_has_dynamic_sequence():
    spec = resolve_spec("minilm")
    assert [t.name for t in spec.inputs] == ["input_ids", "attention_mask"]
    assert all(t.shape == ("batch", "seq") and t.dtype == "int64" for t in spec.inputs)
    assert spec.example_shape(spec.inputs[0], batch=2) == [2, 32]
    assert [t.name for t in spec.outputs] == ["logits", "embedding"]


def test_user_spec_loads_and_its_factory_resolves():
    spec = load_spec(TINY_SPEC)
    factory = resolve_callable(spec.factory, spec.source)
    assert factory(None).embedding.num_embeddings == 50


def test_a_spec_written_before_the_pipeline_moved_still_loads(tmp_path):
    """The kit's sources moved from builder/sources to builder/pipeline/sources: a spec file that names the old path
    (one a user's `--hf-model` build wrote, or the demo's) loads with the new one, so it also keys its recipe the same."""
    text = (DEMO_SPECS["digits"]).read_text()
    old = tmp_path / "digits.yaml"
    old.write_text(text.replace("builder.pipeline.sources.", "builder.sources."))
    assert "builder.sources.digits:load_model" in old.read_text()
    before, now = load_spec(old), load_spec(DEMO_SPECS["digits"])
    assert (before.factory, before.data) == (now.factory, now.data) == (
        "builder.pipeline.sources.digits:load_model", "builder.pipeline.sources.digits:load_data")
    assert callable(resolve_callable(before.factory, before.source))


def test_unknown_key_names_file_field_and_suggests():
    with pytest.raises(ConfigError) as info:
        load_spec(BAD / "unknown_key.yaml")
    assert "unknown_key.yaml" in str(info.value) and "max_batch_sise" in str(info.value)
    assert "did you mean `max_batch_size`" in info.value.hint


def test_unknown_dtype_suggests_the_close_one():
    with pytest.raises(ConfigError) as info:
        load_spec(BAD / "bad_dtype.yaml")
    assert "int46" in str(info.value) and "int64" in info.value.hint


def test_input_without_batch_axis_is_rejected():
    with pytest.raises(ConfigError, match="must be a list starting with `batch`"):
        load_spec(BAD / "no_batch_axis.yaml")


def test_missing_factory_module_is_a_clear_error():
    spec = load_spec(BAD / "missing_factory.yaml")
    with pytest.raises(ConfigError, match="cannot import module `no_such_module`"):
        resolve_callable(spec.factory, spec.source)


def test_unknown_demo_model_suggests():
    with pytest.raises(ConfigError) as info:
        resolve_spec("minlm")
    assert "did you mean `minilm`" in info.value.hint


def test_model_and_config_are_exclusive():
    with pytest.raises(ConfigError, match="exactly one"):
        resolve_spec("digits", TINY_SPEC)


def test_missing_spec_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(BAD / "nope.yaml")


def test_a_misspelt_variants_key_is_an_error_not_ignored():
    import yaml

    from builder.core.spec import parse_spec
    from builder.pipeline.variants import module_names

    values = yaml.safe_load(TINY_SPEC.read_text()) | {"variants": {"embed_factorized": {"rank": 4}}}
    with pytest.raises(ConfigError) as info:
        parse_spec(values, where="my.yaml", variant_modules=module_names())
    assert "my.yaml" in str(info.value) and "embed_factorized" in str(info.value)
    assert "did you mean `embed-factorized`" in info.value.hint
    assert parse_spec(values | {"variants": {"embed-factorized": {"rank": 4}}}, where="my.yaml",
                      variant_modules=module_names()).variants
