"""How many Locust worker processes the runner chooses from a probe step, and the --workers flag: hand-made probes."""

import pytest

from loadtests.commands import parse_workers
from loadtests.run import LoadTestError, workers_for


def probe(bound, used=0.95, wanted=1.6, all_cores=None, utilization=None):
    return {"generator_bound": bound, "cpu_utilization": utilization, "generator": {"processes": 1, "cpu_cores": all_cores or used,
                                                    "max_process_cpu": used, "max_process_demand": wanted}}


def test_a_probe_that_is_not_generator_bound_keeps_one_process():
    assert workers_for(probe(False, used=0.3, wanted=0.4), cores=16) == 0
    assert workers_for({"generator_bound": False, "generator": {}}, cores=16) == 0


def test_a_generator_bound_probe_gets_workers_for_the_cpu_it_wanted_bounded_by_the_cores():
    # used 0.95 core and waited for 0.65 more: it wanted 1.68x what it got, ~1.6 cores -> 2 workers
    assert workers_for(probe(True, used=0.95, wanted=1.6), cores=16) == 2
    assert workers_for(probe(True, used=1.0, wanted=3.5), cores=16) == 4
    assert workers_for(probe(True, used=1.0, wanted=3.5), cores=2) == 2  # never more than the cores
    assert workers_for(probe(True, used=0.9, wanted=0.9), cores=16) == 2  # a master + 1 worker would gain nothing
    assert workers_for(probe(True), cores=1) == 0


def test_the_workers_flag_takes_a_count_or_auto():
    assert parse_workers("0") == (0, False) and parse_workers("3") == (3, False)
    assert parse_workers("auto") == (0, True) and parse_workers("AUTO") == (0, True)
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(LoadTestError, match="--workers must be"):
            parse_workers(bad)


def test_no_workers_when_the_machine_has_no_idle_core_for_them():
    # 2 cores 90 % busy (server + the probe's Locust): 0.2 core idle, a second generator would take the server's
    assert workers_for(probe(True, utilization=0.9), cores=2) == 0
    assert workers_for(probe(True, utilization=0.5), cores=2) == 2  # a whole core idle
    assert workers_for(probe(True, utilization=0.95), cores=16) == 2  # 0.8 core idle of 16


def test_the_bound_is_the_ratio_of_cpu_per_request_on_shared_cores():
    from loadtests.generator_bench import bound

    # perf_analyzer 90 + server 300 us per request; Locust 260 + server 390: at most 390 / 650 of its rate
    assert bound({"server_us_per_request": 390, "generator_us_per_request": 260},
                 {"server_us_per_request": 300, "generator_us_per_request": 90}) == 0.6
