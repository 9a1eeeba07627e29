"""Errors a person can act on.

Every error aimsvoice raises on purpose is an `AimsvoiceError`: its message is one line that names
the problem and the fix. `cli.main()` prints it and exits non-zero; tracebacks only with
AIMSVOICE_DEBUG=1.
"""


class AimsvoiceError(Exception):
    """Base class: str(error) is the one line shown to the user."""

    exit_code: int = 1


class ModelNotFoundError(AimsvoiceError):
    """No model directory where one was expected (weights not pulled, wrong --model)."""


class ModelFileError(AimsvoiceError):
    """A model file is missing, truncated, corrupt or of the wrong shape."""


class AudioFileError(AimsvoiceError):
    """An audio file cannot be read, is empty, or is unusable as asked."""


class VoiceNotFoundError(AimsvoiceError):
    """A voice name or path that does not resolve to a voice prompt."""


class PersonaError(AimsvoiceError):
    """An unknown persona, or a persona file that does not parse."""


class PromptTooLongError(AimsvoiceError):
    """A system prompt that would crowd the conversation out of the model's attention window."""


class DeviceError(AimsvoiceError):
    """A compute device (cuda/cpu) that is not available."""


class WeightsError(AimsvoiceError):
    """Downloading or verifying the PersonaPlex weights failed."""


class AudioDeviceError(AimsvoiceError):
    """A sound device that is missing, cannot be opened, or stopped during a live conversation."""


class BenchError(AimsvoiceError):
    """A benchmark that cannot run as asked: a bad suite folder or annotation, bad bench flags."""


class ServerError(AimsvoiceError):
    """`aimsvoice serve` cannot start as asked: an exposed host without a token, missing TLS files, a busy port."""
