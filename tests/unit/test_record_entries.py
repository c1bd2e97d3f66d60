"""The build record's entries are found by their served name, a combined variant's included: `distilled+int8` is
recorded under that key and served as `digits_distilled-int8`, so the name's suffix is not the key."""

import json

from builder.core.artifacts import read_record, update_entry, write_entry


def test_a_combined_variant_is_updated_by_its_served_name(tmp_path):
    write_entry(tmp_path, "digits", "fp32", {"triton_model": "digits_fp32"})
    write_entry(tmp_path, "digits", "distilled+int8", {"triton_model": "digits_distilled-int8"})
    assert update_entry(tmp_path, "digits_distilled-int8", "served_footprint", {"rss": 1}) is not None
    variants = read_record(tmp_path, "digits")["variants"]
    assert variants["distilled+int8"]["served_footprint"] == {"rss": 1}
    assert "served_footprint" not in variants["fp32"]


def test_an_entry_without_a_served_name_is_found_by_its_key_and_an_unknown_name_by_none(tmp_path):
    (tmp_path / "digits").mkdir()  # a record written before entries named themselves (schema version 1)
    (tmp_path / "digits" / "record.json").write_text(json.dumps({"model": "digits", "variants": {"int8": {}}}))
    assert update_entry(tmp_path, "digits_int8", "k", 1) is not None
    assert read_record(tmp_path, "digits")["variants"]["int8"]["k"] == 1
    assert update_entry(tmp_path, "digits_pruned", "k", 1) is None
    assert update_entry(tmp_path, "minilm_int8", "k", 1) is None
