"""The load-test plumbing that needs no server: the recommendation, the Pareto front, Triton's metrics arithmetic,
Locust's stats, the tuning grid, the CLI's argument parsing."""

import pytest

from loadtests import metrics
from loadtests.commands import duration, users_list
from loadtests.report import pareto, recommend, variant_rows
from loadtests.run import locust_figures
from loadtests.tune import best_point, grid


def step(model, users, throughput, p99, failures=0, requests=1000):
    return {"model": model, "users": users, "throughput": throughput, "p99_ms": p99, "failures": failures,
            "requests": requests, "p50_ms": p99 / 2}


RECORDS = {
    "m_fp32": {"source": "m", "variant": "fp32", "accuracy": {"test": 0.90}, "accuracy_drop_points": 0.0},
    "m_int8": {"source": "m", "variant": "int8", "accuracy": {"test": 0.895}, "accuracy_drop_points": 0.5},
    "m_svd": {"source": "m", "variant": "svd", "accuracy": {"test": 0.85}, "accuracy_drop_points": 5.0},
}
STEPS = [step("m_fp32", 1, 100, 12), step("m_fp32", 8, 300, 45), step("m_int8", 1, 150, 8),
         step("m_int8", 8, 420, 60), step("m_int8", 4, 380, 30), step("m_svd", 8, 900, 20)]


def rows_for(steps):
    return variant_rows({"models": sorted({s["model"] for s in steps}), "steps": steps}, RECORDS)


def test_recommendation_is_the_fastest_step_within_both_budgets():
    choice = recommend(rows_for(STEPS), STEPS, slo_p99_ms=50, max_accuracy_drop=1.0)
    # svd is fastest but too inaccurate; int8 at 8 users breaks the SLO; int8 at 4 users wins over fp32 at 8
    assert (choice["model"], choice["users"], choice["throughput"]) == ("m_int8", 4, 380)
    assert "m_int8" in choice["text"] and "380.0" in choice["text"]


def test_recommendation_says_which_constraint_binds():
    rows = rows_for(STEPS)
    latency = recommend(rows, STEPS, slo_p99_ms=5, max_accuracy_drop=1.0)
    assert latency["model"] is None and "latency constraint binds" in latency["text"] and "8.0 ms" in latency["text"]
    accuracy = recommend(rows, STEPS, slo_p99_ms=50, max_accuracy_drop=0.1)
    assert accuracy["model"] == "m_fp32"  # fp32 never loses accuracy against itself
    accuracy = recommend(rows, [s for s in STEPS if s["model"] != "m_fp32"], slo_p99_ms=50, max_accuracy_drop=0.1)
    assert accuracy["model"] is None and "accuracy constraint binds" in accuracy["text"]
    both = recommend(rows, [step("m_fp32", 1, 100, 80), step("m_svd", 1, 900, 20)], slo_p99_ms=50,
                     max_accuracy_drop=1.0)
    assert both["model"] is None and "none meets both" in both["text"]


def test_a_step_with_failures_is_never_recommended():
    steps = [step("m_int8", 4, 500, 10, failures=3), step("m_fp32", 4, 200, 10)]
    assert recommend(rows_for(steps), steps, 50, 1.0)["model"] == "m_fp32"


def test_variant_rows_take_the_best_step_and_count_every_failure():
    steps = STEPS + [step("m_fp32", 16, 250, 90, failures=4)]
    row = next(r for r in rows_for(steps) if r.variant == "fp32")
    assert row.best["users"] == 8 and row.failures == 4 and row.accuracy == 0.90


def test_pareto_front():
    points = [(100, 90.0), (300, 89.5), (200, 89.0), (900, 85.0), (300, 89.0)]
    assert pareto(points) == [0, 1, 3]


SCRAPE = """# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="m",version="1"} 10
nv_inference_request_success{model="m",version="2"} 5
nv_inference_request_success{model="other",version="1"} 99
nv_inference_request_failure{model="m",reason="BACKEND",version="2"} 1
nv_inference_count{model="m",version="2"} 20
nv_inference_exec_count{model="m",version="2"} 8
nv_inference_request_duration_us{model="m",version="2"} 30000
nv_inference_queue_duration_us{model="m",version="2"} 10000
nv_inference_compute_infer_duration_us{model="m",version="2"} 15000
nv_cpu_utilization 0.5
"""


def test_metrics_are_summed_over_versions_and_turned_into_per_request_figures():
    before = metrics.model_counters(metrics.parse(SCRAPE), "m")
    assert before["request_success"] == 15 and before["request_failure"] == 1
    after = dict(before, request_success=25, count=40, exec_count=13, request_duration_us=50000,
                 queue_duration_us=15000, compute_infer_duration_us=25000)
    figures = metrics.step_figures(before, after)
    assert figures["server_requests"] == 10 and figures["realised_batch"] == 4.0
    assert figures["request_ms"] == 2.0 and figures["queue_ms"] == 0.5 and figures["compute_infer_ms"] == 1.0


def test_locust_figures_use_locusts_own_counts_and_percentiles():
    entry = {"name": "m", "num_requests": 100, "num_failures": 2, "total_response_time": 250.0,
             "start_time": 1000.0, "last_request_timestamp": 1010.0,
             "response_times": {"1.5": 50, "2.0": 40, "9.0": 9, "30.0": 1}}
    figures = locust_figures([{"name": "Aggregated"}, entry], "m", batch_size=4)
    assert figures["requests"] == 100 and figures["requests_per_s"] == 10.0
    assert figures["throughput"] == 98 * 4 / 10  # successful examples per second
    # Locust's rule: the smallest bucket that at most (1 - p) of the requests exceed
    assert (figures["p50_ms"], figures["p90_ms"], figures["p99_ms"]) == (2.0, 9.0, 30.0)
    assert locust_figures([], "m", 1)["requests"] == 0


def test_tuning_grid_never_oversubscribes_the_cores():
    points = grid(cores=4, max_batch=64)
    assert points and all(p["instances"] * p["threads"] <= 4 for p in points)
    assert {(p["instances"], p["threads"]) for p in points} >= {(1, 4), (2, 2), (4, 1), (1, 1)}
    assert points[0]["instances"] * points[0]["threads"] == 4  # fullest use of the cores first
    assert {p["max_batch_size"] for p in grid(cores=2, max_batch=4)} == {4}


def test_best_tuning_point_respects_the_slo():
    points = [{"throughput": 500, "p99_ms": 80, "failures": 0, "requests": 10},
              {"throughput": 300, "p99_ms": 20, "failures": 0, "requests": 10},
              {"throughput": 400, "p99_ms": 20, "failures": 1, "requests": 10}]
    assert best_point(points, 50)["throughput"] == 300
    assert best_point(points, 10) is None


def test_cli_durations_and_users():
    assert duration("30s") == 30 and duration("2m") == 120 and duration("45") == 45
    assert users_list("1,4,16") == (1, 4, 16)
    import argparse

    for bad in ("0", "a,b", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            users_list(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        duration("soon")
