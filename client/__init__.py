"""Inference clients for the kit's Triton models, over gRPC and HTTP. No locust or gevent here."""

from .errors import (ClientError, DeadlineExceededError, InferenceError, InvalidInputError,  # noqa: F401
                     ModelNotFoundError, ModelRestartingError, ServerOverloadedError, ServerUnavailableError)
from .retry import NO_RETRY, RetryPolicy  # noqa: F401
from .triton import AsyncTritonClient, TritonClient  # noqa: F401
