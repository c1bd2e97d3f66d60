"""Typed client errors. Each carries a one-line message and a hint that says what to do."""


class ClientError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class ServerUnavailableError(ClientError):
    """Nothing answers at the URL, or the server is not live."""


class ModelNotFoundError(ClientError):
    """The model is not in the repository or not loaded."""


class ModelRestartingError(ClientError):
    """The model's backend process died (Triton: "Stub process ... is not healthy"); until it is loaded again every
    request to it fails at once. The embedded server reloads such a model by itself (builder/server.py)."""


class InvalidInputError(ClientError):
    """A tensor name, dtype or shape (or the batch size) does not match the model."""


class InferenceError(ClientError):
    """The server failed the request for another reason."""
