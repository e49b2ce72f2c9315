"""Errors raised for bad input. The CLI prints their message without a traceback."""


class SpecExecError(Exception):
    """Base class of every error caused by a user's input or environment."""


class ConfigError(SpecExecError, ValueError):
    """An option has a value outside its meaning (a budget of 0, top_p of 2, ...)."""


class ModelLoadError(SpecExecError):
    """A model could not be loaded (unknown name, offline hub, broken folder)."""


class TokenizerMismatchError(SpecExecError):
    """Draft and target do not share one vocabulary."""


class PromptError(SpecExecError, ValueError):
    """A prompt is empty or does not fit in the model's context."""


class UnsupportedModelError(ModelLoadError):
    """A model loads but its architecture cannot be decoded exactly (ALiBi, state-space, ...)."""


class EngineBusyError(SpecExecError, RuntimeError):
    """A second generation was started on an engine while another one was still open."""


class OffloadError(SpecExecError):
    """Offloading cannot work here (no CUDA, bad settings) or a streamed layer could not be read."""
