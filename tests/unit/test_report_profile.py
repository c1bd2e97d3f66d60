"""The report's operator-profile figure and MACs-by-length table, read from build records (no server, no load)."""

from loadtests.report import build_report, macs_length_table, profiled_rows, write_report


def profile(matmul, ms):
    return {"kernel_ms_per_run": ms, "runs": 3, "threads": 1,
            "by_category": {"matmul/gemm/conv": matmul, "element-wise": 100.0 - matmul},
            "by_op_type": {"MatMul": matmul, "Add": 100.0 - matmul}}


MACS = {"axes": ["seq"], "lengths": [16, 64, 256],
        "per_length": [{"length": 16, "linear": 170_000_000, "attention": 1_200_000, "other": 0, "attention_percent": 0.69},
                       {"length": 256, "linear": 2_718_000_000, "attention": 302_000_000, "other": 0,
                        "attention_percent": 10.0}],
        "crossover_length": 2305, "crossover_extrapolated": True,
        "crossover_text": "Attention MACs reach the linear layers' MACs at seq length 2,305 (extrapolated)."}

RECORDS = {
    "m_fp32": {"source": "m", "variant": "fp32", "triton_model": "m_fp32", "accuracy": {"test": 0.9},
               "accuracy_drop_points": 0.0, "operator_profile": {"b1": profile(80.0, 8.5), "b32": profile(85.0, 228.0)},
               "macs_by_length": MACS},
    "m_int8": {"source": "m", "variant": "int8", "triton_model": "m_int8", "accuracy": {"test": 0.89},
               "accuracy_drop_points": 1.0, "operator_profile": {"b1": profile(60.0, 3.8), "b32": profile(70.0, 89.0)}},
    "m_old": {"source": "m", "variant": "old", "triton_model": "m_old", "accuracy": {"test": 0.9},
              "accuracy_drop_points": 0.0},  # built before profiling existed
}

RESULTS = {
    "models": ["m_fp32", "m_int8", "m_old"], "steps": [],
    "machine": {"cpu": "test CPU", "cores": 2, "host": "test", "python": "3.11"},
    "settings": {"protocol": "http", "mode": "closed", "users": [1], "duration_s": 1, "batch_size": 1,
                 "split": "test"},
    "load_generator": "one Locust process", "started_at": "t0", "finished_at": "t1", "complete": True,
}


def report():
    return build_report(RESULTS, RECORDS, slo_p99_ms=50, max_accuracy_drop=1.0)


def test_operator_profile_rows_skip_variants_without_a_profile():
    rows = profiled_rows(report(), "m", "b32")
    assert [variant for variant, _ in rows] == ["fp32", "int8"]
    assert rows[1][1]["kernel_ms_per_run"] == 89.0


def test_macs_table_comes_from_the_fp32_record_with_its_crossover():
    header, body, text = macs_length_table(report(), "m")
    assert header[0] == "length (seq)" and body[0][:3] == ["16", "170.0", "1.2"] and body[1][-1] == "10.0"
    assert "m_fp32" in text and "2,305" in text


def test_report_embeds_the_operator_figure_and_the_macs_table(tmp_path):
    md, page = write_report(report(), tmp_path)
    text = md.read_text()
    assert (tmp_path / "plots" / "m_operators.png").stat().st_size > 0
    assert "plots/m_operators.png" in text and "operator_profile" in text
    assert "| 256 | 2,718.0 | 302.0 | 0.0 | 10.0 |" in text and "2,305" in text
    assert "MACs per example by layer type" in page.read_text()


def test_a_model_without_profiles_or_macs_still_gets_a_report(tmp_path):
    bare = {m: {k: v for k, v in e.items() if k not in ("operator_profile", "macs_by_length")}
            for m, e in RECORDS.items()}
    rep = build_report(RESULTS, bare, slo_p99_ms=50, max_accuracy_drop=1.0)
    assert profiled_rows(rep, "m", "b1") == [] and macs_length_table(rep, "m") is None
    md, _ = write_report(rep, tmp_path)
    assert (tmp_path / "plots" / "m_operators.png").is_file()
    assert "MACs per example by layer type" not in md.read_text()
