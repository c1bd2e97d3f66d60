"""Bounded retries with jittered exponential backoff, within a deadline, over one or several replicas.

Inference on the kit's models is idempotent (no state between requests), so a request that failed because a
backend was restarting, a server was not reachable or a queue was full can be sent again. `call` is pure: the
caller passes the attempt, the clock, the sleep and the random source, so the rules are tested on a fake transport
(tests/unit/test_retry.py). Under Locust, gevent's monkey-patched time.sleep makes the waits cooperative.
"""

from __future__ import annotations

import random as _random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from .errors import (ClientError, DeadlineExceededError, ModelRestartingError, ServerOverloadedError,
                     ServerUnavailableError)

# What a retry can cure: a backend being reloaded (~3 s on the embedded server), a server that is down (another
# replica may answer), a queue that was full a moment ago. Never a bad input, an unknown model, another inference
# failure (the same request fails again), nor an exhausted deadline.
RETRYABLE = (ModelRestartingError, ServerUnavailableError, ServerOverloadedError)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one call is retried. The call's deadline bounds it all."""

    # tries of one call in all, on every replica together; 1: never retry. 6 tries with the waits below span the
    # ~3 s a crashed backend takes to be reloaded, though each try against a dead stub takes ~1 s by itself.
    attempts: int = 6
    backoff_s: float = 0.1  # the step before the first retry; it doubles before each further one
    max_backoff_s: float = 2.0

    def __post_init__(self):
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ClientError(f"invalid retry policy {self}",
                              hint="attempts >= 1 and 0 <= backoff_s <= max_backoff_s")

    def backoff(self, retry: int, random: Callable[[], float] = _random.random) -> float:
        """Seconds to wait before retry number `retry` (1, 2, ...): uniform in [step / 2, step], step =
        min(max_backoff_s, backoff_s x 2^(retry - 1)). The jitter keeps clients that failed together from
        coming back together; the floor of half a step keeps each from coming back at once."""
        step = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))
        return step / 2 + random() * step / 2


NO_RETRY = RetryPolicy(attempts=1)


def call(attempt: Callable[[int, float], T], replicas: int, deadline_s: float, policy: RetryPolicy = RetryPolicy(),
         first: int = 0, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
         random: Callable[[], float] = _random.random) -> tuple[T, int]:
    """Run `attempt(replica, remaining_s)` until it returns; return (its result, the replica that answered).

    The first try goes to replica `first`; after a RETRYABLE error the next goes to the next replica (round robin)
    after `policy.backoff`. Another error is raised at once. When the tries run out, or the wait would reach past
    `deadline_s` from now, the last error is raised (its type kept, its message saying how many tries it took).
    `remaining_s` (> 0) is what is left of the deadline: the attempt passes it on to the server and the transport.
    """
    end = clock() + deadline_s
    replica = first % replicas
    for tried in range(1, policy.attempts + 1):
        remaining = end - clock()
        if remaining <= 0:
            raise DeadlineExceededError(f"no answer within the deadline of {deadline_s:g} s ({tried - 1} tries)",
                                        hint="pass a longer timeout=, or add replicas")
        try:
            return attempt(replica, remaining), replica
        except RETRYABLE as e:
            if policy.attempts == 1:  # retries off: the error as the server gave it
                raise
            wait = policy.backoff(tried, random)
            if tried == policy.attempts or clock() + wait >= end:
                spent = deadline_s - (end - clock())
                raise type(e)(f"{e} (gave up after {tried} {'try' if tried == 1 else 'tries'} in {spent:.2f} s)",
                              hint=e.hint) from e
            sleep(wait)
            replica = (replica + 1) % replicas
    raise AssertionError("unreachable: the loop returns or raises")
