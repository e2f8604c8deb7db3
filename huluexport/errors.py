"""huluexport's exceptions. Everything user-facing derives from HuluError and is shown without a traceback."""

from __future__ import annotations

from hulurt.errors import (  # re-exported: one hierarchy for users of both packages
    ContextLengthError,
    ContractError,
    HuluRuntimeError,
    ManifestError,
    UnsupportedInputError,
)

HuluError = HuluRuntimeError


class ConfigError(HuluError):
    """A config.json / preset / option that is missing, unreadable or inconsistent."""


class CheckpointError(HuluError):
    """A checkpoint directory whose files or tensors do not match what the config says."""

    def __init__(self, message: str, *, file: object = None, tensor: str | None = None) -> None:
        self.file = str(file) if file is not None else None
        self.tensor = tensor
        super().__init__(message)


class ExportError(HuluError):
    """The export pipeline failed on a model it should handle."""


class ParityError(HuluError):
    """An exported piece differs from the reference beyond the tolerance table."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "ContextLengthError",
    "ContractError",
    "ExportError",
    "HuluError",
    "ManifestError",
    "ParityError",
    "UnsupportedInputError",
]
