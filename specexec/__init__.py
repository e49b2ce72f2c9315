"""specexec: massively parallel speculative decoding (SpecExec) for Hugging Face causal LMs."""

import logging

# torchao (the int8 backend), once installed, is imported by transformers at every model load; it
# logs a line for each CUDA extension it cannot load on a CPU machine and torch logs deprecation
# notes for its enums: noise on every command's standard error, about nothing specexec uses.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

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
