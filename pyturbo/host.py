"""Facts about the machine pyturbo runs on: the CPUs this process may use and the memory
it can still allocate, and the check that a context fits in that memory.

No native library: the figures come from the OS (sched_getaffinity, /proc/meminfo,
the cgroup's memory.max), and a context's size from pyturbo.upstream.allocation.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .errors import ContextError, PyturboWarning
from .upstream.allocation import context_bytes
from .layer_types import LayerTypes
from .upstream.geometry import ModelGeometry
from .units import format_size


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def available_host_memory() -> "int | None":
    """Bytes this process can still allocate before the OS has to take them back: the
    kernel's MemAvailable, capped by the cgroup's limit where there is one (containers);
    None where neither can be read."""
    figures = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    figures.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            figures.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not figures and hasattr(os, "sysconf"):
        try:
            figures.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    return max(0, min(figures)) if figures else None


def check_context_limits(geometry: ModelGeometry, model_name: str, n_ctx: int, cache_k: "LayerTypes",
                         cache_v: "LayerTypes", flash_attn: bool, *, swa_full: bool, n_batch: int, n_ubatch: int,
                         host_only: bool = True) -> None:
    """Warn when n_ctx is beyond the training context; refuse, before llama.cpp allocates it,
    a context whose caches and buffers exceed the memory available (checked when every
    layer is on the CPU, host_only, where they all live in host memory)."""
    if geometry.n_ctx_train and n_ctx > geometry.n_ctx_train:
        warnings.warn(f"n_ctx {n_ctx} is beyond the {geometry.n_ctx_train} tokens {model_name} was trained on: "
                      "expect worse answers past that point", PyturboWarning, stacklevel=4)
    if not host_only:
        return
    needed = context_bytes(geometry, n_ctx, cache_k.types, cache_v.types, flash_attn, swa_full=swa_full,
                           n_batch=n_batch, n_ubatch=n_ubatch)
    available = available_host_memory()
    if available is not None and needed.total > available:
        raise ContextError(
            f"a context of {needed.cells.n_ctx} tokens with K {cache_k.spec} / V {cache_v.spec} needs about "
            f"{format_size(needed.total)} (KV cache {format_size(needed.kv_k + needed.kv_v)}), but only "
            f"{format_size(available)} of memory is available; use a smaller n_ctx or smaller cache types "
            "(python -m pyturbo.fit MODEL --memory SIZE finds the largest that fits)")
