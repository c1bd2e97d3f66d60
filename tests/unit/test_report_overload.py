"""The open-loop overload figures (overload.json) in the report: a table and a plot per source model, with the
queue policy on and off; on hand-made results (no server, no load)."""

import pytest

from loadtests.report import build_report, overload_runs, overload_table, write_report

from .test_report_refused import RECORDS, RESULTS


def step(multiple, goodput, p99, rejected):
    return {"multiple": multiple, "offered_per_s": 100 * multiple, "sent_per_s": 100 * multiple,
            "goodput_per_s": goodput, "p50_ms": 4.0, "p99_ms": p99, "rejected": rejected, "rejected_p99_ms":
            2.5 if rejected else None, "deadline": 0, "errors": 0, "memory_start_mb": 200.0, "memory_peak_mb": 210.0}


OVERLOAD = {"settings": {"multiples": [1.0, 3.0], "seconds": 10.0, "slo_ms": 50.0, "users": 8, "seed": 0},
            "cpu": {"model": "test CPU", "summary": "AVX2"},
            "runs": [{"model": "m_int8", "queue_policy": False, "closed_loop_max_per_s": 100.0, "recovery_s": 9.5,
                      "steps": [step(1.0, 98, 30.0, 0), step(3.0, 1, 4100.0, 0)]},
                     {"model": "m_int8", "queue_policy": True, "closed_loop_max_per_s": 100.0, "recovery_s": 0.03,
                      "steps": [step(1.0, 97, 31.0, 0), step(3.0, 80, 45.0, 190)]},
                     {"model": "other_fp32", "queue_policy": True, "closed_loop_max_per_s": 10.0, "recovery_s": 0.1,
                      "steps": [step(1.0, 9, 20.0, 0)]}]}


@pytest.fixture
def report():
    return build_report(RESULTS, RECORDS, slo_p99_ms=50, max_accuracy_drop=1.0, overload=OVERLOAD)


def test_each_source_gets_its_own_runs_policy_on_first(report):
    assert [(r["model"], r["queue_policy"]) for r in overload_runs(report, "m")] == [("m_int8", True),
                                                                                    ("m_int8", False)]
    header, body = overload_table(report, "m")
    rows = {(row[1], row[2]): dict(zip(header, row)) for row in body}
    assert rows[("on", "3")]["goodput/s"] == "80" and rows[("on", "3")]["rejected"] == "190"
    assert rows[("off", "3")]["p99 ms"] == "4,100.0" and rows[("off", "3")]["recovery s"] == "9.50"


def test_the_report_shows_the_table_and_the_plot_and_none_without_a_run(report, tmp_path):
    md, page = write_report(report, tmp_path)
    text = md.read_text()
    assert "### m: past capacity (open loop)" in text and "plots/m_overload.png" in text
    assert (tmp_path / "plots" / "m_overload.png").stat().st_size > 10_000
    assert "past capacity (open loop)" in page.read_text()
    plain = build_report(RESULTS, RECORDS, slo_p99_ms=50, max_accuracy_drop=1.0)
    md, _ = write_report(plain, tmp_path / "plain")
    assert "past capacity" not in md.read_text() and not (tmp_path / "plain" / "plots" / "m_overload.png").exists()
