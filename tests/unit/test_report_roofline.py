"""The report's "% of peak" column and CPU ISA line, read from hand-made build records (no server, no load)."""

from loadtests.report import build_report, summary_table, write_report

ISA = {"model": "Test EPYC 9000", "flags": ["avx2", "fma", "avx512f", "avx512_vnni"], "summary": "AVX-512 VNNI"}


def roofline(precision, b1, b32, peak):
    return {"precision": precision, "peak_gflops": {"1": peak, "2": 2 * peak},
            "by_latency": {"b1_t1": {"gflops": b1 * peak, "fraction_of_peak": b1},
                           "b32_t1": {"gflops": b32 * peak, "fraction_of_peak": b32}}}


RECORDS = {
    "m_fp32": {"source": "m", "variant": "fp32", "triton_model": "m_fp32", "accuracy": {"test": 0.9},
               "accuracy_drop_points": 0.0, "cpu_isa": ISA, "roofline": roofline("fp32", 0.2081, 0.7512, 245.0)},
    "m_int8": {"source": "m", "variant": "int8", "triton_model": "m_int8", "accuracy": {"test": 0.89},
               "accuracy_drop_points": 1.0, "cpu_isa": ISA, "roofline": roofline("int8", 0.12, 0.3456, 900.0)},
    "m_old": {"source": "m", "variant": "old", "triton_model": "m_old", "accuracy": {"test": 0.9},
              "accuracy_drop_points": 0.0},  # built before builder/pipeline/roofline.py existed
}

RESULTS = {
    "models": ["m_fp32", "m_int8", "m_old"], "steps": [],
    "machine": {"cpu": "test CPU", "cores": 2, "host": "test", "python": "3.11"},
    "settings": {"protocol": "http", "mode": "closed", "users": [1], "duration_s": 1, "batch_size": 1,
                 "split": "test"},
    "load_generator": "one Locust process", "started_at": "t0", "finished_at": "t1", "complete": True,
}

COLUMN = "% of peak b1 / b32"


def column(records):
    header, body = summary_table(build_report(RESULTS, records, slo_p99_ms=50, max_accuracy_drop=1.0), "m")
    return {row[0]: row[header.index(COLUMN)] for row in body}


def test_the_column_shows_each_variants_fraction_of_peak_at_batch_1_and_32():
    assert column(RECORDS) == {"fp32": "20.8 / 75.1", "int8": "12.0 / 34.6", "old": "-"}


def test_a_record_with_only_one_batch_measured_shows_a_dash_for_the_other():
    partial = {**RECORDS["m_int8"], "roofline": {**RECORDS["m_int8"]["roofline"],
                                                 "by_latency": {"b1_t1": {"fraction_of_peak": 0.5}}}}
    assert column({**RECORDS, "m_int8": partial})["int8"] == "50.0 / -"


def test_both_reports_carry_the_column_and_the_isa_once_per_table(tmp_path):
    md, page = write_report(build_report(RESULTS, RECORDS, slo_p99_ms=50, max_accuracy_drop=1.0), tmp_path)
    text, html = md.read_text(), page.read_text()
    line = ("CPU ISA of the builds, where % of peak was measured: AVX-512 VNNI (Test EPYC 9000; 1-thread GEMM "
            "peak fp32 245 GFLOP/s, int8 900 GOP/s).")
    assert text.count(line) == 1 and html.count(line) == 1
    assert "| 20.8 / 75.1 |" in text and "<td>12.0 / 34.6</td>" in html and f"<th>{COLUMN}</th>" in html


def test_records_without_roofline_say_the_isa_is_not_known(tmp_path):
    old = {m: {k: v for k, v in e.items() if k not in ("roofline", "cpu_isa")} for m, e in RECORDS.items()}
    assert set(column(old).values()) == {"-"}
    md, _ = write_report(build_report(RESULTS, old, slo_p99_ms=50, max_accuracy_drop=1.0), tmp_path)
    assert "CPU ISA of the builds: not recorded" in md.read_text()
