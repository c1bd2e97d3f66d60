"""`builder build` as a user runs it: the int8 accuracy search's tuning table and the roofline columns."""

import pytest

from tests.conftest import FIXTURES, run_cli

pytestmark = pytest.mark.e2e


def test_build_prints_the_int8_tuning_table_and_the_fraction_of_peak(tmp_path):
    result = run_cli("builder", "build", "--config", FIXTURES / "wide_range" / "wide_range.yaml", "--variant",
                     "fp32,int8", "--repository", tmp_path / "r", "--artifacts", tmp_path / "a", "--force")
    assert result.returncode == 0, result.stderr
    assert "widerange_int8: int8 accuracy search on `validation`" in result.stdout
    table = result.stdout.split("int8 accuracy search")[-1]
    assert "0/4" in table and "+ node_linear_3" in table  # trial 0, then the one harmful layer back in float
    assert "%pk1" in result.stdout and "CPU " in result.stdout
    assert (tmp_path / "a" / "machine_peak.json").is_file()
