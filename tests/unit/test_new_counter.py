"""A new Triton duration counter in the load-test report is one line of loadtests/metrics.py TIMES and its test
(issue: a house a newcomer can extend): the step's server figures, the report's steps table and its
queue-vs-compute plot take it from there."""

from loadtests import metrics, report

SCRAPE = """nv_inference_request_success{model="m",version="1"} %(n)d
nv_inference_request_failure{model="m",reason="REJECTED",version="1"} 0
nv_inference_count{model="m",version="1"} %(n)d
nv_inference_exec_count{model="m",version="1"} %(n)d
nv_inference_request_duration_us{model="m",version="1"} %(t)d
nv_inference_queue_duration_us{model="m",version="1"} %(t)d
nv_inference_compute_input_duration_us{model="m",version="1"} %(t)d
nv_inference_compute_infer_duration_us{model="m",version="1"} %(t)d
nv_inference_compute_output_duration_us{model="m",version="1"} %(t)d
nv_inference_cache_lookup_duration_us{model="m",version="1"} %(t)d
"""


def test_one_line_in_metrics_puts_a_new_counter_in_the_figures_and_the_report(monkeypatch):
    cache = metrics.ServerTime("cache_ms", "cache_lookup_duration_us", "cache", False, True)
    monkeypatch.setattr(metrics, "TIMES", (*metrics.TIMES, cache))  # the one line
    before = metrics.model_counters(metrics.parse(SCRAPE % {"n": 10, "t": 1000}), "m")
    after = metrics.model_counters(metrics.parse(SCRAPE % {"n": 20, "t": 31000}), "m")
    figures = metrics.step_figures(before, after)
    assert figures["cache_ms"] == 3.0 and figures["queue_ms"] == 3.0  # 30 ms over 10 requests each
    step = {"model": "m", "users": 1, "requests": 10, "failures": 0, "requests_per_s": 5.0, "throughput": 5.0,
            "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "server": figures, "raw": {"locust_stats": "m_u1_stats.csv"}}
    header, body = report.steps_table({"results": report.as_results({"models": ["m"], "steps": [step]})})
    assert header[10:12] == ["queue ms", "infer ms"] and header[12] == "cache ms"
    assert body[0][header.index("cache ms")] == "3.00"


def test_the_report_columns_are_the_declared_ones():
    header, _ = report.steps_table({"results": report.as_results({"models": [], "steps": []})})
    assert [h for h in header if h.endswith(" ms") and h.split()[0] in {t.label for t in metrics.TIMES}] == \
        [f"{t.label} ms" for t in metrics.TIMES if t.in_steps_table] == ["queue ms", "infer ms"]
