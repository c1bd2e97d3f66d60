"""Model footprint plumbing that needs no server: memory sizes, how many instances fit, the record writer, the
footprint table, finding stub processes in /proc."""

import json
import os

import pytest

from builder.serving.footprint import FootprintError, find_stubs, fits, parse_size, process_memory, write_footprint
from loadtests.commands import main
from loadtests.report import footprint_rows


@pytest.mark.parametrize("text, size", [
    ("16GB", 16 * 1000 ** 3), ("16G", 16 * 1000 ** 3), ("16gb", 16 * 1000 ** 3), ("2G", 2 * 1000 ** 3),
    ("512MiB", 512 * 1024 ** 2), ("512Mi", 512 * 1024 ** 2), ("1.5GiB", 3 * 1024 ** 3 // 2), ("64 KB", 64_000),
    ("1048576", 1048576), ("100B", 100), ("1TiB", 1024 ** 4), (" 8 MB ", 8_000_000)])
def test_memory_sizes_read_decimal_and_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["16 gigs", "GB", "", "-1GB", "0", "1.2.3G", "16XB", "sixteen"])
def test_a_bad_memory_size_says_what_to_write(text):
    with pytest.raises(FootprintError) as error:
        parse_size(text)
    assert repr(text) in str(error.value) or "positive" in str(error.value)
    assert "16GB" in error.value.hint


@pytest.mark.parametrize("budget, per_instance", [(16 * 10 ** 9, 1_400_000_000), (10 ** 9, 76_000_000),
                                                  (100, 101), (100, 100), (2 ** 34, 168_140_800)])
def test_fits_is_whole_instances(budget, per_instance):
    assert fits(budget, per_instance) == budget // per_instance
    assert fits(budget, per_instance) * per_instance <= budget < (fits(budget, per_instance) + 1) * per_instance


def test_fits_refuses_a_non_positive_instance():
    with pytest.raises(FootprintError):
        fits(10 ** 9, 0)


def test_the_cli_rejects_a_bad_budget_before_starting_anything(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["footprint", "--memory-budget", "lots"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--memory-budget" in err and "not a memory size: 'lots'" in err


def record(tmp_path, model="digits", variants=("fp32", "int8")):
    folder = tmp_path / model
    folder.mkdir()
    data = {"model": model, "variants": {v: {"triton_model": f"{model}_{v}", "accuracy": {"test": 0.9}}
                                         for v in variants}}
    (folder / "record.json").write_text(json.dumps(data))
    return folder / "record.json"


def test_the_footprint_goes_into_its_variant_only(tmp_path):
    path = record(tmp_path)
    other = record(tmp_path, "minilm", ("fp32",))
    other_before = other.read_text()
    footprint = {"load_seconds": 2.5, "rss_bytes_per_instance": 76_000_000}
    assert write_footprint(tmp_path, "digits_int8", footprint) == path
    written = json.loads(path.read_text())["variants"]
    assert written["int8"]["served_footprint"] == footprint
    assert written["int8"]["accuracy"] == {"test": 0.9}  # the rest of the entry is kept
    assert "served_footprint" not in written["fp32"]
    assert other.read_text() == other_before
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["record.json", "record.json"]  # no leftovers


def test_a_model_without_a_record_is_an_error(tmp_path):
    record(tmp_path)
    with pytest.raises(FootprintError, match="no build record for model `digits_svd`"):
        write_footprint(tmp_path, "digits_svd", {})


def test_the_table_shows_what_fits_in_the_budget():
    footprints = {"minilm_fp32": {"file_bytes": 90_862_394, "load_seconds": 2.757, "instances": 1,
                                  "rss_bytes_per_instance": 168_140_800, "peak_rss_bytes": 207_269_888},
                  "remote_fp32": {"file_bytes": None, "load_seconds": 1.0, "instances": 0,
                                  "rss_bytes_per_instance": None, "peak_rss_bytes": None}}
    header, body = footprint_rows(footprints, "16GB")
    assert header[-1] == "fit in 16GB"
    assert body[0] == ["minilm_fp32", "90.9", "2.76", "1", "168", "207", str(16 * 10 ** 9 // 168_140_800)]
    assert body[1][-1] == "-" and body[1][1] == "-"  # not measured: no made-up number


def test_no_stub_is_found_for_a_model_nobody_serves():
    assert find_stubs("no_such_model_fp32") == []


def test_process_memory_reads_proc_status():
    memory = process_memory(os.getpid())
    assert 0 < memory["rss"] <= memory["peak_rss"]
    assert memory["anon_rss"] + memory["file_rss"] <= memory["rss"]
