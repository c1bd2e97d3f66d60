"""The build record's schema version: records written before the version field load through the one upgrading
reader (a real record from 2026-12-03 as the fixture), newer ones are refused in one line."""

import copy
import json
import pathlib
import shutil

import pytest

from builder.core.artifacts import read_record, read_records, update_entry, write_entry
from builder.core.errors import ArtifactsError
from builder.core.record import ENTRY_DEFAULTS, SCHEMA_VERSION, BuildEntry, entries, upgrade

FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "records" / "digits_2026-12-03.json"


def place(tmp_path, record: dict, model: str = "digits") -> pathlib.Path:
    (tmp_path / model).mkdir(parents=True, exist_ok=True)
    (tmp_path / model / "record.json").write_text(json.dumps(record))
    return tmp_path


def test_a_record_of_the_previous_release_loads_upgraded_with_every_value_kept(tmp_path):
    raw = json.loads(FIXTURE.read_text())
    assert "schema_version" not in raw  # the format before the version field
    shutil.copy(FIXTURE, place(tmp_path, {"variants": {}}) / "digits" / "record.json")
    record = read_record(tmp_path, "digits")
    assert record["schema_version"] == SCHEMA_VERSION
    for variant, old in raw["variants"].items():
        new = record["variants"][variant]
        assert {k: new[k] for k in old} == old  # nothing it had is changed
        assert set(ENTRY_DEFAULTS) <= set(new)
    typed = entries(record)
    assert typed["distilled+int8"].triton_model == "digits_distilled-int8"
    assert typed["int8"].accuracy_drop_points == raw["variants"]["int8"]["accuracy_drop_points"]
    assert typed["int8"].agreement_top1 == raw["variants"]["int8"]["agreement_with_fp32"]["top1"]
    assert not any(e.refused for e in typed.values())
    assert set(read_records(tmp_path)) == {e["triton_model"] for e in raw["variants"].values()}


def test_an_entry_from_before_served_names_gets_the_name_it_was_served_under(tmp_path):
    old = {"model": "minilm", "variants": {"pruned+int8": {"version_dir": "/r/minilm_pruned+int8/1"},
                                           "distilled": {"gates_failed": ["accuracy drop 1.9 points"]}}}
    place(tmp_path, old, "minilm")
    record = read_record(tmp_path, "minilm")
    assert record["variants"]["pruned+int8"]["triton_model"] == "minilm_pruned+int8"
    assert record["variants"]["distilled"]["triton_model"] is None  # refused: never served
    assert BuildEntry.of("distilled", record["variants"]["distilled"]).refused
    assert update_entry(tmp_path, "minilm_pruned+int8", "served_footprint", {"rss_mb": 1}) is not None
    on_disk = json.loads((tmp_path / "minilm" / "record.json").read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION  # the first write stamps it
    assert on_disk["variants"]["pruned+int8"]["served_footprint"] == {"rss_mb": 1}


def test_a_record_of_a_newer_kit_or_no_record_is_refused_in_one_line(tmp_path):
    place(tmp_path, {"schema_version": SCHEMA_VERSION + 1, "model": "digits", "variants": {}})
    with pytest.raises(ArtifactsError, match=f"schema version {SCHEMA_VERSION + 1}; this kit reads versions up to"):
        read_record(tmp_path, "digits")
    place(tmp_path, {"model": "digits", "runs": []})
    with pytest.raises(ArtifactsError, match="is not a build record"):
        read_record(tmp_path, "digits")


def test_upgrade_leaves_its_argument_as_it_was_and_a_new_record_is_current(tmp_path):
    raw = json.loads(FIXTURE.read_text())
    before = copy.deepcopy(raw)
    upgrade(raw)
    assert raw == before
    write_entry(tmp_path, "tiny", "fp32", {"triton_model": "tiny_fp32"})
    assert json.loads((tmp_path / "tiny" / "record.json").read_text())["schema_version"] == SCHEMA_VERSION


def test_the_typed_entry_carries_what_the_summary_and_the_report_read(tmp_path, capsys):
    """BuildEntry holds the figures that the build summary and the report print, from a record of the previous
    release; the build summary picks its columns by name from them."""
    from builder.commands.build import build_table, print_build_summary

    shutil.copy(FIXTURE, place(tmp_path, {"variants": {}}) / "digits" / "record.json")
    raw = json.loads(FIXTURE.read_text())["variants"]
    typed = entries(read_record(tmp_path, "digits"))
    int8 = typed["int8"]
    assert int8.accuracy == raw["int8"]["accuracy"] and int8.first_split == next(iter(raw["int8"]["accuracy"]))
    assert (int8.params, int8.onnx_bytes, int8.macs) == (raw["int8"]["params"], raw["int8"]["onnx_bytes"],
                                                         raw["int8"]["macs"])
    speedup = raw["int8"]["speedup_vs_fp32"]
    assert int8.relative_compute == pytest.approx(1 / (speedup["b1_t1"] * speedup["b32_t1"]) ** 0.5, abs=1e-4)
    assert typed["fp32"].relative_compute == 1.0 and typed["fp32"].agreement_top1 == 1.0
    header, body = build_table("digits", list(typed.values()))
    column = dict(zip(header, body[list(typed).index("int8")]))
    assert column["model"] == "digits_int8" and column["gate"] == "pass"
    assert column["params"] == f"{raw['int8']['params']:,}" and column["x b1"] == f"{speedup['b1_t1']:.2f}"
    print_build_summary("digits", list(typed.values()), [])
    assert any(line.startswith("digits_int8 ") for line in capsys.readouterr().out.splitlines())
