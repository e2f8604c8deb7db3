"""hulurt's one exception hierarchy. Every message says what, expected, found, and what to do next."""

from __future__ import annotations


class HuluRuntimeError(Exception):
    """Base of every error hulurt raises on purpose (user input, bundles, contracts)."""


class ContractError(HuluRuntimeError):
    """Feeds or outputs that do not match the contract (name, dtype, rank, dim range)."""


class ManifestError(HuluRuntimeError):
    """A bundle whose manifest or files are missing, corrupted, or of an unknown version."""


class UnsupportedInputError(HuluRuntimeError):
    """A file or array that cannot become model input. Names the file and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class ContextLengthError(HuluRuntimeError):
    """Prompt + max_new_tokens beyond what the bundle allows."""


class DeviceMemoryError(HuluRuntimeError):
    """A GPU without room for what a Model must hold there (the gqa-static form's KV buffers)."""


class NumericError(HuluRuntimeError):
    """The model computed values no token can be chosen from (NaN or +inf logits): the bundle's fault, or its
    precision's (fp16 overflow), not the request's."""
