"""Reload a model whose backend process died: the embedded server's watcher thread.

Triton 2.51 does not restart a Python-backend stub that died (killed by the OOM killer, a segfault in a native
library): its model stays READY and answers every request at once with "Stub process '<instance>' is not
healthy." (after about 1 s: the backend waits that long for the stub's health flag) until it is loaded again, and
a plain load of the unchanged model is a no-op: it has to be given a configuration to load anew. The watcher polls the server's stubs in /proc (builder/serving/stubs.py) every
POLL_S. When a stub has ended, its model is checked GRACE_S later: it counts as crashed if it is still READY and
fewer of its stubs run than its current configuration has instances. That rules out what ends stubs on purpose:
an unload (the model is no longer READY), a reload (the new stubs start before the old ones end) and a reload
with fewer instances (Triton 2.51 then keeps some running instances, under their old names: `m_0_1` may be the
one left of count 1, so names cannot be compared, counts can). The model is
then loaded again with the configuration the server used for it (overrides, such as a CPU fallback or a tuning
point, are kept), through the locked model-repository API with the admin key.

A model that crashes MAX_RESTARTS times within RESTART_WINDOW_S is left as it is (a crash loop, e.g. an instance
that needs more memory than the machine has), and said so.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.error

from .stubs import all_stubs

POLL_S = 0.25
GRACE_S = 0.5
MAX_RESTARTS = 3
RESTART_WINDOW_S = 60.0


@dataclasses.dataclass(frozen=True)
class Recovery:
    model: str
    instances: tuple[str, ...]  # the stubs that died, e.g. ("digits_fp32_0_0",)
    pids: tuple[int, ...]
    noticed_at: float  # time.time()
    reloaded: bool
    seconds: float  # from noticing to the end of the reload
    message: str


def configured_count(config: dict) -> int:
    """Instances a model config (Triton's JSON) asks for: the sum of its instance groups' counts."""
    return sum(int(group.get("count", 1)) for group in config.get("instance_group", []))


class StubWatcher:
    """Watch one EmbeddedServer's stubs and reload crashed models; see the module docstring. `on_event(line)`
    hears each crash and each reload; `server.recoveries` keeps a Recovery per crash."""

    def __init__(self, server, on_event=None):
        self.server = server
        self.on_event = on_event or (lambda line: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tritonkit-stub-watcher", daemon=True)
        self._known: dict[int, object] = {}  # pid -> Stub seen alive at the last poll
        self._suspects: dict[str, tuple[float, list]] = {}  # model -> (a stub gone since, [(instance, pid)])
        self._restarts: dict[str, list[float]] = {}
        self._given_up: set[str] = set()
        self.polls = 0  # finished polls: lets a caller wait until the watcher has looked (tests)

    def start(self) -> None:
        self._known = {s.pid: s for s in all_stubs(self.server.process.pid)}
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=330)  # a reload in flight finishes (its load request times out at 300 s)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            process = self.server.process
            if process is None or process.poll() is not None:
                return  # the server itself ended: nothing to reload into
            try:
                self._poll(process.pid)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass  # the server is busy or stopping; the next poll sees
            self.polls += 1

    def _poll(self, server_pid: int) -> None:
        now = time.monotonic()
        live = all_stubs(server_pid)
        pids = {s.pid for s in live}
        for pid, stub in self._known.items():
            if pid not in pids:
                self._suspects.setdefault(stub.model, (now, []))[1].append((stub.instance, pid))
        self._known = {s.pid: s for s in live}
        due = [m for m, (since, _) in self._suspects.items() if now - since >= GRACE_S]
        if not due:
            return
        states = {m.name: m.state for m in self.server.models()}
        for model in sorted(due):
            _, dead = self._suspects.pop(model)
            if states.get(model) != "READY" or model in self._given_up:
                continue  # unloaded or being unloaded on purpose (or given up): not ours to touch
            config = self.server.model_config(model)
            running = sum(1 for s in live if s.model == model)
            if running < configured_count(config):  # else a reload replaced or dropped the stubs on purpose
                self._reload(model, config, sorted(dead))

    def _reload(self, model: str, config: dict, crashed: list[tuple[str, int]]) -> None:
        instances, pids = tuple(i for i, _ in crashed), tuple(p for _, p in crashed)
        noticed = time.time()
        recent = [t for t in self._restarts.get(model, []) if noticed - t < RESTART_WINDOW_S]
        what = ", ".join(f"{i} (pid {p})" for i, p in crashed)
        if len(recent) >= MAX_RESTARTS:
            self._given_up.add(model)
            message = (f"{model}: backend process {what} died again, {len(recent) + 1} times within "
                       f"{RESTART_WINDOW_S:g} s: not reloading it any more (a crash loop; see the server log)")
            self._record(Recovery(model, instances, pids, noticed, False, 0.0, message))
            return
        self._restarts[model] = recent + [noticed]
        self.on_event(f"{model}: backend process {what} died; reloading the model")
        started = time.monotonic()
        loaded = self.server.load(model, config)
        seconds = round(time.monotonic() - started, 2)
        message = (f"{model}: reloaded in {seconds:.1f} s, serving again" if loaded else
                   f"{model}: reload failed after {seconds:.1f} s; see the server log")
        self._known |= {s.pid: s for s in all_stubs(self.server.process.pid)}  # the new stubs are not crashes
        self._record(Recovery(model, instances, pids, noticed, loaded, seconds, message))

    def _record(self, recovery: Recovery) -> None:
        self.server.recoveries.append(recovery)
        self.on_event(recovery.message)
