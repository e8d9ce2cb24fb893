"""What llama.cpp really allocates for a context, to check pyturbo.memory's estimates against.

    measured = pyturbo.measure.measure("model.gguf", n_ctx=4096, cache_k="q8_0", cache_v="turbo3")
    measured.kv_k, measured.kv_v, measured.compute, measured.total    # bytes, exact

A pyturbo.Context is created and freed; its figures come from libllama itself
(pyturbo.context_memory), byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .context_memory import ContextMemory
from .errors import PyturboError
from .memory import MemoryEstimate
from .model import open_model


@dataclass
class MemoryMeasurement(MemoryEstimate):
    """What llama.cpp allocated, exactly, with the figures of each buffer type."""

    allocated: "ContextMemory | None" = field(default=None, repr=False)


def measure(model, n_ctx: int, cache_k: str = "f16", cache_v: str = "f16", n_seq: int = 1,
            flash_attn: "bool | str" = True, n_gpu_layers: int = 0, **context_kwargs) -> MemoryMeasurement:
    """What llama.cpp allocates for this context: a pyturbo.Context is created and freed.

    model: a path (loaded with n_gpu_layers, then freed) or a pyturbo.Model. The weights
    are llama_model_size. pyturbo.Context keeps one sequence and, like estimate() and
    llama.cpp's tools, a window-sized cache for sliding-window layers unless
    swa_full=True is passed (to both).
    """
    if n_seq != 1:
        raise PyturboError("measure() creates a pyturbo.Context, which holds one sequence; "
                           f"n_seq={n_seq} can only be estimated")
    with open_model(model, n_gpu_layers=n_gpu_layers) as model:
        with model.context(n_ctx=n_ctx, cache_k=cache_k, cache_v=cache_v, flash_attn=flash_attn, n_threads=1,
                           **context_kwargs) as ctx:
            allocated = ctx.memory()
            n_ctx_actual, names = ctx.n_ctx, (ctx.cache_k_spec, ctx.cache_v_spec)
        weights = model.size_bytes
    return MemoryMeasurement(
        n_ctx=n_ctx_actual, cache_k=names[0], cache_v=names[1], weights=weights, kv_k=allocated.kv_k,
        kv_v=allocated.kv_v, compute=allocated.compute, recurrent=allocated.recurrent, cells=allocated.cells,
        cells_swa=allocated.cells_swa, allocated=allocated)
