"""The open-loop overload benchmark's arithmetic: Poisson arrivals, a step's figures, the targets' verdicts."""

import numpy as np

from loadtests.overload import arrival_times, summarise, verdicts


def test_poisson_arrivals_come_at_the_rate_asked_and_are_seeded():
    times = arrival_times(200.0, 10.0, np.random.default_rng(0))
    assert 1800 < len(times) < 2200 and np.all(np.diff(times) > 0) and times[-1] < 10.0
    gaps = np.diff(times)
    assert abs(gaps.std() / gaps.mean() - 1) < 0.1  # exponential gaps: their spread equals their mean
    assert np.array_equal(times, arrival_times(200.0, 10.0, np.random.default_rng(0)))


def test_a_step_counts_goodput_within_the_slo_and_each_outcome_apart():
    outcomes = [("ok", 10.0)] * 6 + [("ok", 80.0)] * 2 + [("rejected", 2.0)] * 3 + [("deadline", 500.0), ("error", 1.0)]
    step = summarise(outcomes, seconds=2.0, slo_ms=50.0, sent=13)
    assert step["goodput_per_s"] == 3.0 and step["answered"] == 8 and step["sent_per_s"] == 6.5
    assert (step["rejected"], step["deadline"], step["errors"]) == (3, 1, 1)
    assert step["p50_ms"] == 10.0 and step["rejected_p99_ms"] == 2.0


def test_the_verdicts_compare_the_top_step_with_the_1x_step():
    def step(multiple, goodput, p99, rejected_p99, start, peak):
        return {"multiple": multiple, "goodput_per_s": goodput, "p99_ms": p99, "rejected_p99_ms": rejected_p99,
                "memory_start_mb": start, "memory_peak_mb": peak}

    run = {"steps": [step(1.0, 100.0, 20.0, None, 500.0, 510.0), step(3.0, 85.0, 45.0, 3.0, 510.0, 530.0)],
           "recovery_s": 0.4}
    assert verdicts(run, slo_ms=50.0) == {"goodput_vs_1x": 0.85, "memory_growth": 0.039, "p99_within_slo": True,
                                          "rejections_under_10ms": True, "recovery_s": 0.4}
