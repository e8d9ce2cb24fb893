"""pyturbo: long contexts on small machines.

llama.cpp (pinned, with TurboQuant KV-cache types) driven from Python:

    import pyturbo
    model = pyturbo.Model()                     # SmolLM2-135M, fetched once
    ctx = model.context(n_ctx=4096, cache_k="q8_0", cache_v="q4_0")
    for piece in ctx.generate("The capital of France is", max_tokens=16):
        print(piece, end="")
"""

from .assets import cache_dir, default_model
from .cache_types import cache_type, cache_types
from .context import Context, GenerationStats
from .errors import (
    BackendError,
    CacheTypeError,
    CheckpointError,
    ContextBusyError,
    ContextError,
    ContextOverflowError,
    ConvertError,
    DownloadError,
    InvalidModelError,
    LibraryError,
    ModelNotFoundError,
    PyturboError,
    PyturboWarning,
    QuantizeError,
    RPCError,
    StateError,
    WeightTypeError,
)
from .model import Model
from .upstream.cache_table import (GGML_TYPE_TURBO2, GGML_TYPE_TURBO2T, GGML_TYPE_TURBO3, GGML_TYPE_TURBO3T,
                                   GGML_TYPE_TURBO4, CacheType)
from .weights import QuantizeResult

__version__ = "0.1.0"

__all__ = [
    "Model", "Context", "GenerationStats", "CacheType", "cache_types", "cache_type",
    "default_model", "cache_dir", "GGML_TYPE_TURBO2", "GGML_TYPE_TURBO3", "GGML_TYPE_TURBO4",
    "GGML_TYPE_TURBO3T", "GGML_TYPE_TURBO2T",
    "PyturboError", "LibraryError", "ModelNotFoundError", "InvalidModelError", "CacheTypeError",
    "ContextError", "ContextOverflowError", "ContextBusyError", "StateError", "PyturboWarning", "DownloadError",
    "QuantizeResult", "QuantizeError", "WeightTypeError", "RPCError", "BackendError", "CheckpointError",
    "ConvertError",
]
