"""Typed client errors. Each carries a one-line message and a hint that says what to do.

They share the kit's one base, `KitError` (builder/core/errors.py: no torch, nothing heavy), so every command's
handler prints them as it prints the builder's.
"""

from builder.core.errors import KitError


class ClientError(KitError):
    """A request to the Triton server failed; `hint` says what to do."""


class ServerUnavailableError(ClientError):
    """Nothing answers at the URL, or the server is not live."""


class ModelNotFoundError(ClientError):
    """The model is not in the repository or not loaded."""


class ModelRestartingError(ClientError):
    """The model's backend process died (Triton: "Stub process ... is not healthy"); until it is loaded again every
    request to it fails at once. The embedded server reloads such a model by itself (builder/serving/server.py)."""


class InvalidInputError(ClientError):
    """A tensor name, dtype or shape (or the batch size) does not match the model."""


class InferenceError(ClientError):
    """The server failed the request for another reason."""


class ServerOverloadedError(ClientError):
    """Triton refused the request to shed load: the model's queue was full ("Exceeds maximum queue size"), or the
    request waited in it past its timeout ("Request timeout expired"); gRPC UNAVAILABLE, HTTP 503. The queue policy
    that decides is in config.pbtxt (builder/serving/tritonconfig.py queue_policy). Inference is idempotent, so the
    request is safe to retry after a backoff or on another replica; the kit's client does, within its deadline."""


class DeadlineExceededError(ClientError):
    """No answer within the call's deadline (`timeout=`, retries included)."""
