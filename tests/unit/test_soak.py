"""The soak's memory-growth figure."""

from loadtests.soak import memory_growth, verdicts


def sample(t, server, stubs):
    return {"t_s": t, "server_rss_bytes": server, "stubs_rss_bytes": stubs, "total_rss_bytes": server + stubs}


def test_growth_is_measured_from_the_first_sample_after_warm_up():
    samples = [sample(0, 10, 10), sample(5, 50, 100), sample(10, 50, 110), sample(15, 55, 110)]
    growth = memory_growth(samples, warmup_s=5)
    assert growth["baseline_t_s"] == 5 and growth["last_t_s"] == 15
    assert growth["server_pct"] == 10.0 and growth["stubs_pct"] == 10.0 and growth["total_pct"] == 10.0
    assert growth["total_peak_pct"] == 10.0


def test_too_few_samples_after_warm_up_give_no_figure():
    assert memory_growth([sample(0, 1, 1), sample(5, 1, 1)], warmup_s=5)["total_pct"] is None


def test_verdicts_hold_the_targets():
    results = {"failures": 0, "not_sent": 3, "settings": {"max_in_flight": 256}, "recoveries": [],
               "memory": {"total_pct": 4.9}}
    assert [ok for _, ok in verdicts(results)] == [True, True, True]
    results["memory"]["total_pct"] = -5.1
    results["failures"] = 1
    assert [ok for _, ok in verdicts(results)] == [False, False, True]
