"""loadtests/results.py owns results.json: a file the previous release wrote (no schema_version) still reads and
reports the same recommendation; what it writes reads back equal; a bad file is one line naming it."""

import json

import pytest

from loadtests.report import build_report
from loadtests.results import SCHEMA_VERSION, ResultsError, RunResults, read_results, write_results
from tests.conftest import FIXTURES

# `builder load` of all-minilm-l6-v2 fp32 and int8 (a sentence-transformers directory), 2026-12-03, schema 1
OLD = FIXTURES / "results" / "embedding_2026-12-03.json"


def test_a_file_of_the_previous_release_reads_and_reports_the_same():
    raw = json.loads(OLD.read_text())
    assert "schema_version" not in raw
    results = read_results(OLD)
    assert results.schema_version == SCHEMA_VERSION and results.complete
    assert results.models == ["all-minilm-l6-v2_fp32", "all-minilm-l6-v2_int8"] and len(results.steps) == 4
    report = build_report(results, {}, slo_p99_ms=50, max_accuracy_drop=1.0)  # records: the run's own copy
    assert report["recommendations"]["all-minilm-l6-v2"]["model"] == "all-minilm-l6-v2_int8"
    assert build_report(raw, {}, 50, 1.0)["recommendations"] == report["recommendations"]  # a dict, as before


def test_written_results_read_back_equal_and_the_csv_has_a_row_per_step(tmp_path):
    results = read_results(OLD)
    write_results(results, tmp_path)
    again = read_results(tmp_path)  # the run folder, as the commands take it
    assert again == results and json.loads((tmp_path / "results.json").read_text())["schema_version"] == 2
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + len(results.steps) and lines[1].startswith("all-minilm-l6-v2_fp32,1,")


def test_a_newer_writers_extra_field_is_left_out_not_failed_on():
    raw = json.loads(OLD.read_text()) | {"schema_version": 3, "something_new": [1, 2]}
    assert RunResults.from_dict(raw).steps == read_results(OLD).steps


@pytest.mark.parametrize("content,message", [(None, "does not exist"), ("{not json", "cannot read"),
                                             ('{"steps": 3}', "not a load-test results file")])
def test_a_bad_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ResultsError) as info:
        read_results(tmp_path)
    assert str(path) in str(info.value) and message in str(info.value) and "\n" not in str(info.value)
