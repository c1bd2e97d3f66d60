"""Served model names: one mapping from (model, variant) that no two variants share, that fits a Kubernetes label
value and a URL path unchanged, and that maps back."""

import urllib.parse

import pytest

from builder.core.errors import ConfigError, RepositoryError
from builder.core.names import MAX_MODEL_NAME, MAX_NAME, SERVED_NAME, model_name
from builder.pipeline.names import max_model_name_length, registry_variants, split_model_name
from builder.serving.repository import check_no_legacy_names, remove_legacy, write_model
from builder.core.spec import parse_spec
from builder.pipeline.variants import VARIANTS

LONGEST_MODEL = "m" * MAX_MODEL_NAME


def test_the_spec_name_limit_keeps_every_derived_name_within_a_label():
    assert MAX_MODEL_NAME <= max_model_name_length()


def test_the_registry_holds_singles_and_two_step_combinations():
    variants = registry_variants()
    assert set(VARIANTS) <= set(variants)
    assert {"distilled+int8", "pruned+int8", "pruned+int8-static", "embed-factorized+fp16"} <= set(variants)
    assert "int8+pruned" not in variants  # an impossible order is not a variant


def test_no_two_variants_share_a_served_name():
    names = {}
    for variant in registry_variants():
        name = model_name("minilm", variant)
        assert name not in names, f"{variant} and {names[name]} would both be served as {name}"
        names[name] = variant


@pytest.mark.parametrize("variant", registry_variants())
def test_every_served_name_is_url_and_label_safe_and_maps_back(variant):
    for model in ("minilm", "tiny_text", LONGEST_MODEL):
        name = model_name(model, variant)
        text_ensemble = f"{name}_text"
        for served in (name, text_ensemble):
            assert SERVED_NAME.match(served) and len(served) <= MAX_NAME, served
            assert urllib.parse.quote(served) == served  # what tritonclient.http sends in the path
        assert split_model_name(name) == (model, variant)


def test_combinations_are_served_with_a_dash():
    assert model_name("minilm", "distilled+int8") == "minilm_distilled-int8"
    assert model_name("digits", "pruned+int8-static") == "digits_pruned-int8-static"
    assert split_model_name("digits_pruned-int8-static") == ("digits", "pruned+int8-static")


@pytest.mark.parametrize("name", ["minilm", "minilm_int4", "minilm_int8-pruned", "_int8"])
def test_a_name_the_builder_never_gives_is_refused(name):
    with pytest.raises(ConfigError, match="not a name the builder gives"):
        split_model_name(name)


@pytest.mark.parametrize("name", ["bad+name", "a" * (MAX_MODEL_NAME + 1), "-lead", "ünï"])
def test_a_spec_name_that_would_give_unsafe_model_names_is_refused(name):
    with pytest.raises(ConfigError, match="name"):
        parse_spec({"name": name, "factory": "x:y", "data": "x:y",
                    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
                    "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
                    "metric": {"output": "y"}}, where="test")


def test_the_repository_refuses_a_plus_name(tmp_path):
    with pytest.raises(RepositoryError, match="not a valid model name"):
        write_model(tmp_path / "repo", "minilm_distilled+int8", 'name: "x"\n')


def legacy_repository(tmp_path):
    repository = tmp_path / "repo"
    (repository / "minilm_pruned+int8" / "1").mkdir(parents=True)
    (repository / "minilm_pruned+int8" / "config.pbtxt").write_text('name: "minilm_pruned+int8"\n')
    return repository


def test_a_repository_with_an_old_plus_name_says_to_rebuild(tmp_path):
    repository = legacy_repository(tmp_path)
    with pytest.raises(RepositoryError, match=r"minilm_pruned\+int8") as info:
        check_no_legacy_names(repository)
    assert "builder build --model minilm --variant pruned+int8" in info.value.hint
    assert "minilm_pruned-int8" in info.value.hint


def test_rebuilding_removes_the_old_plus_folder(tmp_path):
    repository = legacy_repository(tmp_path)
    assert remove_legacy(repository, "minilm", "pruned+int8") == repository / "minilm_pruned+int8"
    assert not (repository / "minilm_pruned+int8").exists()
    check_no_legacy_names(repository)
    assert remove_legacy(repository, "minilm", "int8") is None
