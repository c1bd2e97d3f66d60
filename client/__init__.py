"""Inference clients for the kit's Triton models, over gRPC and HTTP. No locust or gevent here."""

from .errors import (ClientError, InferenceError, InvalidInputError, ModelNotFoundError,  # noqa: F401
                     ModelRestartingError, ServerUnavailableError)
from .triton import AsyncTritonClient, TritonClient  # noqa: F401
