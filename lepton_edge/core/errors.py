"""The error types users see. Each message says what is wrong, where, and what to do."""


class LeptonError(Exception):
    """Base class of every error lepton-edge raises on purpose. The CLI prints it without a traceback."""

    exit_code = 1


class ConfigError(LeptonError):
    """A configuration file or value is invalid."""

    exit_code = 2


class ModelError(LeptonError):
    """A model file is missing, corrupt, or does not match the configuration."""

    exit_code = 3


class SourceError(LeptonError):
    """A source cannot be opened or read."""

    exit_code = 4


class BackendUnavailable(LeptonError):
    """An optional backend dependency (TensorRT, pycuda, cuda-python, ...) is not installed."""

    exit_code = 5


class PipelineError(LeptonError):
    """A pipeline stage failed; the original exception is chained as ``__cause__``."""

    exit_code = 6


class CudaError(LeptonError):
    """A CUDA call failed; the message names the call and the CUDA error."""

    exit_code = 7


class UpdateError(LeptonError):
    """An artifact update was refused: bad reference, failed download, or failed verification."""

    exit_code = 7


def error_text(error: BaseException) -> str:
    """One line for a log or a report: our own errors say what is wrong by themselves, others get their type."""
    return str(error) if isinstance(error, LeptonError) else f"{type(error).__name__}: {error}"
