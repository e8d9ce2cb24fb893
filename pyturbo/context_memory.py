"""What llama.cpp allocated for a context, exactly, per buffer type (csrc/llama/turbo-context-memory.h).

    memory = ctx.memory()
    memory.kv_k, memory.kv_v, memory.compute, memory.total          # bytes
    [(b.name, b.k, b.v) for b in memory.buffers]                   # per buffer type: "CPU", "CUDA0", ...
"""

from __future__ import annotations

from dataclasses import dataclass

from ._native import c_string, ffi, llama
from .errors import ContextError


@dataclass(frozen=True)
class BufferMemory:
    """One buffer type's bytes of a context."""

    name: str        # ggml's buffer type name: "CPU", "CUDA0", "CUDA_Host", "RPC0[...]" ...
    k: int           # K cache
    v: int           # V cache
    recurrent: int   # recurrent layers' states
    other: int       # memory of a kind pyturbo does not break down (its buffers' size)
    compute: int     # the scheduler's compute buffer
    output: int      # the logits/embeddings output buffer


@dataclass(frozen=True)
class ContextMemory:
    """A context's allocations: every buffer type's, and their sums."""

    buffers: tuple           # BufferMemory per buffer type
    cells: int               # cells of the full-attention KV cache (0: none)
    cells_swa: int           # cells of the sliding-window KV cache (0: none)

    def _sum(self, field: str) -> int:
        return sum(getattr(b, field) for b in self.buffers)

    @property
    def kv_k(self) -> int:
        return self._sum("k")

    @property
    def kv_v(self) -> int:
        return self._sum("v")

    @property
    def recurrent(self) -> int:
        return self._sum("recurrent") + self._sum("other")

    @property
    def compute(self) -> int:
        """Compute buffers and the output buffer (what pyturbo.memory.estimate's compute covers)."""
        return self._sum("compute") + self._sum("output")

    @property
    def total(self) -> int:
        return self.kv_k + self.kv_v + self.recurrent + self.compute


def read_context_memory(handle) -> ContextMemory:
    """The allocations of the llama_context `handle`."""
    out = ffi.new("struct pyturbo_context_memory *")
    if llama.pyturbo_context_memory(handle, out) != 0:
        raise ContextError("the context uses more buffer types than pyturbo_context_memory reports")
    buffers = tuple(
        BufferMemory(name=c_string(b.name), k=b.k, v=b.v, recurrent=b.recurrent, other=b.other, compute=b.compute,
                     output=b.output)
        for b in (out.buffer_types[i] for i in range(out.n_buffer_types)))
    return ContextMemory(buffers=buffers, cells=out.cells, cells_swa=out.cells_swa)
