"""specexec: massively parallel speculative decoding (SpecExec) for Hugging Face causal LMs."""

from .config import METHODS, GenerationConfig, SamplingConfig
from .engine import GenerationResult, GenerationStream, SpecExecEngine, StreamChunk
from .errors import ConfigError, ModelLoadError, OffloadError, PromptError, SpecExecError, TokenizerMismatchError
from .stats import GenerationStats

__all__ = [
    "METHODS", "GenerationConfig", "SamplingConfig", "SpecExecEngine", "GenerationResult", "GenerationStream",
    "StreamChunk", "GenerationStats", "SpecExecError", "ConfigError", "ModelLoadError", "OffloadError", "PromptError",
    "TokenizerMismatchError", "load",
]
__version__ = "0.1.0"


def load(target: str | None = "embedded", draft: str | None = None, **kwargs) -> SpecExecEngine:
    """Load an engine: ``specexec.load()`` gives the embedded default target and draft."""
    return SpecExecEngine.from_pretrained(target, draft, **kwargs)
