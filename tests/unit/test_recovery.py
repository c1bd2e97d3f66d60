"""The stub watcher's decisions, on a stand-in server: a crash is reloaded; an unload, a reload and a reload with
fewer instances are not crashes; a crash loop is given up."""

import pytest

from builder.serving import recovery
from builder.serving.recovery import MAX_RESTARTS, StubWatcher, configured_count
from builder.serving.server import ModelState
from builder.serving.stubs import Stub


def stub(pid, instance, model="digits_fp32"):
    return Stub(pid, 100, instance, f"/repo/{model}/1/model.onnx")


class Process:
    pid = 100

    def poll(self):
        return None


class FakeServer:
    def __init__(self, state="READY", count=1):
        self.process = Process()
        self.state, self.count = state, count
        self.loads, self.recoveries = [], []

    def models(self):
        return [ModelState("digits_fp32", "1", self.state, "")]

    def model_config(self, name):
        return {"name": name, "instance_group": [{"name": f"{name}_0", "count": self.count}]}

    def load(self, name, config=None):
        self.loads.append((name, config))
        return True


@pytest.fixture
def live(monkeypatch):
    """The stubs /proc shows; the grace period is 0 so one poll decides."""
    stubs = []
    monkeypatch.setattr(recovery, "all_stubs", lambda server_pid=None: list(stubs))
    monkeypatch.setattr(recovery, "GRACE_S", 0.0)
    return stubs


def watcher_of(server, live, *running):
    live[:] = list(running)
    watcher = StubWatcher(server)
    watcher._known = {s.pid: s for s in running}
    return watcher


def test_instances_are_counted_over_groups():
    assert configured_count({"instance_group": [{"name": "m_0", "count": 2}, {"name": "m_1"}]}) == 3


def test_a_dead_stub_of_a_ready_model_is_reloaded_with_the_config_in_use(live):
    server = FakeServer()
    watcher = watcher_of(server, live, stub(1, "digits_fp32_0_0"))
    live[:] = []  # SIGKILLed
    watcher._poll(100)
    assert server.loads == [("digits_fp32", server.model_config("digits_fp32"))]
    (event,) = server.recoveries
    assert event.reloaded and event.instances == ("digits_fp32_0_0",) and event.pids == (1,)


def test_an_unload_is_not_a_crash(live):
    server = FakeServer(state="UNLOADING")
    watcher = watcher_of(server, live, stub(1, "digits_fp32_0_0"))
    live[:] = []
    watcher._poll(100)
    assert server.loads == [] and server.recoveries == []


def test_a_reload_that_replaced_the_stub_is_not_a_crash(live):
    server = FakeServer()
    watcher = watcher_of(server, live, stub(1, "digits_fp32_0_0"))
    live[:] = [stub(2, "digits_fp32_0_0")]  # the new instance started before the old one ended
    watcher._poll(100)
    assert server.loads == []


def test_a_reload_with_fewer_instances_is_not_a_crash(live):
    server = FakeServer(count=1)
    watcher = watcher_of(server, live, stub(1, "digits_fp32_0_0"), stub(2, "digits_fp32_0_1"))
    live[:] = [stub(2, "digits_fp32_0_1")]  # Triton kept one running instance, under its old name
    watcher._poll(100)
    assert server.loads == []


def test_one_dead_instance_of_two_is_a_crash(live):
    server = FakeServer(count=2)
    watcher = watcher_of(server, live, stub(1, "digits_fp32_0_0"), stub(2, "digits_fp32_0_1"))
    live[:] = [stub(2, "digits_fp32_0_1")]
    watcher._poll(100)
    assert len(server.loads) == 1 and server.recoveries[0].instances == ("digits_fp32_0_0",)


def test_a_crash_loop_is_given_up(live):
    server = FakeServer()
    watcher = watcher_of(server, live)
    for pid in range(1, MAX_RESTARTS + 3):
        live[:] = [stub(pid, "digits_fp32_0_0")]
        watcher._poll(100)
        live[:] = []
        watcher._poll(100)
    assert len(server.loads) == MAX_RESTARTS
    assert [r.reloaded for r in server.recoveries] == [True] * MAX_RESTARTS + [False]
    assert "not reloading it any more" in server.recoveries[-1].message
