"""Bounded retries with jittered exponential backoff, within a deadline, over one or several replicas.

Inference on the kit's models is idempotent (no state between requests), so a request that failed because a
backend was restarting, a server was not reachable or a queue was full can be sent again. `call` is pure: the
caller passes the attempt, the clock, the sleep and the random source, so the rules are tested on a fake transport
(tests/unit/test_retry.py). Under Locust, gevent's monkey-patched time.sleep makes the waits cooperative.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

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
    tries = _Tries(replicas, deadline_s, policy, first, clock, random)
    while True:
        replica, remaining = tries.next()
        try:
            return attempt(replica, remaining), replica
        except RETRYABLE as e:
            sleep(tries.failed(e))


async def acall(attempt: Callable[[int, float], Awaitable[T]], replicas: int, deadline_s: float,
                policy: RetryPolicy = RetryPolicy(), first: int = 0, clock: Callable[[], float] = time.monotonic,
                random: Callable[[], float] = _random.random) -> tuple[T, int]:
    """`call` for a coroutine `attempt`, waiting with asyncio.sleep: the same rules, from the same _Tries."""
    tries = _Tries(replicas, deadline_s, policy, first, clock, random)
    while True:
        replica, remaining = tries.next()
        try:
            return await attempt(replica, remaining), replica
        except RETRYABLE as e:
            await asyncio.sleep(tries.failed(e))


class _Tries:
    """The rules of `call` apart from how it waits: which replica and how much time the next try gets, and how long
    to wait after a failed one (or the error to give up with)."""

    def __init__(self, replicas: int, deadline_s: float, policy: RetryPolicy, first: int,
                 clock: Callable[[], float], random: Callable[[], float]):
        self.replicas, self.deadline_s, self.policy, self.clock, self.random = (replicas, deadline_s, policy, clock,
                                                                                random)
        self.end = clock() + deadline_s
        self.replica = first % replicas
        self.tried = 0

    def next(self) -> tuple[int, float]:
        """(replica, remaining seconds) for the next try; DeadlineExceededError when none are left."""
        remaining = self.end - self.clock()
        if remaining <= 0:
            raise DeadlineExceededError(f"no answer within the deadline of {self.deadline_s:g} s "
                                        f"({self.tried} tries)", hint="pass a longer timeout=, or add replicas")
        self.tried += 1
        return self.replica, remaining

    def failed(self, error: ClientError) -> float:
        """Seconds to wait after a RETRYABLE `error` before the next try (on the next replica); raises when the
        tries run out or the wait would reach past the deadline."""
        if self.policy.attempts == 1:  # retries off: the error as the server gave it
            raise error
        wait = self.policy.backoff(self.tried, self.random)
        if self.tried == self.policy.attempts or self.clock() + wait >= self.end:
            spent = self.deadline_s - (self.end - self.clock())
            tries = "try" if self.tried == 1 else "tries"
            raise type(error)(f"{error} (gave up after {self.tried} {tries} in {spent:.2f} s)",
                              hint=error.hint) from error
        self.replica = (self.replica + 1) % self.replicas
        return wait
