"""Variants the build refused appear in the report, the plot data and the console summary with their reason, and
the recommendation names the next faster of them: on hand-made build records and results (no server, no load)."""

import pytest

from loadtests.report import build_report, summary_table, write_report
from loadtests.summary import print_summary


def entry(variant, drop, se, speedup, top1, gates_failed=(), served=True):
    return {"source": "m", "variant": variant, "triton_model": f"m_{variant.replace('+', '-')}",
            "accuracy": {"test": 0.82 - drop / 100}, "accuracy_drop_points": drop, "accuracy_drop_se_points": se,
            "agreement_with_fp32": {"top1": top1}, "onnx_bytes": 1_000_000,
            "speedup_vs_fp32": {"b1_t1": speedup, "b32_t1": speedup}, "gates_failed": list(gates_failed),
            "version_dir": f"/repo/m_{variant}/1" if served else None}


RECORDS = {e["triton_model"]: e for e in (
    entry("fp32", 0.0, 0.0, 1.0, 1.0),
    entry("int8", -0.16, 0.28, 2.09, 0.980),
    entry("pruned+int8", 5.61, 0.80, 2.58, 0.833, ["accuracy drop 5.61 ± 0.80 points > 1.0"], served=False),
    entry("distilled+int8", 1.96, 0.68, 4.12, 0.882, ["accuracy drop 1.96 ± 0.68 points > 1.0"], served=False),
    # a record written before the gate stated the standard error: the report adds it
    entry("distilled", 1.88, 0.68, 2.15, 0.883, ["accuracy drop 1.88 points > 1.0"], served=False),
    entry("fp16", 0.0, 0.0, 0.83, 1.0, ["slower than fp32 (0.83x, geometric mean of batch 1 and 32)"],
          served=False),
)}


def step(model, throughput):
    return {"model": model, "users": 4, "throughput": throughput, "requests_per_s": throughput, "p50_ms": 5.0,
            "p90_ms": 8.0, "p99_ms": 10.0, "failures": 0, "requests": 1000, "raw": {"locust_stats": "x.json"},
            "interval": {"throughput": {"low": throughput * 0.98, "high": throughput * 1.02, "n": 3},
                         "p99_ms": {"low": 9.0, "high": 11.0, "n": 3}}}


RESULTS = {
    "models": ["m_fp32", "m_int8"], "steps": [step("m_fp32", 100.0), step("m_int8", 155.0)],
    "machine": {"cpu": "test CPU", "cores": 2, "host": "test", "python": "3.11"},
    "settings": {"protocol": "grpc", "mode": "closed", "users": [4], "duration_s": 5, "batch_size": 1,
                 "split": "test"},
    "load_generator": "one Locust process", "started_at": "t0", "finished_at": "t1", "complete": True,
}


def report(records=RECORDS, results=RESULTS):
    return build_report(results, records, slo_p99_ms=50, max_accuracy_drop=1.0)


def verdicts(built):
    header, body = summary_table(built, "m")
    return {row[0]: row[header.index("verdict")] for row in body}


def test_the_table_lists_every_refused_variant_with_its_reason():
    assert verdicts(report()) == {
        "fp32": "", "int8": "chosen",
        "distilled": "refused: accuracy drop 1.88 ± 0.68 points > 1.0",
        "distilled+int8": "refused: accuracy drop 1.96 ± 0.68 points > 1.0",
        "fp16": "refused: slower than fp32 (0.83x, geometric mean of batch 1 and 32)",
        "pruned+int8": "refused: accuracy drop 5.61 ± 0.80 points > 1.0"}


def test_refused_variants_come_from_the_runs_copy_without_the_artifacts():
    refused = {m: e for m, e in RECORDS.items() if e["version_dir"] is None}
    served = {m: e for m, e in RECORDS.items() if e["version_dir"]}
    from_copy = verdicts(report({}, RESULTS | {"records": served, "refused": refused}))
    assert from_copy == verdicts(report()) and from_copy["fp16"].startswith("refused: slower than fp32")


def test_the_plot_marks_refused_variants():
    from loadtests.report import accuracy_speed_points

    points = {p["variant"]: p for p in accuracy_speed_points(report(), "m")}
    assert points["distilled+int8"]["refused"] == "accuracy drop 1.96 ± 0.68 points > 1.0"
    assert points["distilled+int8"]["throughput"] is None and round(points["distilled+int8"]["speedup"], 2) == 4.12
    assert points["int8"]["refused"] == "" and points["int8"]["throughput"] == 155.0


def test_the_sentence_names_the_next_faster_refused_variant():
    text = report()["recommendations"]["m"]["text"]
    assert text.startswith("Ship `m_int8`")
    # distilled (2.15x) is within the build's 10 % noise of int8's 2.09x: not "faster"; pruned+int8 (2.58x) is next
    assert ("The next faster variant was refused: `m_pruned-int8` would run 2.6x fp32's in-process speed "
            "(`m_int8`: 2.1x), but accuracy drop 5.61 ± 0.80 points > 1.0.") in text


def test_no_sentence_when_no_refused_variant_is_faster():
    slow = {m: e for m, e in RECORDS.items() if m not in ("m_pruned-int8", "m_distilled-int8")}
    assert "refused" not in report(slow)["recommendations"]["m"]["text"]


def test_html_markdown_and_console_list_refused_variants(tmp_path, capsys):
    built = report()
    md, page = write_report(built, tmp_path)
    reason = "refused: accuracy drop 1.96 ± 0.68 points &gt; 1.0"
    assert "<td>distilled+int8</td>" in page.read_text() and reason in page.read_text()
    assert "refused: accuracy drop 1.96 ± 0.68 points > 1.0" in md.read_text()
    print_summary(built)
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.lstrip().startswith("distilled+int8"))
    assert row.endswith("refused: accuracy drop 1.96 ± 0.68 points > 1.0") and "0.24" in row  # compute vs fp32
    assert any("The next faster variant was refused: `m_pruned-int8`" in line for line in lines)


def test_the_console_table_picks_columns_by_name(capsys):
    from builder.core.console import print_table

    print_table(["a", "b", "verdict"], [["1", "22", "refused: slower"]], ["verdict", "a"])
    assert capsys.readouterr().out.splitlines() == ["        verdict  a", "refused: slower  1"]
    print_table(["a", "b", "verdict"], [["1", "22", "refused: slower"]], ["a", "verdict"], text_last=True)
    assert capsys.readouterr().out.splitlines() == ["a  verdict", "1  refused: slower"]
    print_table(["model", "x"], [["a_fp32", "1.5"], ["a_distilled-int8", "12.25"]], left=("model",))
    assert capsys.readouterr().out.splitlines() == ["model                 x", "a_fp32              1.5",
                                                    "a_distilled-int8  12.25"]
    with pytest.raises(KeyError, match="no column 'c'"):
        print_table(["a"], [["1"]], ["c"])
